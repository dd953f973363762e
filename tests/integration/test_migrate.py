"""Issue 6 end to end: BM25 index behind an alias -> SPLADE index, gated, switched atomically;
a killed migration resumes to the same final count and the alias never points at a
half-built index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from splade_es import SpladeEncoder, search
from splade_es.migrate import Gate, MigrationConfig, alias_indices, migrate, rollback
from splade_es.migrate.report import write_chart, write_markdown
from tests.integration.corpus import make_documents

pytestmark = pytest.mark.integration

SOURCE_BODY = {
    "settings": {"number_of_shards": 2, "number_of_replicas": 0},
    "mappings": {
        "properties": {
            "title": {"type": "text"},
            "text": {"type": "text"},
            "lang": {"type": "keyword"},
        }
    },
}


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


def create_bm25_index(client, index, docs, *, created: bool = False) -> tuple[str, str]:
    """A plain BM25 index holding ``docs`` behind an alias (``created``: the caller created
    the index); returns (alias, target name)."""
    if not created:
        client.indices.create(index=index, body=SOURCE_BODY)
    if type(client).__module__.startswith("opensearchpy"):
        from opensearchpy import helpers
    else:
        from elasticsearch import helpers
    actions = ({"_index": index, "_id": d["id"], "_source": d} for d in docs)
    helpers.bulk(client, actions, refresh=True)
    alias = f"{index}-alias"
    client.indices.put_alias(index=index, name=alias)
    return alias, f"{index}-splade"


@pytest.fixture
def bm25_index(cluster, index_name):
    """A BM25 index behind an alias; the target index and alias names derive from it."""
    docs = make_documents(120, seed=21)
    alias, target = create_bm25_index(cluster.client, index_name, docs)
    yield index_name, target, alias, docs
    cluster.client.indices.delete(index=target, ignore_unavailable=True)


def gate_data(docs, n=12):
    queries = {f"q{i}": docs[i * 7]["title"] for i in range(n)}
    qrels = {f"q{i}": {docs[i * 7]["id"]: 1} for i in range(n)}
    return queries, qrels


@pytest.mark.emulator_lacks(
    "the add-index-block API the final sync uses (PUT /<index>/_block/write)"
)
def test_migrate_gate_switch_search_and_rollback(cluster, bm25_index, encoder, tmp_path):
    source, target, alias, docs = bm25_index
    client = cluster.client
    queries, qrels = gate_data(docs)

    # An impossible gate: everything is built and checked, the alias stays on the source.
    strict = MigrationConfig(
        source=source,
        target=target,
        alias=alias,
        switch=True,
        gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=1.0),
    )
    refused = migrate(client, strict, encoder=encoder)
    assert refused.verification.ok
    assert refused.copy.indexed == 120 and refused.copy.dead_lettered == 0
    assert not refused.gate.passed and not refused.switched
    assert alias_indices(client, alias) == (source,)

    # A passing gate: the resumed run copies nothing new, then switches in one call.
    lenient = MigrationConfig(
        source=source,
        target=target,
        alias=alias,
        switch=True,
        gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=-1.0),
    )
    report = migrate(client, lenient, encoder=encoder)
    assert report.skipped_existing == 120 and report.copy.indexed == 0
    assert report.gate.passed and report.switched
    assert alias_indices(client, alias) == (target,)
    rows = {row.label.split(" ")[0]: row for row in report.gate.rows}
    assert set(rows) == {"BM25", "SPLADE", "hybrid"}
    assert rows["BM25"].metrics["ndcg@10"] > 0.5  # title queries: BM25 finds its document
    assert all(row.size_bytes > 0 for row in report.gate.rows)
    assert rows["SPLADE"].metrics["overlap@10"] >= 0.0

    # The target keeps every source field, its mapping and settings, plus the vectors.
    copied = client.get(index=target, id=docs[0]["id"])["_source"]
    assert {k: v for k, v in copied.items() if k != "splade"} == docs[0]
    assert copied["splade"]
    mapping = client.indices.get_mapping(index=target)[target]["mappings"]["properties"]
    assert mapping["lang"]["type"] == "keyword" and mapping["splade"]["type"] == "rank_features"
    settings = client.indices.get_settings(index=target)[target]["settings"]["index"]
    assert str(settings["number_of_shards"]) == "2"

    # Searching through the alias now runs SPLADE against the new index.
    result = search(client, alias, docs[3]["title"], encoder=encoder, k=5)
    assert result.hits and all(hit.score > 0 for hit in result.hits)

    chart = write_chart(report, tmp_path / "report.png")
    markdown = write_markdown(report, tmp_path / "report.md", chart=chart.name)
    assert chart.stat().st_size > 1000 and chart.read_bytes()[:4] == b"\x89PNG"
    text = markdown.read_text()
    assert "| BM25 (old) |" in text and "switched" in text

    assert rollback(client, alias, source) == (source,)


def test_dry_run_never_touches_the_alias(cluster, bm25_index, encoder):
    source, target, alias, docs = bm25_index
    queries, _ = gate_data(docs)
    report = migrate(
        cluster.client,
        MigrationConfig(
            source=source,
            target=target,
            alias=alias,
            gate=Gate(queries=queries, min_overlap=0.0),
        ),
        encoder=encoder,
    )
    assert report.gate.passed and not report.switched
    assert (
        "overlap@10" in report.gate.rows[1].metrics and "ndcg@10" not in report.gate.rows[1].metrics
    )
    assert alias_indices(cluster.client, alias) == (source,)


@pytest.mark.emulator_lacks(
    "the add-index-block API the final sync uses (PUT /<index>/_block/write)"
)
def test_killed_migration_resumes_and_the_alias_never_sees_a_half_built_index(
    cluster, index_name, search_model_dir, tmp_path
):
    client = cluster.client
    docs = make_documents(1500, seed=23)
    alias, target = create_bm25_index(client, index_name, docs)
    queries, qrels = gate_data(docs)
    (tmp_path / "q.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "text": v}) for k, v in queries.items())
    )
    (tmp_path / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{next(iter(d))}\t1\n" for q, d in qrels.items())
    )
    command = [
        sys.executable,
        "-m",
        "splade_es.cli",
        "migrate",
        "--url",
        cluster.url,
        "--source",
        index_name,
        "--target",
        target,
        "--alias",
        alias,
        "--model",
        str(search_model_dir),
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--gate-queries",
        str(tmp_path / "q.jsonl"),
        "--gate-qrels",
        str(tmp_path / "qrels.tsv"),
        "--min-ndcg-gain",
        "-1",
        "--switch",
        "--checkpoint",
        str(tmp_path / "state.json"),
        "--json",
        "--quiet",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        copied = 0
        while time.time() < deadline and victim.poll() is None:
            if client.indices.exists(index=target):
                client.indices.refresh(index=target)
                copied = client.count(index=target)["count"]
                if copied >= 200:
                    break
            time.sleep(0.1)
        assert victim.poll() is None, "the migration ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert alias_indices(client, alias) == (index_name,)  # still the source
        client.indices.refresh(index=target)
        assert 0 < client.count(index=target)["count"] < 1500

        resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        report = json.loads(resumed.stdout)
        assert report["switched"] and report["skipped_existing"] >= copied
        assert report["skipped_existing"] + report["copy"]["indexed"] == 1500
        assert (
            report["verification"]["source_count"] == report["verification"]["target_count"] == 1500
        )
        assert alias_indices(client, alias) == (target,)
        client.indices.refresh(index=target)
        assert client.count(index=target)["count"] == 1500
    finally:
        client.indices.delete(index=target, ignore_unavailable=True)
