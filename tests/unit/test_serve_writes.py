"""The write path's pure parts (``serve/writes.py``, rules of ``serve/enrich.py``) and the
document queue (``DocumentBatcher``): concurrent requests encoded together, 429 when full."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from splade_es.exceptions import ConfigurationError
from splade_es.serve import writes
from splade_es.serve.batcher import DocumentBatcher, QueueFull
from splade_es.serve.enrich import EnrichConfig, parse_rule
from splade_es.serve.facts import sparse_field_type, write_index_of
from splade_es.sparse import SparseBatch

VOCAB = [f"t{i}" for i in range(100)]


def ndjson(*objects) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/_bulk", ("_bulk", None, None)),
        ("PUT", "/docs/_bulk", ("_bulk", "docs", None)),
        ("POST", "/docs/_doc", ("_doc", "docs", None)),
        ("PUT", "/docs/_doc/1", ("_doc", "docs", "1")),
        ("POST", "/docs/_doc/1", ("_doc", "docs", "1")),
        ("PUT", "/docs/_create/1", ("_create", "docs", "1")),
        ("POST", "/docs/_update/1", ("_update", "docs", "1")),
        ("PUT", "/docs/_doc", None),  # PUT needs an id
        ("PUT", "/docs/_update/1", None),
        ("GET", "/docs/_doc/1", None),
        ("DELETE", "/docs/_doc/1", None),
        ("POST", "/docs/_search", None),
        ("POST", "/_doc/1", None),
        ("PUT", "/docs", None),
    ],
)
def test_write_path(method, path, expected):
    found = writes.write_path(method, path)
    assert (found and (found.api, found.index, found.doc_id)) == expected or (
        found is None and expected is None
    )


def test_split_bulk_keeps_lines_and_reads_every_action():
    body = (
        ndjson(
            {"index": {"_index": "a", "_id": 1}},
            {"title": "x"},
            {"delete": {"_id": "2"}},
            {"create": {"_id": "3"}},
            {"text": "y"},
            {"update": {"_id": "4", "retry_on_conflict": 2}},
            {"doc": {"text": "z"}},
        )
        + b"\n"
    )  # a trailing blank line is allowed
    items = writes.split_bulk(body)
    assert [(i.number, i.action, i.doc_id) for i in items] == [
        (1, "index", "1"), (2, "delete", "2"), (3, "create", "3"), (4, "update", "4")
    ]  # fmt: skip
    assert items[0].index("default") == "a" and items[2].index("default") == "default"
    assert items[0].source() == {"title": "x"} and items[1].source_line is None
    # Lines are kept byte for byte: what is not enriched is forwarded exactly as it came.
    assert writes.join_lines([items[0].header_line, items[0].source_line]) == ndjson(
        {"index": {"_index": "a", "_id": 1}}, {"title": "x"}
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json\n", "bulk item 1: the action line is not JSON"),
        (ndjson({"index": {}, "extra": {}}), "malformed action line"),
        (ndjson({"upsert": {}}, {}), "unknown action [upsert]"),
        (ndjson({"index": {"_id": "1"}}), "the index action has no document line"),
        (ndjson({"delete": {"_id": "1"}}, {"index": {}}), "the index action has no document"),
    ],
)
def test_split_bulk_names_the_item_that_is_wrong(body, message):
    with pytest.raises(writes.WriteBodyError, match=message.replace("[", r"\[")):
        writes.split_bulk(body)


def test_merge_partial_follows_the_engines_rule_and_leaves_the_source_alone():
    source = {"a": {"x": 1, "deep": {"k": 1}}, "list": [1, 2], "s": "old"}
    merged = writes.merge_partial(source, {"a": {"deep": {"j": 2}}, "list": [3], "s": None})
    assert merged == {"a": {"x": 1, "deep": {"k": 1, "j": 2}}, "list": [3], "s": None}
    assert source == {"a": {"x": 1, "deep": {"k": 1}}, "list": [1, 2], "s": "old"}
    assert writes.merge_partial(source, {"a": 5})["a"] == 5  # a map replaced by a value


def test_touches_top_level_and_dotted_fields():
    assert writes.touches({"title": None}, ("title", "text"))
    assert writes.touches({"meta": {"title": "x"}}, ("meta.title",))
    assert writes.touches({"meta.title": "x"}, ("meta.title",))
    assert not writes.touches({"meta": {"other": 1}}, ("meta.title",))
    assert not writes.touches({"views": 1}, ("title", "text"))


def test_assemble_puts_every_item_in_its_place():
    sent = [{"index": {"_id": "a", "status": 201}}, {"delete": {"_id": "c", "status": 200}}]
    mine = writes.error_item("create", "d", "b", 400, "illegal_argument_exception", "no text")
    out = writes.assemble(3, 7, [0, 2], sent, {1: mine})
    assert out["took"] == 7 and out["errors"] is True
    assert [next(iter(i)) for i in out["items"]] == ["index", "create", "delete"]
    clean = writes.assemble(1, 1, [0], sent[:1], {})
    assert clean["errors"] is False


def test_response_items_must_match_what_was_sent():
    with pytest.raises(writes.WriteBodyError, match="2 items for 3 operations"):
        writes.response_items({"items": [{}, {}]}, 3)


def test_single_response_from_a_bulk_item():
    ok = {"index": {"_index": "d", "_id": "1", "result": "updated", "status": 200}}
    assert writes.single_response(ok) == (200, {"_index": "d", "_id": "1", "result": "updated"})
    bad = {
        "update": {"_id": "1", "status": 409, "error": {"type": "version_conflict", "reason": "r"}}
    }
    status, body = writes.single_response(bad)
    assert status == 409 and body["error"]["root_cause"][0]["type"] == "version_conflict"
    assert body["status"] == 409


def test_parse_rule_and_its_errors():
    rule = parse_rule("logs-*::vec", text_fields=("msg",))
    assert (rule.pattern, rule.text_fields, rule.sparse_field) == ("logs-*", ("msg",), "vec")
    assert rule.matches("logs-2026") and not rule.matches("metrics-2026")
    assert rule.watched_fields == ("msg", "vec")
    for spec in ("", ":title", "a:b:c:d", "a:splade:splade", "a:title:vectors.splade"):
        with pytest.raises(ConfigurationError):
            parse_rule(spec)
    with pytest.raises(ConfigurationError, match="at least one"):
        EnrichConfig(rules=())


def test_write_index_and_field_type_from_the_cluster_answers():
    assert write_index_of({"a": {"aliases": {"x": {}}}, "b": {"aliases": {"x": {}}}}, "x") is None
    assert write_index_of({}, "x") is None
    mapping = {"i": {"mappings": {"properties": {"s": {"type": "text"}}}}}
    assert sparse_field_type(mapping, "i", "s") is None  # not a sparse type: not enriched
    assert sparse_field_type(mapping, "i", "missing") is None
    sv = {"i-000001": {"mappings": {"properties": {"s": {"type": "sparse_vector"}}}}}
    assert sparse_field_type(sv, "i", "s") == "sparse_vector"  # keyed by the concrete name


class GatedEncoder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()

    def __call__(self, texts: list[str]) -> SparseBatch:
        self.gate.wait(10)
        self.calls.append(list(texts))
        return SparseBatch.from_rows([([len(t)], [1.0]) for t in texts], vocab=VOCAB)


def test_documents_of_concurrent_requests_are_encoded_together_and_a_full_queue_refuses():
    async def body():
        model = GatedEncoder()
        loop = asyncio.get_running_loop()
        batcher = DocumentBatcher(
            model, lambda f, *a: loop.run_in_executor(None, f, *a), max_batch=10, max_queued=8
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.encode(["a"]))  # taken at once: the model waits
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.encode(["bb", "ccc"]))
        third = asyncio.ensure_future(batcher.encode(["dddd"] * 5))
        await asyncio.sleep(0.05)
        assert batcher.queued == 8
        with pytest.raises(QueueFull):
            await batcher.encode(["e"])  # 9 > 8
        model.gate.set()
        rows = await asyncio.gather(first, second, third)
        await batcher.close()
        return model.calls, rows, batcher.queued

    calls, rows, queued = asyncio.run(body())
    assert calls == [["a"], ["bb", "ccc", *["dddd"] * 5]]  # the two waiting requests, one call
    assert [[int(ids[0]) for ids, _ in r] for r in rows] == [[1], [2, 3], [4] * 5]
    assert queued == 0


def test_a_request_larger_than_the_queue_is_admitted_when_the_queue_is_empty():
    async def body():
        model = GatedEncoder()
        model.gate.set()
        loop = asyncio.get_running_loop()
        batcher = DocumentBatcher(
            model, lambda f, *a: loop.run_in_executor(None, f, *a), max_batch=4, max_queued=2
        )
        batcher.start()
        rows = await batcher.encode(["x"] * 5)
        await batcher.close()
        return rows

    assert len(asyncio.run(body())) == 5


def test_a_large_request_is_encoded_in_model_sized_calls_and_errors_reach_every_waiter():
    async def body():
        model = GatedEncoder()
        model.gate.set()
        loop = asyncio.get_running_loop()
        batcher = DocumentBatcher(
            model, lambda f, *a: loop.run_in_executor(None, f, *a), max_batch=10, max_queued=100
        )
        batcher.start()
        texts = [f"{'x' * (i % 7 + 1)}" for i in range(25)]
        rows = await batcher.encode(texts)
        sizes = [len(c) for c in model.calls]
        # A model that fails: the waiting request gets the error; the queue keeps working.
        batcher._encode = lambda texts: (_ for _ in ()).throw(RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.encode(["a", "b"])
        batcher._encode = model
        again = await batcher.encode(["abc"])
        await batcher.close()
        return texts, rows, sizes, again, batcher.queued

    texts, rows, sizes, again, queued = asyncio.run(body())
    assert sizes == [10, 10, 5]  # queries get the model thread between the calls
    assert [int(ids[0]) for ids, _ in rows] == [len(t) for t in texts]  # in order
    assert [int(ids[0]) for ids, _ in again] == [3] and queued == 0
