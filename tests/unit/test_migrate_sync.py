"""Catch-up passes of a live migration (issue 15), against a fake cluster that numbers its
operations per shard the way the engines do.

The engine behaviour the fake reproduces, as read in the engines' source (and checked on the
real OpenSearch 2.19 node by tests/integration/test_migrate_live.py):

- every index/delete on a shard takes the next ``_seq_no`` of that shard
  (opensearch-project/OpenSearch 2.19, server/src/main/java/org/opensearch/index/seqno/
  LocalCheckpointTracker.java ``generateSeqNo``); a search hit carries it, and ``_seq_no`` is
  an indexed point field that a ``range`` query filters on (server/src/main/java/org/
  opensearch/index/mapper/SeqNoFieldMapper.java ``SeqNoFieldType.rangeQuery``);
- ``GET /<index>/_stats?level=shards`` reports per shard copy ``seq_no.max_seq_no``,
  ``local_checkpoint`` and ``global_checkpoint`` (server/src/main/java/org/opensearch/index/
  seqno/SeqNoStats.java); elastic/elasticsearch main has the same class and fields;
- ``preference=_shards:<n>`` restricts a search to shard n (server/src/main/java/org/
  opensearch/cluster/routing/OperationRouting.java ``preferenceActiveShardIterator``);
- a write-blocked index refuses writes with a 403 ``cluster_block_exception``.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from splade_es.engines import dialect_for
from splade_es.exceptions import ClusterError
from splade_es.ingest import IngestReport
from splade_es.ingest.index_source import read_shard_changes
from splade_es.migrate.sync import (
    catch_up,
    decode_watermarks,
    delete_body,
    delete_failures,
    encode_watermarks,
    read_ids,
    shard_checkpoints,
    take_watermarks,
    write_block,
)

DIALECT = dialect_for("opensearch", "2.19.0")  # reads with a scroll, like the real 2.19 node


class Blocked(Exception):
    pass


class FakeIndex:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.seq = [-1] * shards
        self.docs: dict[str, tuple[int, dict[str, Any]]] = {}  # id -> (seq_no, source)
        self.blocked = False

    def shard_of(self, doc_id: str) -> int:
        return zlib.crc32(doc_id.encode()) % self.shards

    def write(self, doc_id: str, source: dict[str, Any] | None) -> None:
        if self.blocked:
            raise Blocked(doc_id)
        shard = self.shard_of(doc_id)
        self.seq[shard] += 1
        if source is None:
            self.docs.pop(doc_id, None)
        else:
            self.docs[doc_id] = (self.seq[shard], dict(source))


class FakeIndices:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def stats(self, index: str, level: str, metric: str) -> dict[str, Any]:
        self.cluster.calls.append(("stats", index))
        fake = self.cluster.indices_[index]
        shards = {
            str(s): [
                {
                    "routing": {"primary": True, "state": "STARTED"},
                    "seq_no": {
                        "max_seq_no": fake.seq[s],
                        "local_checkpoint": fake.seq[s],
                        "global_checkpoint": fake.seq[s],
                    },
                }
            ]
            for s in range(fake.shards)
        }
        for hook in self.cluster.after_stats:
            hook()
        self.cluster.after_stats.clear()
        return {"indices": {index: {"shards": shards}}}

    def refresh(self, index: str) -> dict[str, Any]:
        self.cluster.calls.append(("refresh", index))
        return {}

    def get_settings(self, index: str, name: str) -> dict[str, Any]:
        blocked = self.cluster.indices_[index].blocked
        blocks = {"blocks": {"write": "true"}} if blocked else {}
        return {index: {"settings": {"index": blocks}}}

    def add_block(self, index: str, block: str) -> dict[str, Any]:
        self.cluster.calls.append(("add_block", index))
        self.cluster.indices_[index].blocked = True
        return {"acknowledged": True}

    def put_settings(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        self.cluster.calls.append(("put_settings", index))
        if self.cluster.fail_unblock:
            self.cluster.fail_unblock -= 1
            raise ConnectionResetError("connection reset")
        assert body == {"index.blocks.write": None}
        self.cluster.indices_[index].blocked = False
        return {"acknowledged": True}


class FakeCluster:
    """What the catch-up code calls on a client, over in-memory indices."""

    def __init__(self) -> None:
        self.indices_: dict[str, FakeIndex] = {}
        self.indices = FakeIndices(self)
        self.calls: list[tuple[str, str]] = []
        self.after_stats: list[Any] = []
        self.fail_unblock = 0
        self.searches: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._scrolls: dict[str, list[list[dict[str, Any]]]] = {}

    def create(self, name: str, shards: int = 2) -> FakeIndex:
        self.indices_[name] = FakeIndex(shards)
        return self.indices_[name]

    def search(self, index: str, scroll: str, body: dict[str, Any], **params: Any) -> dict:
        self.calls.append(("search", index))
        self.searches.append((body, params))
        fake = self.indices_[index]
        after = body.get("query", {}).get("range", {}).get("_seq_no", {}).get("gt", -2)
        only = params.get("preference", "")
        shard = int(only.removeprefix("_shards:")) if only else None
        hits = []
        for doc_id, (seq, source) in sorted(fake.docs.items()):
            if seq <= after or (shard is not None and fake.shard_of(doc_id) != shard):
                continue
            hit: dict[str, Any] = {"_id": doc_id}
            if body.get("_source") is not False:
                hit["_source"] = dict(source)
            hits.append(hit)
        size = body["size"]
        pages = [hits[i : i + size] for i in range(0, len(hits), size)]
        scroll_id = f"s{len(self._scrolls)}"
        self._scrolls[scroll_id] = pages[1:]
        return {"_scroll_id": scroll_id, "hits": {"hits": pages[0] if pages else []}}

    def scroll(self, scroll_id: str, scroll: str) -> dict[str, Any]:
        pages = self._scrolls[scroll_id]
        return {"_scroll_id": scroll_id, "hits": {"hits": pages.pop(0) if pages else []}}

    def clear_scroll(self, scroll_id: str) -> None:
        self._scrolls.pop(scroll_id, None)

    def bulk(self, body: list[dict[str, Any]]) -> dict[str, Any]:
        items = []
        for action in body:
            meta = action["delete"]
            fake = self.indices_[meta["_index"]]
            found = meta["_id"] in fake.docs
            fake.write(meta["_id"], None)
            items.append(
                {
                    "delete": {
                        "_id": meta["_id"],
                        "status": 200 if found else 404,
                        "result": "deleted" if found else "not_found",
                    }
                }
            )
        return {"errors": False, "items": items}


class Copier:
    """Stands in for the ingestion pipeline: writes each record into the target with a
    ``vector_of`` field made from its text, and remembers which ids each pass copied."""

    def __init__(self, cluster: FakeCluster, target: str, refuse: set[str] = frozenset()):
        self.cluster, self.target, self.refuse = cluster, target, set(refuse)
        self.copied: dict[int, list[str]] = {}

    def __call__(self, records, number: int) -> IngestReport:
        ids, refused = [], 0
        for record in records:
            doc = dict(record.doc)
            doc_id = doc.pop("_id")
            if doc_id in self.refuse:
                refused += 1
                continue
            ids.append(doc_id)
            self.cluster.indices_[self.target].write(doc_id, {**doc, "vector_of": doc["text"]})
        self.copied[number] = ids
        return IngestReport(
            read=len(ids) + refused,
            encoded=len(ids) + refused,
            indexed=len(ids),
            dead_lettered=refused,
            retried_items=0,
            skipped_done=0,
            other_shards=0,
            resumed_from=0,
            total_indexed=len(ids),
            total_dead_lettered=refused,
            seconds=0.0,
            index=self.target,
        )


def expected_target(source: FakeIndex) -> dict[str, dict[str, Any]]:
    return {i: {**src, "vector_of": src["text"]} for i, (_, src) in source.docs.items()}


def target_docs(target: FakeIndex) -> dict[str, dict[str, Any]]:
    return {i: src for i, (_, src) in target.docs.items()}


@pytest.fixture
def live():
    """A source of 40 documents on 2 shards, bulk-copied after the watermarks were taken."""
    cluster = FakeCluster()
    source, target = cluster.create("src"), cluster.create("dst")
    for i in range(40):
        source.write(f"d{i}", {"text": f"text {i}"})
    watermarks = take_watermarks(cluster, "src")
    copier = Copier(cluster, "dst")
    # The bulk copy (pass 0), as the pipeline would do it from its point in time.
    for doc_id, (_, src) in list(source.docs.items()):
        target.write(doc_id, {**src, "vector_of": src["text"]})
    return cluster, source, target, watermarks, copier


def test_a_pass_recopies_updates_and_new_documents_and_deletes_what_is_gone(live):
    cluster, source, target, watermarks, copier = live
    for i in range(0, 10):
        source.write(f"d{i}", {"text": f"updated {i}"})
    for i in range(10, 15):
        source.write(f"d{i}", None)
    for i in range(100, 103):
        source.write(f"d{i}", {"text": f"new {i}"})
    source.write("d1", {"text": "updated twice"})

    done, after = catch_up(
        cluster, "src", "dst", watermarks, dialect=DIALECT, copy=copier, number=1
    )

    assert sorted(copier.copied[1]) == sorted(
        [f"d{i}" for i in range(10)] + ["d100", "d101", "d102"]
    )  # each changed document once, nothing unchanged
    assert (done.changed, done.deleted, done.missing, done.refused) == (13, 5, 0, 0)
    assert done.changes == 18
    assert target_docs(target) == expected_target(source)
    assert after == {s: source.seq[s] for s in range(2)}

    # Nothing written since: the next pass copies and deletes nothing.
    quiet, again = catch_up(cluster, "src", "dst", after, dialect=DIALECT, copy=copier, number=2)
    assert (quiet.changed, quiet.deleted, quiet.changes) == (0, 0, 0)
    assert again == after


def test_a_write_racing_a_pass_is_caught_by_the_next_one(live):
    cluster, source, target, watermarks, copier = live
    source.write("d3", {"text": "before the pass"})
    # Written right after the pass read the checkpoints: beyond its watermarks.
    cluster.after_stats.append(lambda: source.write("d4", {"text": "during the pass"}))
    cluster.after_stats.append(lambda: source.write("d5", None))
    first, after = catch_up(
        cluster, "src", "dst", watermarks, dialect=DIALECT, copy=copier, number=1
    )
    # This fake makes writes visible at once, so the pass may already see them; what matters
    # is that the next watermarks do not cover them, so the next pass copies them again.
    assert "d3" in copier.copied[1]
    assert first.deleted == 1
    second, _ = catch_up(cluster, "src", "dst", after, dialect=DIALECT, copy=copier, number=2)
    assert "d4" in copier.copied[2]
    assert second.changed >= 1
    assert target_docs(target) == expected_target(source)


def test_resuming_without_watermarks_recopies_everything(live):
    cluster, source, target, _, copier = live
    source.write("d7", {"text": "changed"})
    everything = decode_watermarks(encode_watermarks({0: -1, 1: -1}))
    done, _ = catch_up(cluster, "src", "dst", everything, dialect=DIALECT, copy=copier, number=1)
    assert done.changed == len(source.docs) == 40
    assert target_docs(target) == expected_target(source)


def test_refused_documents_are_counted_and_reported_missing(live):
    cluster, source, _, watermarks, _ = live
    copier = Copier(cluster, "dst", refuse={"d200"})
    source.write("d200", {"text": "the target refuses this one"})
    done, _ = catch_up(cluster, "src", "dst", watermarks, dialect=DIALECT, copy=copier, number=1)
    assert (done.changed, done.refused, done.missing) == (0, 1, 1)


def test_watermarks_come_from_primaries_and_survive_json():
    # Shape of GET /p/_stats?level=shards on the OpenSearch 2.19.6 node (trimmed).
    stats = {
        "indices": {
            "p": {
                "shards": {
                    "0": [
                        {
                            "routing": {"primary": False},
                            "seq_no": {"max_seq_no": 9, "global_checkpoint": 5},
                        },
                        {
                            "routing": {"primary": True},
                            "seq_no": {"max_seq_no": 9, "global_checkpoint": 8},
                        },
                    ],
                    "1": [
                        {
                            "routing": {"primary": True},
                            "seq_no": {"max_seq_no": 3, "global_checkpoint": 3},
                        }
                    ],
                }
            }
        }
    }
    assert shard_checkpoints(stats, "p") == {0: 8, 1: 3}
    assert shard_checkpoints(stats, "p", key="max_seq_no") == {0: 9, 1: 3}
    assert decode_watermarks(encode_watermarks({1: 3, 0: 8})) == {0: 8, 1: 3}
    stats["indices"]["p"]["shards"]["1"][0]["routing"]["primary"] = False
    with pytest.raises(ClusterError, match="p shard 1: no started primary"):
        shard_checkpoints(stats, "p")


def test_bulk_delete_treats_not_found_as_done_and_names_a_failure():
    assert delete_body("t", ["a"]) == [{"delete": {"_index": "t", "_id": "a"}}]
    response = {
        "items": [
            {"delete": {"_id": "a", "status": 404, "result": "not_found"}},
            {"delete": {"_id": "b", "status": 200, "result": "deleted"}},
            {"delete": {"_id": "c", "status": 429, "error": {"type": "es_rejected"}}},
        ]
    }
    assert delete_failures(response) == [("c", "{'type': 'es_rejected'}")]


# ---------------------------------------------------------------------- the write block
def test_write_block_is_lifted_after_success_failure_and_ctrl_c():
    cluster = FakeCluster()
    source = cluster.create("src")
    noted = []
    with write_block(
        cluster,
        "src",
        dialect=DIALECT,
        on_added=lambda: noted.append("added"),
        on_lifted=lambda: noted.append("lifted"),
    ) as b:
        assert source.blocked and noted == ["added"]
        with pytest.raises(Blocked):
            source.write("x", {"text": "refused while blocked"})
    assert not source.blocked and b.added and b.seconds >= 0 and noted == ["added", "lifted"]

    for interruption in (RuntimeError("the final pass failed"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)), write_block(cluster, "src", dialect=DIALECT):
            assert source.blocked
            raise interruption
        assert not source.blocked
    source.write("x", {"text": "accepted again"})


def test_write_block_lift_is_retried_and_a_failure_says_how_to_lift_it():
    cluster = FakeCluster()
    source = cluster.create("src")
    cluster.fail_unblock = 2  # two failures, then it works
    with write_block(cluster, "src", dialect=DIALECT, attempts=3):
        pass
    assert not source.blocked
    assert [c for c in cluster.calls if c[0] == "put_settings"] == [("put_settings", "src")] * 3

    cluster.fail_unblock = 10
    lifted = []
    refused = pytest.raises(ClusterError, match=r"src still refuses writes.*index.blocks.write")
    with (
        refused,
        write_block(
            cluster, "src", dialect=DIALECT, attempts=2, on_lifted=lambda: lifted.append(1)
        ),
    ):
        pass
    assert source.blocked and lifted == []  # the caller keeps the block recorded, to retry


def test_an_index_blocked_before_stays_blocked():
    cluster = FakeCluster()
    source = cluster.create("src")
    source.blocked = True
    with write_block(cluster, "src", dialect=DIALECT) as block:
        pass
    assert source.blocked and not block.added
    assert ("add_block", "src") not in cluster.calls


def test_change_reads_keep_vector_fields_on_elasticsearch_9_2_and_id_reads_skip_sources():
    """elastic/elasticsearch 9.2 leaves vector fields out of ``_source`` unless asked
    (``exclude_vectors``, see tests/unit/test_conformance.py): a re-copied document must keep
    them, and id-only reads need no source at all."""
    cluster = FakeCluster()
    source = cluster.create("src")
    source.write("a", {"text": "x", "emb": [0.5, 1.0]})
    es92 = dialect_for("elasticsearch", "9.2.0")
    shard = source.shard_of("a")
    records = list(read_shard_changes(cluster, "src", shard, -1, dialect=es92))
    assert [r.doc for r in records] == [{"text": "x", "emb": [0.5, 1.0], "_id": "a"}]
    body, params = cluster.searches[-1]
    assert body["_source"] == {"exclude_vectors": False}
    assert body["query"] == {"range": {"_seq_no": {"gt": -1}}}
    assert params == {"preference": f"_shards:{shard}"}
    assert list(read_shard_changes(cluster, "src", shard, 0, dialect=es92)) == []

    assert read_ids(cluster, "src", dialect=DIALECT) == {"a"}
    assert cluster.searches[-1][0]["_source"] is False
