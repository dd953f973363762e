"""Issue 5 end to end: every input document indexed exactly once, whatever the cluster does.

The fault-injection test puts ``FaultyProxy`` between the pipeline and the test cluster
(429/503 items, connections dropped before and after the cluster saw the request). The crash
test kills ``splade-es ingest`` with SIGKILL mid-run and runs the same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from splade_es import ConnectionConfig, SpladeEncoder, connect
from splade_es.ingest import IngestConfig, RetryPolicy, ingest, ingest_file
from tests.integration.corpus import make_documents
from tests.integration.faulty_proxy import FaultyProxy

pytestmark = pytest.mark.integration

FAST_RETRIES = RetryPolicy(max_retries=10, initial_backoff=0.01, max_backoff=0.05, jitter=0.01)


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


def write_jsonl(path, docs, extra_lines=()):
    with open(path, "wb") as handle:
        for doc in docs:
            handle.write(json.dumps({"_id": doc["id"], **doc}).encode() + b"\n")
        for line in extra_lines:
            handle.write(line + b"\n")


def stored_ids(client, index) -> list[str]:
    client.indices.refresh(index=index)
    body = {"query": {"match_all": {}}, "size": 10000, "_source": False}
    return [h["_id"] for h in client.search(index=index, body=body)["hits"]["hits"]]


def test_faults_lose_nothing_and_duplicate_nothing(cluster, index_name, encoder, tmp_path):
    docs = make_documents(150, seed=3)
    write_jsonl(
        tmp_path / "in.jsonl",
        docs,
        extra_lines=[
            b"{not json",
            b'{"_id": "no-text", "title": 7}',
            # Valid input the cluster refuses: "id" is a keyword field, not an object.
            b'{"_id": "mapping-conflict", "id": {"nested": 1}, "text": "garlic powder"}',
        ],
    )
    with FaultyProxy(cluster.url) as proxy:
        client = connect(ConnectionConfig(hosts=(proxy.url,))).client
        report = ingest_file(
            client,
            tmp_path / "in.jsonl",
            encoder=encoder,
            config=IngestConfig(
                index=index_name,
                create=True,
                bulk_docs=10,
                workers=2,
                retry=FAST_RETRIES,
                dead_letter=str(tmp_path / "dead.jsonl"),
            ),
        )
    assert proxy.injected["rejected_429"] and proxy.injected["rejected_503"]
    assert proxy.injected["dropped_before"] and proxy.injected["dropped_after"]
    ids = stored_ids(cluster.client, index_name)
    assert sorted(ids) == sorted(d["id"] for d in docs)  # all of them, each exactly once
    assert report.read == 153
    assert report.indexed == 150 and report.dead_lettered == 3
    assert report.read == report.indexed + report.dead_lettered
    assert report.retried_items > 0
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [d["position"] for d in sorted(dead, key=lambda d: d["position"])] == [151, 152, 153]
    reasons = {d["position"]: d for d in dead}
    assert "invalid JSON" in reasons[151]["reason"] and reasons[151]["raw"] == "{not json"
    assert reasons[152]["field"] == "title"
    assert reasons[153]["id"] == "mapping-conflict" and reasons[153]["status"] == 400
    assert reasons[153]["document"]["text"] == "garlic powder"
    # Original fields are kept next to the vector, so the index also serves BM25.
    source = cluster.client.get(index=index_name, id=docs[0]["id"])["_source"]
    assert source["title"] == docs[0]["title"] and source["lang"] == docs[0]["lang"]
    assert source["splade"] and all(w > 0 for w in source["splade"].values())


def test_rerun_overwrites_instead_of_duplicating(cluster, index_name, encoder):
    docs = make_documents(30, seed=5)
    config = IngestConfig(index=index_name, id_field="id", create=True, bulk_docs=7)
    first = ingest(cluster.client, docs, encoder=encoder, config=config)
    second = ingest(cluster.client, docs, encoder=encoder, config=config)
    assert first.indexed == second.indexed == 30
    assert sorted(stored_ids(cluster.client, index_name)) == sorted(d["id"] for d in docs)


def test_content_hash_ids_are_deterministic(cluster, index_name, encoder):
    docs = [{k: v for k, v in d.items() if k != "id"} for d in make_documents(12, seed=9)]
    config = IngestConfig(index=index_name, id_field=None, create=True)
    ingest(cluster.client, docs, encoder=encoder, config=config)
    ingest(cluster.client, docs, encoder=encoder, config=config)
    assert len(stored_ids(cluster.client, index_name)) == 12


def test_shards_split_the_input_without_overlap(cluster, index_name, encoder, tmp_path):
    docs = make_documents(40, seed=11)
    write_jsonl(tmp_path / "in.jsonl", docs)
    reports = [
        ingest_file(
            cluster.client,
            tmp_path / "in.jsonl",
            encoder=encoder,
            config=IngestConfig(index=index_name, create=True, shard=(i, 3)),
        )
        for i in range(3)
    ]
    assert sum(r.indexed for r in reports) == 40
    assert all(r.other_shards == 40 - r.read for r in reports)
    assert sorted(stored_ids(cluster.client, index_name)) == sorted(d["id"] for d in docs)


def test_kill_9_then_resume_gives_every_document_once(
    cluster, index_name, search_model_dir, tmp_path
):
    docs = make_documents(1500, seed=13)
    write_jsonl(tmp_path / "in.jsonl", docs, extra_lines=[b"{broken"])
    command = [
        sys.executable,
        "-m",
        "splade_es.cli",
        "ingest",
        "--url",
        cluster.url,
        "--index",
        index_name,
        "--model",
        str(search_model_dir),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--create",
        "--bulk-docs",
        "20",
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--checkpoint",
        str(tmp_path / "ck.json"),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        "--json",
        "--quiet",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    watermark = 0
    while time.time() < deadline and victim.poll() is None:
        try:
            watermark = json.loads((tmp_path / "ck.json").read_text())["watermark"]
        except (FileNotFoundError, ValueError):
            watermark = 0
        if watermark >= 200:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed: make it longer"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert 0 < watermark < 1500

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stderr  # 1: the broken line was dead-lettered
    report = json.loads(resumed.stdout)
    assert report["resumed_from"] >= watermark
    assert report["skipped_done"] == report["resumed_from"]
    assert report["total_indexed"] == 1500 and report["total_dead_lettered"] == 1
    ids = stored_ids(cluster.client, index_name)
    assert len(ids) == len(set(ids)) == 1500
    dead = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert len(dead) == 1 and json.loads(dead[0])["position"] == 1501
