"""The ingestion pipeline's pure parts: sources, chunking, per-item results, retries,
watermark, checkpoint and dead letters."""

from __future__ import annotations

import json

import elasticsearch
import pytest

from splade_es.exceptions import ConfigurationError, InputError
from splade_es.ingest.bulk import (
    ActionChunker,
    RetryPolicy,
    bulk_body,
    chunk_actions,
    make_action,
    send_bulk,
    split_items,
)
from splade_es.ingest.checkpoint import Checkpoint, CheckpointState, DeadLetters, Watermark
from splade_es.ingest.sources import (
    Record,
    content_id,
    in_shard,
    parse_shard,
    prepare,
    read_source,
)

NO_WAIT = RetryPolicy(max_retries=3, initial_backoff=0.0, max_backoff=0.0, jitter=0.0)


# ---------------------------------------------------------------------- sources
def test_jsonl_reader_yields_bad_lines_as_records_with_their_error(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "x"}\n\n[1, 2]\n\xff\xfe\n{oops\n')
    records = list(read_source(path))
    assert [r.position for r in records] == [1, 3, 4, 5]
    assert records[0].doc == {"_id": "a", "text": "x"} and records[0].error is None
    assert "expected a JSON object" in records[1].error
    assert "not valid UTF-8" in records[2].error
    assert "invalid JSON" in records[3].error and records[3].raw == "{oops"


def test_csv_reader_reports_bad_bytes_per_row(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"_id,title,text\n1,a,hello\n2,b,caf\xe9\n3,c,fine\n")
    records = list(read_source(path))
    assert [r.position for r in records] == [2, 3, 4]
    assert records[0].doc == {"_id": "1", "title": "a", "text": "hello"}
    assert records[1].doc is None and "not valid UTF-8 in field 'text'" in records[1].error
    assert records[2].doc["text"] == "fine"


def test_beir_folder_is_read_from_its_corpus(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "t", "text": "x"}\n')
    assert [r.doc["_id"] for r in read_source(tmp_path)] == ["d1"]
    with pytest.raises(ConfigurationError, match=r"corpus\.jsonl"):
        list(read_source(tmp_path / "missing", "beir"))


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigurationError, match="pyarrow"):
        list(read_source(tmp_path / "x.parquet"))


def test_prepare_keeps_fields_moves_metadata_ids_and_names_bad_fields():
    record = Record(7, {"_id": "d7", "title": "T", "text": "body", "year": 2020})
    prepared = prepare(record, id_field="_id", text_fields=("title", "text"))
    assert prepared.doc_id == "d7" and prepared.text == "T body"
    assert prepared.source == {"title": "T", "text": "body", "year": 2020, "id": "d7"}
    kept = prepare(record, id_field="_id", text_fields=("text",), keep_fields=("year",))
    assert kept.source == {"year": 2020, "id": "d7"}
    with pytest.raises(InputError) as missing:
        prepare(Record(3, {"text": "x"}), id_field="_id", text_fields=("text",))
    assert missing.value.field == "_id" and "record 3" in str(missing.value)
    with pytest.raises(InputError) as not_text:
        prepare(Record(4, {"_id": "a", "text": ["x"]}), id_field="_id", text_fields=("text",))
    assert not_text.value.field == "text"
    with pytest.raises(InputError, match="where the SPLADE vector goes"):
        prepare(
            Record(5, {"_id": "a", "text": "x", "splade": {}}),
            id_field="_id",
            text_fields=("text",),
        )


def test_content_ids_depend_on_content_only():
    a = {"title": "x", "text": "y"}
    assert content_id(a) == content_id({"text": "y", "title": "x"})
    assert content_id(a) != content_id({"title": "x", "text": "z"})
    prepared = prepare(Record(1, a), id_field=None, text_fields=("text",))
    assert prepared.doc_id == content_id(a)


def test_shards_partition_positions():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "x", "1/0"):
        with pytest.raises(ConfigurationError):
            parse_shard(bad)
    owners = [[s for s in range(3) if in_shard(p, (s, 3))] for p in range(1, 100)]
    assert all(len(o) == 1 for o in owners)


# ---------------------------------------------------------------------- bulk
def test_chunks_respect_doc_and_byte_limits():
    actions = [make_action(i, str(i), {"text": "x" * 100}) for i in range(10)]
    assert [len(c) for c in chunk_actions(actions, max_docs=4, max_bytes=10**6)] == [4, 4, 2]
    sizes = [len(c) for c in chunk_actions(actions, max_docs=100, max_bytes=400)]
    assert sum(sizes) == 10 and max(sizes) <= 3
    big = make_action(0, "big", {"text": "x" * 5000})
    assert [len(c) for c in chunk_actions([big], max_docs=10, max_bytes=100)] == [1]
    with pytest.raises(ValueError):
        ActionChunker(max_docs=0, max_bytes=1)


def test_bulk_body_uses_index_ops_with_explicit_ids():
    body = bulk_body("ix", [make_action(1, "a", {"t": 1})])
    assert body == [{"index": {"_index": "ix", "_id": "a"}}, {"t": 1}]


def _item(status, error=None):
    result = {"status": status}
    if error:
        result["error"] = error
    return {"index": result}


def test_split_items_sorts_success_retryable_and_permanent():
    actions = [make_action(i, str(i), {}) for i in range(4)]
    response = {
        "items": [
            _item(201),
            _item(429, {"type": "es_rejected_execution_exception", "reason": "busy"}),
            _item(
                400,
                {
                    "type": "mapper_parsing_exception",
                    "reason": "bad",
                    "caused_by": {"type": "illegal_argument_exception", "reason": "neg"},
                },
            ),
            _item(503, {"type": "unavailable_shards_exception", "reason": "x"}),
        ]
    }
    indexed, retryable, permanent = split_items(actions, response)
    assert [a.doc_id for a in indexed] == ["0"]
    assert [f.action.doc_id for f in retryable] == ["1", "3"]
    assert [f.action.doc_id for f in permanent] == ["2"]
    assert "mapper_parsing_exception" in permanent[0].reason and "neg" in permanent[0].reason


class ScriptedClient:
    """A client whose bulk answers follow a script: per attempt, a status per document id
    (default 201), or an exception to raise."""

    def __init__(self, script):
        self.script = list(script)
        self.sent: list[list[str]] = []

    def bulk(self, body):
        ids = [line["index"]["_id"] for line in body[::2]]
        self.sent.append(ids)
        step = self.script.pop(0) if self.script else {}
        if isinstance(step, Exception):
            raise step
        return {"items": [_item(step.get(i, 201), {"type": "t", "reason": "r"}) for i in ids]}


def test_only_failed_items_are_resent_with_jittered_backoff():
    client = ScriptedClient([{"b": 429, "c": 503}, {"c": 429}, {}])
    waits = []
    policy = RetryPolicy(max_retries=5, initial_backoff=0.1, max_backoff=1.0, jitter=0.5)
    outcome = send_bulk(
        client,
        "ix",
        [make_action(i, x, {}) for i, x in enumerate("abc")],
        policy=policy,
        sleep=waits.append,
    )
    assert client.sent == [["a", "b", "c"], ["b", "c"], ["c"]]
    assert sorted(a.doc_id for a in outcome.indexed) == ["a", "b", "c"]
    assert outcome.failed == [] and outcome.retried_items == 3
    assert len(waits) == 2 and all(0.1 <= w <= 1.0 for w in waits)
    assert waits[1] >= 0.2  # exponential: the second wait starts at 2 x initial


def test_connection_failures_resend_everything_pending():
    error = elasticsearch.ConnectionError("connection reset")
    client = ScriptedClient([error, {}])
    outcome = send_bulk(
        client, "ix", [make_action(1, "a", {})], policy=NO_WAIT, sleep=lambda s: None
    )
    assert client.sent == [["a"], ["a"]] and len(outcome.indexed) == 1


def test_retries_are_bounded_and_the_last_reason_is_kept():
    client = ScriptedClient([{"a": 429}] * 10)
    outcome = send_bulk(
        client, "ix", [make_action(1, "a", {})], policy=NO_WAIT, sleep=lambda s: None
    )
    assert len(client.sent) == NO_WAIT.max_retries + 1
    assert outcome.indexed == []
    assert outcome.failed[0].status == 429 and "gave up after 3 retries" in outcome.failed[0].reason


def test_permanent_errors_are_not_retried():
    client = ScriptedClient([{"a": 400}])
    outcome = send_bulk(
        client, "ix", [make_action(1, "a", {})], policy=NO_WAIT, sleep=lambda s: None
    )
    assert len(client.sent) == 1 and outcome.failed[0].status == 400


# ---------------------------------------------------------------------- checkpoint
def test_watermark_counts_settled_positions_in_order():
    w = Watermark(10, indexed=8, dead_lettered=2)
    for p in (11, 12, 14):
        w.register(p)
    w.skip_to(13)
    w.settle(12, "indexed")
    assert w.value == 10
    w.settle(11, "dead_lettered")
    assert (w.value, w.indexed, w.dead_lettered) == (13, 9, 3)
    w.settle(14, "indexed")
    assert (w.value, w.indexed) == (14, 10)


def test_checkpoint_round_trips_and_refuses_another_job(tmp_path):
    checkpoint = Checkpoint(tmp_path / "ck.json")
    state = CheckpointState("in.jsonl", "ix", "0/1", 42, 40, 2)
    assert checkpoint.resume_from(state) is state  # nothing saved yet
    checkpoint.save(state)
    assert not (tmp_path / "ck.json.tmp").exists()
    fresh = CheckpointState("in.jsonl", "ix", "0/1", 0, 0, 0)
    assert checkpoint.resume_from(fresh) == state
    with pytest.raises(ConfigurationError, match="another job"):
        checkpoint.resume_from(CheckpointState("other.jsonl", "ix", "0/1", 0, 0, 0))
    (tmp_path / "ck.json").write_text("garbage")
    with pytest.raises(ConfigurationError, match="not a splade-es checkpoint"):
        checkpoint.load()


def test_dead_letters_past_the_watermark_are_dropped_on_resume(tmp_path):
    path = tmp_path / "dead.jsonl"
    letters = DeadLetters(path)
    letters.write([{"position": 3, "reason": "a"}, {"position": 9, "reason": "b"}])
    with open(path, "a") as handle:
        handle.write('{"position": 12, "rea')  # torn by a crash
    DeadLetters(path).truncate_after(5)
    assert [json.loads(x)["position"] for x in path.read_text().splitlines()] == [3]
