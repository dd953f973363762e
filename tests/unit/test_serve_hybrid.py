"""The proxy's ``splade`` clause with ``hybrid`` (``rewrite.hybrid_search``, ``clause_query``):
parsed into a ``Hybrid`` and a fusion, accepted as the whole query of a ``_search`` only."""

from __future__ import annotations

import pytest

from splade_es import QueryBuilder
from splade_es.serve.hybrid import _query_string, _with_params
from splade_es.serve.rewrite import (
    RewriteError,
    clause_query,
    find_clauses,
    hybrid_search,
    parse_clause,
)


def clause(**hybrid):
    return {"splade": {"body": {"query": "tax code", "top_k": 5, "hybrid": hybrid}}}


def test_a_hybrid_clause_is_parsed_with_its_fusion():
    body = {
        "query": clause(method="linear", bm25_weight=0.3, text_fields=["title"], fusion="client"),
        "size": 7,
        "_source": ["title"],
    }
    plan = hybrid_search(body, find_clauses(body))
    assert plan is not None and plan.k == 7 and plan.source == ["title"]
    hybrid = plan.clause.hybrid
    assert hybrid is not None
    assert (hybrid.method, hybrid.bm25_weight, hybrid.text_fields) == ("linear", 0.3, ("title",))
    assert plan.clause.fusion == "client" and plan.clause.pruning.top_k == 5
    l2 = {"query": clause(method="linear", normalizer="l2")}
    l2_plan = hybrid_search(l2, find_clauses(l2))
    assert l2_plan is not None and l2_plan.clause.hybrid is not None
    assert l2_plan.clause.hybrid.normalizer == "l2"
    default = {"query": clause(method="rrf")}
    found = hybrid_search(default, find_clauses(default))
    assert found is not None and found.clause.fusion == "auto" and found.k == 10
    plain = {"query": {"splade": {"body": "tax"}}}
    assert hybrid_search(plain, find_clauses(plain)) is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"query": {"bool": {"must": [clause(method="rrf")]}}}, "whole [query]"),
        ({"query": clause(method="rrf"), "aggs": {"a": {"terms": {"field": "x"}}}}, "[aggs]"),
        ({"query": clause(method="rrf"), "from": 10}, "[from] must be 0"),
        ({"query": clause(method="rrf"), "size": 0}, "[size]"),
    ],
)
def test_a_hybrid_clause_elsewhere_is_refused(body, words):
    with pytest.raises(RewriteError) as raised:
        hybrid_search(body, find_clauses(body))
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("hybrid", "words"),
    [
        ({"method": "max"}, "[hybrid.method]"),
        ({"fusion": "both"}, "[hybrid.fusion]"),
        ({"bm25_weight": 2.0}, "bm25_weight"),
        ({"text_fields": "title"}, "[hybrid.text_fields]"),
        ({"rank_constant": "60"}, "[hybrid.rank_constant]"),
        ({"weights": [1, 2]}, "does not support [weights]"),
        ({"method": "linear", "normalizer": "z_score"}, "[hybrid.normalizer]"),
    ],
)
def test_malformed_hybrid_objects_are_typed_errors(hybrid, words):
    with pytest.raises(RewriteError) as raised:
        parse_clause({"body": {"query": "tax", "hybrid": hybrid}})
    assert words in str(raised.value)


def test_a_hybrid_clause_is_never_rewritten_in_place():
    """In an _msearch item, or nested: refused, never sent as a plain SPLADE query."""
    parsed = parse_clause({"body": {"query": "tax", "hybrid": {"method": "rrf"}}})
    builder = QueryBuilder.for_engine("opensearch", version="2.19.6", field="body")
    with pytest.raises(RewriteError, match="whole \\[query\\] of a _search only"):
        clause_query(builder, parsed, {"tax": 1.0})


def test_url_parameters():
    assert (
        _with_params("/d/_search", {"search_pipeline": "p 1"}) == "/d/_search?search_pipeline=p%201"
    )
    assert _with_params("/d/_search?timeout=1s", {"a": "b"}) == "/d/_search?timeout=1s&a=b"
    assert _with_params("/d/_search", {}) == "/d/_search"
    assert _query_string("/d/_search?timeout=1s&pretty", keep=("timeout",)) == "?timeout=1s"
    assert _query_string("/d/_search", keep=("timeout",)) == ""
