"""Fuzz tests (hypothesis) of the proxy's pure request parsers: ``serve/rewrite.py`` (search
bodies, the ``_msearch`` splitter, clause parsing and replacement), ``serve/writes.py`` (the
bulk NDJSON splitter, documents, write paths, partial updates) and the body helpers of
``serve/app.py`` and ``serve/service.py``. Each raises only its documented error types, and a
body the rewrite accepts changes only at its ``splade`` clauses. Bounded for CI by
``tests/fuzz.py`` (``SPLADE_ES_FUZZ_EXAMPLES`` for longer runs)."""

from __future__ import annotations

import copy
import json
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splade_es.serve import rewrite, writes
from splade_es.serve.app import decompress
from splade_es.serve.service import HttpError, field_of, texts_of
from tests.fuzz import FUZZ

# Keys of the query grammar (so the walk goes deep), the clause's own keys, and others.
KEYS = st.sampled_from(
    [
        "query", "post_filter", "bool", "must", "should", "filter", "must_not", "splade",
        "function_score", "functions", "constant_score", "dis_max", "queries", "nested",
        "boosting", "positive", "negative", "script_score", "hybrid", "rescore",
        "rescore_query", "aggs", "aggregations", "filters", "adjacency_matrix", "knn",
        "retriever", "retrievers", "standard", "rrf", "linear", "top_k", "min_weight",
        "mass", "boost", "body", "title", "size", "", "é", "\u0000",
    ]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["tax law", " ", ""]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(KEYS, st.text()), inner, max_size=4)
    ),
    max_leaves=40,
)
CLAUSE = st.fixed_dictionaries(
    {"splade": st.dictionaries(KEYS, st.one_of(st.text(min_size=1), JSON), min_size=1, max_size=2)}
)

VALID_CLAUSE = st.builds(
    lambda field, text, long: {"splade": {field: {"query": text, "top_k": 3} if long else text}},
    KEYS,
    st.sampled_from(["tax", "law code", "é 東京"]),
    st.booleans(),
)


def query_tree() -> st.SearchStrategy[Any]:
    """Search bodies shaped like the grammar (clauses where queries stand) and around it."""

    def compound(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        some = st.one_of(inner, st.lists(inner, max_size=3))
        wrapper = st.sampled_from(["constant_score", "nested", "function_score", "script_score"])
        return st.one_of(
            st.fixed_dictionaries({"bool": st.dictionaries(KEYS, some, max_size=3)}),
            st.builds(lambda kind, q: {kind: {"filter": q, "query": q}}, wrapper, inner),
            st.builds(lambda qs: {"dis_max": {"queries": qs}}, st.lists(inner, max_size=3)),
            st.dictionaries(KEYS, inner, max_size=3),
            st.lists(inner, max_size=3),
        )

    node = st.recursive(st.one_of(VALID_CLAUSE, CLAUSE, JSON), compound, max_leaves=25)
    return st.one_of(
        st.fixed_dictionaries({"query": node}, optional={"post_filter": node, "size": SCALARS}),
        st.dictionaries(KEYS, node, max_size=4),
    )


def mutated(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` as sent, or with a few bytes cut, inserted or changed."""
    for _ in range(data.draw(st.integers(0, 3))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["cut", "insert", "flip"]))
        byte = data.draw(st.binary(min_size=1, max_size=2))
        if kind == "cut":
            raw = raw[:at] + raw[at + 1 :]
        elif kind == "insert":
            raw = raw[:at] + byte + raw[at:]
        else:
            raw = raw[:at] + byte + raw[at + 1 :]
    return raw


def at(node: Any, path: rewrite.Path) -> Any:
    for step in path:
        node = node[step]
    return node


def accepted_rewrite_changes_only_clauses(raw: bytes) -> None:
    """The rewrite's pure steps on ``raw``: only ``RewriteError``; when accepted, the body
    with every clause replaced differs from the parsed body at the clauses alone."""
    try:
        parsed = rewrite.parse_json_body(raw)
        found = rewrite.find_clauses(parsed)
    except rewrite.RewriteError:
        return
    original = copy.deepcopy(parsed)
    markers = [{"replaced": i} for i in range(len(found.clauses))]
    replaced = rewrite.replace_clauses(parsed, found, markers)
    assert parsed == original  # the parsed body itself is not changed
    for i, located in enumerate(found.clauses):
        clause = at(parsed, located.path)
        assert isinstance(clause, dict) and list(clause) == ["splade"]
        assert at(replaced, located.path) == markers[i]
    # Putting the clauses back gives the body as parsed: nothing else was touched.
    restored = rewrite.replace_clauses(replaced, found, [at(parsed, c.path) for c in found.clauses])
    assert restored == parsed
    json.loads(rewrite.dumps(replaced))  # and what is sent is JSON


@FUZZ
@given(query_tree(), st.data())
def test_search_bodies_rewrite_only_at_their_clauses(body, data):
    raw = json.dumps(body, ensure_ascii=data.draw(st.booleans())).encode()
    accepted_rewrite_changes_only_clauses(mutated(raw, data))


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_a_search_body(raw):
    accepted_rewrite_changes_only_clauses(raw)


@FUZZ
@given(st.integers(1, 5000), st.sampled_from([b"[", b'{"a":', b'{"query":{"bool":{"must":']))
def test_deep_nesting_is_a_parsing_exception_never_a_crash(depth, opener):
    closer = {b"[": b"]", b'{"a":': b"}", b'{"query":{"bool":{"must":': b"}}}"}[opener]
    raw = opener * depth + b'{"splade": {"f": "tax"}}' + closer * depth
    accepted_rewrite_changes_only_clauses(raw)


def msearch_lines() -> st.SearchStrategy[list[bytes]]:
    line = st.one_of(
        query_tree().map(lambda b: json.dumps(b).encode()),
        st.just(b"{}"),
        st.just(b""),
        st.just(b'{"index": ["a", "b"]}'),
        st.binary(max_size=30).filter(lambda b: b"\n" not in b),
    )
    return st.lists(line, max_size=8)


@FUZZ
@given(msearch_lines(), st.booleans())
def test_msearch_bodies_split_into_their_lines_or_are_refused(lines, final_newline):
    raw = b"\n".join(lines) + (b"\n" if final_newline else b"")
    try:
        items = rewrite.split_msearch(raw)
    except rewrite.RewriteError:
        return
    for item in items:
        rewrite.msearch_index(item.header, "default")
        accepted_rewrite_changes_only_clauses(item.body_line)
    rejoined = rewrite.join_msearch([x for i in items for x in (i.header_line, i.body_line)])
    assert rejoined.rstrip(b"\n") == raw.rstrip(b"\n") or not items


@FUZZ
@given(st.text(max_size=60), st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
def test_paths_are_classified_without_error(path, method):
    rewrite.search_path(path)
    rewrite.search_path("/" + path)
    writes.write_path(method, path)
    writes.write_path(method, "/" + path)


def bulk_lines() -> st.SearchStrategy[list[bytes]]:
    line = st.one_of(
        st.builds(
            lambda a, meta: json.dumps({a: meta}).encode(),
            st.sampled_from([*writes.WRITE_ACTIONS, "upsert", ""]),
            st.one_of(st.dictionaries(st.sampled_from(["_index", "_id", "if_seq_no"]), JSON), JSON),
        ),
        JSON.map(lambda d: json.dumps(d).encode()),
        st.just(b""),
        st.just(b"{/**/}"),
        st.just(b'{"a": 1e400}'),
        st.just(b'{"a": NaN}'),
        st.binary(max_size=30).filter(lambda b: b"\n" not in b),
    )  # fmt: skip
    return st.lists(line, max_size=8)


@FUZZ
@given(bulk_lines())
def test_bulk_bodies_split_into_items_or_are_refused(lines):
    raw = b"\n".join(lines) + b"\n"
    try:
        items = writes.split_bulk(raw)
    except writes.WriteBodyError:
        return
    for item in items:
        assert item.action in writes.WRITE_ACTIONS
        assert item.doc_id is None or isinstance(item.index("default") or "", str)
        source = item.source()  # strict JSON or None, never an exception
        if isinstance(source, dict) and isinstance(item.meta, dict):
            writes.touches(source, ("title", "meta.text"))
            writes.merge_partial(item.meta, source)


@FUZZ
@given(st.binary(max_size=300))
def test_documents_are_strict_json_or_none(raw):
    document = writes.parse_document(raw)
    if document is not None:
        json.dumps(document, allow_nan=False)


def test_a_deeply_nested_bulk_line_is_refused():
    """json.loads raises RecursionError (not a ValueError) past Python's recursion limit: a
    document or action line nested 3,000 deep was a 500."""
    deep = b"[" * 3000 + b"]" * 3000
    assert writes.parse_document(deep) is None  # refused like any unreadable document
    with pytest.raises(writes.WriteBodyError, match="bulk item 1: the action line is not JSON"):
        writes.split_bulk(deep + b"\n")


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["gzip", "deflate", "br", "x-gzip", " GZIP "]))
def test_compressed_bodies_inflate_or_are_refused(raw, encoding):
    candidates = [raw, zlib.compress(raw)]
    gzip = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    candidates.append(gzip.compress(raw) + gzip.flush())
    for body in candidates:
        try:
            out = decompress(body, encoding, limit=100)
        except HttpError as exc:
            assert exc.status in (400, 413, 415)
            continue
        assert len(out) <= 100


@FUZZ
@given(JSON)
def test_endpoint_fields_are_read_or_refused_with_a_400(spec):
    spec = spec if isinstance(spec, dict) else {"texts": spec, "inputs": spec}
    for name, kind in [("texts", list), ("kind", str), ("k", int), ("mass", float)]:
        try:
            field_of(spec, name, kind, None)
        except HttpError as exc:
            assert exc.status == 400
    try:
        texts = texts_of(spec.get("texts"))
    except HttpError as exc:
        assert exc.status == 400
    else:
        assert all(isinstance(t, str) and t.strip() for t in texts)
