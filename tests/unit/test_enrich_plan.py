"""The write path's planner (``serve/enrich_plan.py``): plain items and dicts in, plain
decisions out; and the executor (``serve/enrich.Enricher``) driven against a fake cluster for
what only it does (the version-conflict loop and its backoff)."""

from __future__ import annotations

import asyncio
import doctest
import json
from typing import Any

import numpy as np
import pytest

from splade_es.engines import dialect_for
from splade_es.serve import enrich_plan, writes
from splade_es.serve.enrich import EnrichConfig, Enricher
from splade_es.serve.enrich_plan import EnrichRule, Op, Written
from splade_es.serve.facts import WriteTarget
from splade_es.serve.metrics import Metrics
from splade_es.serve.upstream import UpstreamResponse

RULE = EnrichRule("docs*")
DIALECT = dialect_for("opensearch", "2.19.0")
ENRICHED = WriteTarget("docs", "docs-1", "rank_features", DIALECT, 0.0)
BM25 = WriteTarget("docs", "docs-0", None, DIALECT, 0.0)


def bulk(*objects: Any) -> list[writes.BulkItem]:
    return writes.split_bulk(b"".join(json.dumps(o).encode() + b"\n" for o in objects))


def op_for(action: str, meta: dict[str, Any], source: Any, target: WriteTarget = ENRICHED) -> Op:
    [item] = bulk({action: meta}, source)
    return Op(item, RULE, target)


def error_of(op: Op) -> dict[str, Any]:
    assert op.answer is not None
    return writes.item_body(op.answer)[1]


def test_the_docstring_examples_run():
    result = doctest.testmod(enrich_plan)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- rules
def test_a_rule_is_found_by_the_name_or_by_the_write_index_behind_it():
    rules = (EnrichRule("news-*", ("body",), "vec"), RULE)
    assert enrich_plan.rule_for(rules, "docs-2026") is RULE
    assert enrich_plan.rule_for(rules, "other") is None
    alias = WriteTarget("current", "news-7", "rank_features", DIALECT, 0.0)
    assert enrich_plan.rule_behind(rules, "current", alias) is rules[0]
    itself = WriteTarget("other", "other", None, DIALECT, 0.0)
    assert enrich_plan.rule_behind(rules, "other", itself) is None
    nowhere = WriteTarget("current", None, None, DIALECT, 0.0)
    assert enrich_plan.rule_behind(rules, "current", nowhere) is None


def test_rule_defaults_are_the_packages():
    assert (RULE.text_fields, RULE.sparse_field) == (("title", "text"), "splade")


# ---------------------------------------------------------------------- the one decision
def test_refuse_rejects_with_a_400_or_passes_the_document_through_bare():
    rejected = op_for("index", {"_id": "1"}, {"title": 5})
    rejected.send_as = "index"
    enrich_plan.refuse(rejected, "reject", "script", "no way", "parse_exception")
    assert error_of(rejected) == {
        "_index": "docs-1",
        "_id": "1",
        "status": 400,
        "error": {"type": "parse_exception", "reason": "no way"},
    }
    assert rejected.refusal == enrich_plan.Refusal("script", rejected=True)
    assert not rejected.enriched

    passed = op_for("index", {"_id": "1"}, {"title": "x"})
    passed.doc, passed.text, passed.send_as = {"title": "x"}, "x", "create"
    enrich_plan.refuse(passed, "passthrough", "encode", "no way")
    assert passed.answer is None and (passed.doc, passed.text, passed.send_as) == (None,) * 3
    assert passed.refusal == enrich_plan.Refusal("encode", rejected=False)


def test_compose_reads_the_text_as_ingest_does_and_drops_the_apps_vector():
    op = op_for("index", {"_id": "1"}, {})
    enrich_plan.compose(op, {"title": " A ", "text": "b", "splade": {"x": 1.0}}, "doc", "reject")
    assert op.text == "A b" and op.doc == {"title": " A ", "text": "b"} and op.enriched

    bad = op_for("index", {"_id": "1"}, {})
    enrich_plan.compose(bad, {"title": 7}, "document [1] (bulk item 1)", "reject")
    reason = error_of(bad)["error"]["reason"]
    assert reason.startswith("document [1] (bulk item 1)") and "'splade' vector" in reason
    assert bad.refusal == enrich_plan.Refusal("encode", rejected=True)


# ---------------------------------------------------------------------- planning a bulk
def test_plan_bulk_decides_every_item():
    items = bulk(
        {"index": {"_id": "1"}}, {"title": "ok", "splade": {"old": 1}},
        {"create": {"_id": "2"}}, {"views": 3},
        {"update": {"_id": "3"}}, {"script": {"source": "ctx._source.n++"}},
        {"update": {"_id": "4"}}, {"doc": {"text": "new"}},
        {"update": {"_id": "5"}}, {"doc": {"views": 4}},
        {"delete": {"_id": "6"}},
        {"index": {"_index": "logs", "_id": "7"}}, {"title": 1},
        {"update": {"_id": "8", "if_seq_no": 3}}, {"doc": {"title": "t"}},
    )  # fmt: skip
    items.insert(2, writes.BulkItem(3, "index", {"_id": "u"}, b'{"index":{}}', b"{/**/}"))
    resolved = {"docs": (RULE, ENRICHED), "logs": None}
    ops = enrich_plan.plan_bulk(items, "docs", resolved, "reject")
    by_id = {op.item.doc_id: op for op in ops}
    assert by_id["1"].doc == {"title": "ok"} and by_id["1"].text == "ok"
    assert "no text" in error_of(by_id["2"])["error"]["reason"]
    assert error_of(by_id["u"])["error"]["type"] == "parse_exception"
    assert "scripted update" in error_of(by_id["3"])["error"]["reason"]
    assert by_id["3"].refusal == enrich_plan.Refusal("script", rejected=True)
    assert by_id["4"].reads_current and not by_id["4"].conditional_by_app
    assert not by_id["5"].reads_current and by_id["5"].answer is None  # forwarded as is
    assert by_id["6"].target is None and by_id["7"].target is None
    assert not by_id["8"].reads_current  # if_seq_no without if_primary_term: the engine says
    assert enrich_plan.worth_rewriting(ops)
    assert not enrich_plan.worth_rewriting(ops[6:8])  # the delete and the other index


def test_plan_bulk_with_passthrough_forwards_what_it_cannot_encode():
    items = bulk({"index": {"_id": "1"}}, {"views": 1}, {"update": {"_id": "2"}}, {"script": {}})
    ops = enrich_plan.plan_bulk(items, "docs", {"docs": (RULE, ENRICHED)}, "passthrough")
    assert [(op.answer, op.doc) for op in ops] == [(None, None), (None, None)]
    assert [op.refusal.kind for op in ops if op.refusal] == ["encode", "script"]


def test_a_bulk_to_an_index_without_the_field_is_kept_for_corrections_only():
    items = bulk({"index": {"_id": "1"}}, {"title": "t"})
    [op] = enrich_plan.plan_bulk(items, "docs", {"docs": (RULE, BM25)}, "reject")
    assert op.target is BM25 and op.doc is None and op.answer is None
    assert enrich_plan.worth_rewriting([op])


def test_url_routing_applies_to_items_without_their_own_and_names_skip_deletes():
    items = bulk({"index": {"routing": "r1"}}, {}, {"index": {"_index": "b"}}, {}, {"delete": {}})
    enrich_plan.with_url_routing(items, "u")
    assert [i.meta.get("routing") for i in items] == ["r1", "u", "u"]
    assert enrich_plan.names_to_resolve(items, "a") == {"a", "b"}
    assert enrich_plan.names_to_resolve(items[2:], "a") == set()


def test_a_single_write_is_a_one_item_operation():
    wp = writes.WritePath("_create", "docs", "9")
    op = enrich_plan.plan_single_write(wp, "r", (RULE, ENRICHED), {"text": "t"}, "reject")
    assert op is not None and op.item.action == "create" and op.item.meta["routing"] == "r"
    assert op.text == "t"
    unreadable = enrich_plan.plan_single_write(wp, None, (RULE, ENRICHED), None, "reject")
    assert unreadable is not None
    assert error_of(unreadable)["error"]["reason"].startswith("document [9]: not a strict JSON")
    for target, on_error in ((ENRICHED, "passthrough"), (BM25, "reject")):
        assert enrich_plan.plan_single_write(wp, None, (RULE, target), None, on_error) is None
    bare = enrich_plan.plan_single_write(wp, None, (RULE, BM25), {"text": "t"}, "reject")
    assert bare is not None and bare.doc is None and bare.answer is None


def test_an_update_request_becomes_a_bulk_item_and_names_what_a_bulk_cannot_carry():
    wp = writes.WritePath("_update", "docs", "1")
    target = "/docs/_update/1?routing=7&if_seq_no=3&retry_on_conflict=x&refresh=true&lang=p"
    request = enrich_plan.update_request(wp, target, b' {"doc": {}}\n')
    assert request.item.meta == {
        "_index": "docs",
        "_id": "1",
        "routing": "7",
        "if_seq_no": 3,
        "retry_on_conflict": "x",
    }
    assert request.item.source_line == b'{"doc": {}}'
    assert request.bulk_target == "/_bulk?refresh=true" and request.unsupported == ("lang",)


# ---------------------------------------------------------------------- partial updates
def update(body: dict[str, Any], **meta: Any) -> Op:
    op = op_for("update", {"_id": "1", **meta}, body)
    op.conditional_by_app = "if_seq_no" in meta
    return op


FOUND = {"found": True, "_seq_no": 5, "_primary_term": 2, "_source": {"title": "a", "n": 1}}


def test_mget_reads_the_concrete_index_with_the_items_routing():
    ops = [update({"doc": {}}), update({"doc": {}}, routing="r")]
    assert enrich_plan.mget_body(ops) == {
        "docs": [
            {"_index": "docs-1", "_id": "1"},
            {"_index": "docs-1", "_id": "1", "routing": "r"},
        ]
    }


def test_a_found_document_is_merged_and_written_conditionally_on_the_version_read():
    op = update({"doc": {"title": "b", "splade": {"x": 1}}}, routing="r")
    enrich_plan.merge_current(
        op, {**FOUND, "_source": {**FOUND["_source"], "splade": {}}}, "reject"
    )
    assert op.send_as == "index" and op.doc == {"title": "b", "n": 1} and op.text == "b"
    assert op.meta == {
        "_index": "docs-1",
        "_id": "1",
        "require_alias": False,
        "routing": "r",
        "if_seq_no": 5,
        "if_primary_term": 2,
    }
    own = update({"doc": {"title": "b"}}, if_seq_no=9, if_primary_term=1)
    enrich_plan.merge_current(own, FOUND, "reject")
    assert (own.meta["if_seq_no"], own.meta["if_primary_term"]) == (9, 1)


def test_a_merge_that_changes_nothing_is_forwarded_for_the_clusters_noop():
    op = update({"doc": {"title": "a"}})
    enrich_plan.merge_current(op, FOUND, "reject")
    assert op.doc is None and op.send_as is None and op.answer is None
    forced = update({"doc": {"title": "a"}, "detect_noop": False})
    enrich_plan.merge_current(forced, FOUND, "reject")
    assert forced.send_as == "index"
    vector_only = update({"doc": {"splade": {"x": 1}}})
    enrich_plan.merge_current(vector_only, FOUND, "reject")
    assert vector_only.send_as == "index" and vector_only.doc == FOUND["_source"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"doc": {"title": "d"}, "upsert": {"text": "u"}}, {"text": "u"}),
        ({"doc": {"title": "d"}, "upsert": {"text": "u"}, "doc_as_upsert": True}, {"title": "d"}),
        ({"doc": {"title": "d"}}, None),  # forwarded: document_missing_exception
    ],
)
def test_a_missing_document_is_created_from_upsert_in_the_engines_order(body, expected):
    op = update(body)
    enrich_plan.merge_current(op, {"found": False}, "reject")
    assert op.doc == expected
    assert op.send_as == ("create" if expected else None)


def test_what_cannot_be_merged_is_answered_with_the_reason():
    failed = update({"doc": {"title": "b"}})
    error = {"type": "routing_missing_exception", "reason": "routing is required"}
    enrich_plan.merge_current(failed, {"error": error}, "reject")
    assert error_of(failed)["error"] == {
        "type": "routing_missing_exception",
        "reason": "reading the current document failed: routing is required",
    }
    no_source = update({"doc": {"title": "b"}})
    enrich_plan.merge_current(no_source, {"found": True, "_seq_no": 1}, "reject")
    assert error_of(no_source)["error"]["type"] == "document_source_missing_exception"
    unreadable = update({"doc": {"title": "b"}})
    enrich_plan.apply_current([unreadable], 403, {"error": "forbidden"}, "reject")
    assert error_of(unreadable)["status"] == 403
    short = update({"doc": {"title": "b"}})
    enrich_plan.apply_current([short], 200, {"docs": []}, "reject")
    assert "failed: the cluster answered 200" in error_of(short)["error"]["reason"]


# ---------------------------------------------------------------------- the bulk sent
def test_round_plan_sends_vectors_answers_errors_and_forwards_the_rest():
    items = bulk({"index": {"_id": "1"}}, {"title": "t"}, {"index": {"_id": "2"}}, {"n": 1})
    items += bulk({"update": {"_id": "3"}}, {"doc": {"title": "u"}})
    ops = [Op(item, RULE, ENRICHED) for item in items]
    enrich_plan.compose(ops[0], {"title": "t"}, "d", "reject")
    enrich_plan.compose(ops[1], {"n": 1}, "d", "reject")
    enrich_plan.merge_current(ops[2], FOUND, "reject")
    ops.append(Op(bulk({"delete": {"_id": "4"}})[0]))
    assert enrich_plan.to_encode(ops, range(4)) == [0, 2]
    plan = enrich_plan.round_plan(ops, range(4), {0: {"t": 1.0}, 2: {"u": 2.0}})
    assert plan.sent == [0, 2, 3] and list(plan.answered) == [1] and plan.renamed == {2: "update"}
    lines = [json.loads(line) for line in plan.lines]
    assert lines[1] == {"title": "t", "splade": {"t": 1.0}}
    assert next(iter(lines[2])) == "index" and lines[3]["splade"] == {"u": 2.0}
    assert lines[4] == {"delete": {"_id": "4"}}


def test_round_items_tell_a_refused_bulk_from_an_unreadable_answer():
    refused = enrich_plan.round_items(413, None, 1)
    assert refused == enrich_plan.RoundFailure("the cluster answered 413", 413, refused=True)
    short = enrich_plan.round_items(200, {"items": []}, 1)
    assert isinstance(short, enrich_plan.RoundFailure) and short.status == 502
    assert not short.refused
    assert enrich_plan.round_items(200, {"items": [{"index": {}}]}, 1) == [{"index": {}}]


def test_items_are_placed_renamed_and_counted():
    plan = writes.BulkPlan(sent=[0, 2], renamed={2: "update"})
    answered = [{"index": {"status": 201}}, {"index": {"status": 200}}]
    items = enrich_plan.items_by_position(plan, answered)
    assert items == {0: {"index": {"status": 201}}, 2: {"update": {"status": 200}}}
    ops = [op_for("index", {}, {}) for _ in range(3)]
    ops[0].doc = {"title": "t"}
    assert enrich_plan.enriched_count(ops, items) == 1


# ---------------------------------------------------------------------- version conflicts
def conflicted(tries: int = 0, **meta: Any) -> Op:
    op = update({"doc": {"title": "b"}}, **meta)
    op.send_as, op.tries = "index", tries
    return op


def test_only_the_proxys_own_conditional_writes_are_retried_within_their_limit():
    ops = [
        conflicted(),
        conflicted(tries=3),
        conflicted(tries=3, retry_on_conflict=5),
        conflicted(if_seq_no=1, if_primary_term=1),
        op_for("index", {}, {}),
    ]
    items = {p: {"index": {"status": 409}} for p in range(5)}
    items[0] = {"update": {"status": 409}}
    assert enrich_plan.conflicts_to_retry(ops, range(5), items, update_retries=3) == [0, 2]
    items[0] = {"update": {"status": 200}}
    assert enrich_plan.conflicts_to_retry(ops, [0], items, update_retries=3) == []
    enrich_plan.reset_for_retry(ops, [2])
    assert ops[2].tries == 4 and (ops[2].send_as, ops[2].doc, ops[2].text) == (None,) * 3


# ---------------------------------------------------------------------- corrections
def test_a_write_that_reached_another_index_is_written_again_there():
    items = bulk({"index": {"_id": "1", "routing": "r"}}, {"title": "t"})
    items += bulk({"index": {"_id": "2"}}, {"title": "t"}, {"delete": {"_id": "3"}})
    ops = [Op(items[0], RULE, BM25), Op(items[1], RULE, BM25), Op(items[2], RULE, BM25)]
    answered = {"_index": "docs-1", "_id": "1", "_seq_no": 4, "_primary_term": 1, "status": 201}
    results = {0: {"index": answered}, 1: {"index": {"status": 400}}, 2: {"delete": {}}}
    [stale] = enrich_plan.stale_writes(ops, results)
    assert stale == Written(ops[0], answered, {"title": "t"})
    assert enrich_plan.moved_to(stale) == "docs-1"
    assert enrich_plan.moved_to(Written(ops[0], {**answered, "_index": "docs-0"}, {})) is None
    fixed = enrich_plan.plan_correction(stale, ENRICHED, "reject")
    assert fixed is not None and fixed.enriched
    assert fixed.meta == {
        "_index": "docs-1",
        "_id": "1",
        "if_seq_no": 4,
        "if_primary_term": 1,
        "routing": "r",
    }
    assert enrich_plan.plan_correction(stale, BM25, "reject") is None
    unversioned = Written(ops[0], {"_index": "docs-1"}, {"title": "t"})
    assert enrich_plan.plan_correction(unversioned, ENRICHED, "reject") is None
    [header, source] = enrich_plan.correction_lines([fixed], [{"t": 1.0}])
    assert json.loads(header) == {"index": fixed.meta}
    assert json.loads(source) == {"title": "t", "splade": {"t": 1.0}}
    assert enrich_plan.correction_path("/docs/_bulk?refresh=wait_for&lang=x") == (
        "/_bulk?refresh=wait_for"
    )
    assert enrich_plan.succeeded({"items": [{"index": {"status": 201}}, {"index": {}}]}) == 1


# ---------------------------------------------------------------------- the executor
class FakeFacts:
    async def write_target(self, name: str, field: str, authorization: str | None = None):
        return ENRICHED if name.startswith("docs") else BM25

    def forget_target(self, name: str, field: str) -> None:
        pass


class FakeDocuments:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def encode(self, texts: list[str]):
        self.texts += texts
        return [(np.array([i % 3]), np.array([1.0])) for i, _ in enumerate(texts)]


class FakeCluster:
    """Answers ``_mget`` with version ``seq`` of one document and the first ``conflicts``
    conditional writes with 409 (a concurrent writer won), the rest with 200."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.requests: list[tuple[str, Any]] = []
        self.seq = 0

    async def request(self, method: str, target: str, headers: Any, body: bytes):
        path = target.partition("?")[0]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        self.requests.append((path, lines))
        if path == "/_mget":
            self.seq += 1
            source = {"title": "old", "n": self.seq}
            doc = {"found": True, "_seq_no": self.seq, "_primary_term": 1, "_source": source}
            return UpstreamResponse(200, [], json.dumps({"docs": [doc]}).encode())
        status = 409 if self.conflicts else 200
        self.conflicts -= 1
        item = {"index": {"_index": "docs-1", "_id": "1", "status": status}}
        return UpstreamResponse(200, [], json.dumps({"took": 2, "items": [item]}).encode())


def run_update(conflicts: int, update_retries: int = 3) -> tuple[Any, FakeCluster, list[float]]:
    cluster = FakeCluster(conflicts)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    enricher = Enricher(
        EnrichConfig(rules=(RULE,), update_retries=update_retries),
        facts=FakeFacts(),  # type: ignore[arg-type]
        upstream=cluster,  # type: ignore[arg-type]
        documents=FakeDocuments(),  # type: ignore[arg-type]
        vocab=["a", "b", "c"],
        metrics=Metrics(),
        sleep=sleep,
    )
    wp = writes.WritePath("_update", "docs", "1")
    body = json.dumps({"doc": {"title": "new"}}).encode()
    response = asyncio.run(enricher.update_document(wp, "/docs/_update/1", [], body, None))
    return response, cluster, waits


def test_an_update_that_loses_a_conflict_is_read_and_written_again_after_a_backoff():
    response, cluster, waits = run_update(conflicts=2)
    assert response.status == 200 and response.json()["_id"] == "1"
    paths = [path for path, _ in cluster.requests]
    assert paths == ["/_mget", "/_bulk", "/_mget", "/_bulk", "/_mget", "/_bulk"]
    last_write = cluster.requests[-1][1]
    assert last_write[0]["index"]["if_seq_no"] == 3  # the version read last
    assert last_write[1]["n"] == 3 and last_write[1]["title"] == "new"
    # The policy's backoff: 10 ms doubled per retry plus up to 10 ms of jitter.
    assert 0.01 <= waits[0] <= 0.02 and 0.02 <= waits[1] <= 0.03


def test_conflicts_past_the_retries_are_answered_409():
    response, cluster, waits = run_update(conflicts=5, update_retries=1)
    assert response.status == 409 and len(waits) == 1
    assert [path for path, _ in cluster.requests].count("/_bulk") == 2
