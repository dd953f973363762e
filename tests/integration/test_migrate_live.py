"""Issue 15: a migration while the application keeps writing through the alias.

A writer thread updates, deletes and adds documents through the alias from the start of the
copy, and keeps going into the final sync, retrying the writes the source refuses while it is
write-blocked, as a client would. Afterwards the target holds exactly what the writer was
told was written (no acknowledged write lost), every vector is that of the document's
current text, the alias points at the target and the source accepts writes again.

Engine facts this rests on (checked here on the real node; the emulator does not number
operations per shard nor block writes):
- add index block: opensearch-project/OpenSearch 2.19, server/src/main/java/org/opensearch/
  action/admin/indices/readonly/TransportVerifyShardIndexBlockAction.java acquires every
  operation permit of each primary, so the call returns only after in-flight writes finish;
  elastic/elasticsearch main has the same class (7.9+).
- ``_seq_no`` range queries, ``preference=_shards:<n>`` and per-shard ``seq_no`` stats: see
  tests/unit/test_migrate_sync.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from splade_es import SpladeEncoder
from splade_es.engines import dialect_of
from splade_es.migrate import Gate, MigrationConfig, alias_indices, migrate
from splade_es.tokens import TokenCodec
from tests.integration.corpus import TOPICAL, document_text, make_documents
from tests.integration.test_migrate import create_bm25_index, gate_data

pytestmark = [
    pytest.mark.integration,
    pytest.mark.emulator_lacks("per-shard sequence numbers and index write blocks"),
]


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


class Writer(threading.Thread):
    """The application: 50 updates, 20 deletes and 30 additions through the alias, then a
    steady trickle of updates until one of its writes is refused by the write block and,
    retried, lands after the switch. ``model`` is what it was told was written."""

    def __init__(self, client: Any, alias: str, target: str, docs: list[dict], encoder, codec):
        super().__init__(daemon=True)
        self.client, self.alias, self.target = client, alias, target
        self.encoder, self.codec = encoder, codec
        self.model = {d["id"]: dict(d) for d in docs}
        self.rng = random.Random(7)
        self.stop = threading.Event()
        self.rejected = 0
        self.after_switch: list[str] = []
        self.error: BaseException | None = None
        self.acknowledged = 0
        self.plan_done = threading.Event()  # the 100 planned writes were all acknowledged

    def new_text(self, n: int) -> dict[str, str]:
        words = self.rng.sample(TOPICAL, 8)
        return {"title": f"rewritten {n} " + " ".join(words[:2]), "text": " ".join(words)}

    def plan(self) -> list[tuple[str, str]]:
        ids = sorted(self.model)
        self.rng.shuffle(ids)
        ops = [("update", i) for i in ids[:50]] + [("delete", i) for i in ids[50:70]]
        ops += [("add", f"new-{n}") for n in range(30)]
        self.rng.shuffle(ops)
        return ops

    def write(self, op: str, doc_id: str, n: int) -> None:
        body = None
        if op != "delete":
            base = self.model.get(doc_id, {"id": doc_id, "lang": "en"})
            body = {**base, **self.new_text(n)}
        while True:  # a client retrying what the cluster refuses for a while
            try:
                if body is None:
                    response = self.client.delete(index=self.alias, id=doc_id)
                else:
                    response = self.client.index(index=self.alias, id=doc_id, body=body)
                break
            except Exception as exc:
                if "cluster_block_exception" not in str(exc):
                    raise
                self.rejected += 1
                time.sleep(0.05)
        self.acknowledged += 1
        if body is None:
            self.model.pop(doc_id)
        else:
            self.model[doc_id] = body
        if response["_index"] == self.target:
            # After the switch the alias writes to the SPLADE index: the app's ingest path
            # must add the vector (README: serve --enrich, or the app itself).
            self.after_switch.append(doc_id)
            if body is not None:
                batch = self.encoder.encode_documents([document_text(body)])
                vector = self.codec.encode(batch, 0)
                self.client.index(index=self.target, id=doc_id, body={**body, "splade": vector})
            self.stop.set()

    def run(self) -> None:
        try:
            n = 0
            for op, doc_id in self.plan():
                if self.stop.is_set():
                    return
                n += 1
                self.write(op, doc_id, n)
                time.sleep(0.03)
            self.plan_done.set()
            while not self.stop.is_set():  # the trickle, into the final sync
                n += 1
                self.write("update", self.rng.choice(sorted(self.model)), n)
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test
            self.error = exc


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(w * b.get(k, 0.0) for k, w in a.items())
    norm = math.sqrt(sum(w * w for w in a.values())) * math.sqrt(sum(w * w for w in b.values()))
    return dot / norm if norm else 0.0


def read_all(client, index) -> dict[str, dict]:
    client.indices.refresh(index=index)
    response = client.search(index=index, body={"size": 10_000, "query": {"match_all": {}}})
    return {h["_id"]: h["_source"] for h in response["hits"]["hits"]}


def test_live_writes_during_migrate_switch_are_all_in_the_target(cluster, index_name, encoder):
    client = cluster.client
    docs = make_documents(600, seed=31)
    alias, target = create_bm25_index(client, index_name, docs)
    codec = TokenCodec(encoder.vocab, scheme=dialect_of(client).key_scheme("rank_features"))
    queries, qrels = gate_data(docs)
    writer = Writer(client, alias, target, docs, encoder, codec)
    steps: list[tuple[float, str]] = []

    def on_step(message: str) -> None:
        steps.append((time.perf_counter(), message))
        if message.startswith("running the relevance gate"):
            # The copy is done. Hold the migration until all planned writes have landed, so
            # the catch-up passes have them to find however fast this machine copies (CI once
            # copied 600 documents while only 37 writes landed).
            assert writer.plan_done.wait(timeout=120), "the writer stalled"

    config = MigrationConfig(
        source=index_name,
        target=target,
        alias=alias,
        switch=True,
        batch_size=16,
        workers=1,
        max_passes=3,
        gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=-1.0),
    )
    try:
        writer.start()  # writes from the start of the copy
        report = migrate(
            client,
            config,
            encoder=encoder,
            on_step=on_step,
        )
        writer.stop.set()
        writer.join(timeout=60)
        assert writer.error is None, writer.error
        assert not writer.is_alive()

        assert report.switched, report.notes
        assert alias_indices(client, alias) == (target,)
        assert report.verification.ok and not report.verification.written_after
        assert writer.rejected >= 1, "the writer never met the write block"
        # Every planned write landed during the migration (on_step holds it after the copy).
        assert writer.plan_done.is_set() and writer.acknowledged >= 100
        final = report.passes[-1]
        assert final.under_write_block and all(not p.under_write_block for p in report.passes[:-1])
        assert sum(p.changed for p in report.passes) >= 1
        assert sum(p.deleted for p in report.passes) >= 1
        assert report.write_blocked_seconds is not None and 0 < report.write_blocked_seconds < 60
        print(
            f"\nwrites blocked {report.write_blocked_seconds:.2f} s; passes "
            + ", ".join(f"{p.changed}/{p.deleted}" for p in report.passes)
            + f"; writer: {writer.acknowledged} acknowledged, {writer.rejected} rejected tries"
        )

        # Exactly what the application was told was written: ids and every field.
        copied = read_all(client, target)
        assert sorted(copied) == sorted(writer.model)
        for doc_id, source in copied.items():
            assert {k: v for k, v in source.items() if k != "splade"} == writer.model[doc_id]
        # Every vector is that of the document's current text, not of an older version.
        ids = sorted(copied)
        batch = encoder.encode_documents([document_text(copied[i]) for i in ids])
        stale = [
            i
            for row, i in enumerate(ids)
            if cosine(copied[i]["splade"], codec.encode(batch, row)) < 0.99
        ]
        assert stale == []

        # The source accepts writes again.
        settings = client.indices.get_settings(index=index_name)[index_name]["settings"]["index"]
        assert "write" not in settings.get("blocks", {})
        client.index(index=index_name, id="after", body={"title": "a", "text": "b"})
    finally:
        writer.stop.set()
        client.indices.delete(index=target, ignore_unavailable=True)


def write_blocked(client, index) -> bool:
    settings = client.indices.get_settings(index=index)[index]["settings"]["index"]
    return str(settings.get("blocks", {}).get("write", "false")) == "true"


def test_killed_during_the_final_sync_resumes_lifts_the_block_and_loses_nothing(
    cluster, index_name, encoder, search_model_dir, tmp_path
):
    """kill -9 while the source is write-blocked: nothing can lift the block then, so the
    resumed run must (its state file says it blocked), and still end with target == what
    the writer was told."""
    client = cluster.client
    docs = make_documents(600, seed=37)
    alias, target = create_bm25_index(client, index_name, docs)
    codec = TokenCodec(encoder.vocab, scheme=dialect_of(client).key_scheme("rank_features"))
    queries, qrels = gate_data(docs)
    (tmp_path / "q.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "text": v}) for k, v in queries.items())
    )
    (tmp_path / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{next(iter(d))}\t1\n" for q, d in qrels.items())
    )
    command = [
        sys.executable, "-m", "splade_es.cli", "migrate", "--url", cluster.url,
        "--source", index_name, "--target", target, "--alias", alias,
        "--model", str(search_model_dir), "--batch-size", "16", "--workers", "1",
        "--gate-queries", str(tmp_path / "q.jsonl"), "--gate-qrels", str(tmp_path / "qrels.tsv"),
        "--min-ndcg-gain", "-1", "--switch", "--max-passes", "2",
        "--checkpoint", str(tmp_path / "state.json"), "--json", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    writer = Writer(client, alias, target, docs, encoder, codec)
    try:
        writer.start()
        victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while (
            time.time() < deadline
            and victim.poll() is None
            and not write_blocked(client, index_name)
        ):
            time.sleep(0.01)
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert write_blocked(client, index_name), "killed outside the final sync"
        assert json.loads((tmp_path / "state.json").read_text())["write_block"] is True

        resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        report = json.loads(resumed.stdout)
        writer.stop.set()
        writer.join(timeout=60)
        assert writer.error is None, writer.error
        assert report["switched"] and report["verification"]["written_after"] == []
        assert report["passes"][-1]["under_write_block"]
        assert alias_indices(client, alias) == (target,)
        assert not write_blocked(client, index_name)
        assert writer.rejected >= 1
        print(
            f"\nresumed: writes blocked {report['write_blocked_seconds']:.2f} s; "
            f"writer: {writer.acknowledged} acknowledged, {writer.rejected} rejected tries"
        )

        copied = read_all(client, target)
        assert sorted(copied) == sorted(writer.model)
        for doc_id, source in copied.items():
            assert {k: v for k, v in source.items() if k != "splade"} == writer.model[doc_id]
        ids = sorted(copied)
        batch = encoder.encode_documents([document_text(copied[i]) for i in ids])
        vectors = {i: codec.encode(batch, row) for row, i in enumerate(ids)}
        assert [i for i in ids if cosine(copied[i]["splade"], vectors[i]) < 0.99] == []
    finally:
        writer.stop.set()
        if write_blocked(client, index_name):
            client.indices.put_settings(index=index_name, body={"index.blocks.write": None})
        client.indices.delete(index=target, ignore_unavailable=True)


def test_no_write_block_switches_without_ever_blocking_the_source(cluster, index_name, encoder):
    client = cluster.client
    docs = make_documents(120, seed=41)
    alias, target = create_bm25_index(client, index_name, docs)
    queries, qrels = gate_data(docs)
    blocked_seen = threading.Event()
    watching = threading.Event()

    def watch() -> None:  # the source must accept writes throughout
        while not watching.is_set():
            if write_blocked(client, index_name):
                blocked_seen.set()
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        report = migrate(
            client,
            MigrationConfig(
                source=index_name,
                target=target,
                alias=alias,
                switch=True,
                write_block=False,
                gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=-1.0),
            ),
            encoder=encoder,
        )
        watching.set()
        watcher.join()
        assert report.switched and report.verification.ok
        assert report.write_blocked_seconds is None
        assert not any(p.under_write_block for p in report.passes)
        assert not blocked_seen.is_set()
        assert alias_indices(client, alias) == (target,)
    finally:
        watching.set()
        client.indices.delete(index=target, ignore_unavailable=True)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_final_sync_lifts_the_block_and_leaves_the_alias(
    cluster, index_name, encoder, interruption
):
    """Ctrl-C (or any error) while writes are blocked: the block goes, the alias stays."""
    client = cluster.client
    docs = make_documents(60, seed=43)
    alias, target = create_bm25_index(client, index_name, docs)
    queries, qrels = gate_data(docs, n=4)
    seen_blocked = []

    def on_step(message: str) -> None:
        if "blocked for the final pass" in message:
            seen_blocked.append(write_blocked(client, index_name))
            raise interruption("stopped by the user")

    config = MigrationConfig(
        source=index_name,
        target=target,
        alias=alias,
        switch=True,
        gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=-1.0),
    )
    try:
        with pytest.raises(interruption):
            migrate(client, config, encoder=encoder, on_step=on_step)
        assert seen_blocked == [True]
        assert not write_blocked(client, index_name)
        assert alias_indices(client, alias) == (index_name,)
        client.index(index=index_name, id="after", body={"title": "a", "text": "b"})
    finally:
        client.indices.delete(index=target, ignore_unavailable=True)
