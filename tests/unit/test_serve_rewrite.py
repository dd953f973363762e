"""The proxy's pure rewrite: finding ``splade`` clauses wherever a query may stand, parsing
them (short and long forms, typed errors), and replacing them with exactly the query that
``QueryBuilder`` (hence ``search()``) builds."""

from __future__ import annotations

import copy
import json

import pytest

from splade_es import QueryBuilder, QueryPruning
from splade_es.serve import rewrite
from splade_es.serve.rewrite import RewriteError, find_clauses, parse_clause, replace_clauses
from splade_es.sparse import SparseBatch, Vocabulary

VOCAB = Vocabulary(["[CLS]", "tax", "depreciation", ".", "home", "garden"], special_ids={0})


def vector(weights: dict[str, float]) -> SparseBatch:
    ids = [list(VOCAB).index(t) for t in weights]
    return SparseBatch.from_rows([(ids, list(weights.values()))], vocab=VOCAB)


S = {"splade": {"body": "tax"}}

# Every place a query may stand, as (body, path of the clause).
POSITIONS = [
    ({"query": S}, ("query",)),
    ({"query": {"bool": {"must": S}}}, ("query", "bool", "must")),
    ({"query": {"bool": {"must": [{"match_all": {}}, S]}}}, ("query", "bool", "must", 1)),
    ({"query": {"bool": {"should": [S]}}}, ("query", "bool", "should", 0)),
    ({"query": {"bool": {"filter": [S]}}}, ("query", "bool", "filter", 0)),
    ({"query": {"bool": {"must_not": S}}}, ("query", "bool", "must_not")),
    (
        {"query": {"function_score": {"query": S, "boost_mode": "sum"}}},
        ("query", "function_score", "query"),
    ),
    (
        {"query": {"function_score": {"functions": [{"filter": S, "weight": 2}]}}},
        ("query", "function_score", "functions", 0, "filter"),
    ),
    ({"query": {"constant_score": {"filter": S}}}, ("query", "constant_score", "filter")),
    (
        {"query": {"dis_max": {"queries": [{"term": {"a": 1}}, S]}}},
        ("query", "dis_max", "queries", 1),
    ),
    (
        {"query": {"nested": {"path": "parts", "query": {"bool": {"must": [S]}}}}},
        ("query", "nested", "query", "bool", "must", 0),
    ),
    (
        {"query": {"boosting": {"positive": S, "negative_boost": 0.5}}},
        ("query", "boosting", "positive"),
    ),
    (
        {"query": {"hybrid": {"queries": [{"match": {"t": "x"}}, S]}}},
        ("query", "hybrid", "queries", 1),
    ),
    ({"query": {"script_score": {"query": S, "script": "1"}}}, ("query", "script_score", "query")),
    ({"post_filter": S}, ("post_filter",)),
    (
        {"rescore": {"window_size": 50, "query": {"rescore_query": S}}},
        ("rescore", "query", "rescore_query"),
    ),
    (
        {"rescore": [{"query": {"rescore_query": S}}]},
        ("rescore", 0, "query", "rescore_query"),
    ),
    ({"aggs": {"hits": {"filter": S}}}, ("aggs", "hits", "filter")),
    (
        {"aggregations": {"f": {"filters": {"filters": {"a": S}}}}},
        ("aggregations", "f", "filters", "filters", "a"),
    ),
    (
        {"aggs": {"outer": {"terms": {"field": "x"}, "aggs": {"inner": {"filter": S}}}}},
        ("aggs", "outer", "aggs", "inner", "filter"),
    ),
    ({"knn": {"field": "v", "filter": [S]}}, ("knn", "filter", 0)),
    ({"retriever": {"standard": {"query": S}}}, ("retriever", "standard", "query")),
    (
        {"retriever": {"rrf": {"retrievers": [{"standard": {"query": S}}]}}},
        ("retriever", "rrf", "retrievers", 0, "standard", "query"),
    ),
    (
        {"retriever": {"linear": {"retrievers": [{"retriever": {"standard": {"query": S}}}]}}},
        ("retriever", "linear", "retrievers", 0, "retriever", "standard", "query"),
    ),
]


@pytest.mark.parametrize("body, path", POSITIONS, ids=[".".join(map(str, p)) for _, p in POSITIONS])
def test_clause_is_found_wherever_a_query_may_stand(body, path):
    found = find_clauses(body)
    assert [c.path for c in found.clauses] == [path]
    assert found.clauses[0].clause.field == "body"
    original = copy.deepcopy(body)
    replaced = replace_clauses(body, found, [{"replaced": True}])
    assert body == original, "the input body must not be changed"
    node = replaced
    for step in path:
        node = node[step]
    assert node == {"replaced": True}
    assert "splade" not in json.dumps(replaced)


def test_a_field_called_splade_in_other_queries_is_not_a_clause():
    body = {
        "query": {"bool": {"must": [{"term": {"splade": "x"}}, {"exists": {"field": "splade"}}]}},
        "sort": [{"splade": "desc"}],
        "_source": ["splade"],
    }
    found = find_clauses(body)
    assert found.clauses == []
    assert found.other_nodes == 3  # bool + term + exists


def test_short_and_long_forms():
    short = parse_clause({"body": "tax law"})
    assert (short.field, short.text, short.boost) == ("body", "tax law", 1.0)
    assert short.pruning == QueryPruning()
    long = parse_clause(
        {"body": {"query": "tax", "top_k": 64, "min_weight": 0.1, "mass": 0.9, "boost": 2}}
    )
    assert long.pruning == QueryPruning(top_k=64, min_weight=0.1, mass=0.9)
    assert long.boost == 2.0


@pytest.mark.parametrize(
    "spec, error_type, words",
    [
        ("tax", "parsing_exception", "exactly one field"),
        ({"a": "x", "b": "y"}, "parsing_exception", "['a', 'b']"),
        ({}, "parsing_exception", "exactly one field"),
        ({"body": {"query": "x", "topk": 3}}, "parsing_exception", "[topk]"),
        ({"body": {"text": "x"}}, "parsing_exception", "[text]"),
        ({"body": ""}, "parsing_exception", "non-empty [query]"),
        ({"body": {"query": 3}}, "parsing_exception", "non-empty [query]"),
        ({"body": {"query": "x", "top_k": "5"}}, "parsing_exception", "[top_k] must be an integer"),
        ({"body": {"query": "x", "top_k": 0}}, "illegal_argument_exception", "top_k must be >= 1"),
        ({"body": {"query": "x", "mass": 1.5}}, "illegal_argument_exception", "mass"),
        ({"body": {"query": "x", "boost": -1}}, "illegal_argument_exception", "negative [boost]"),
        ({"body": {"query": "x", "min_weight": "a"}}, "parsing_exception", "[min_weight]"),
    ],
)
def test_malformed_clause_is_a_typed_error_naming_the_problem(spec, error_type, words):
    with pytest.raises(RewriteError) as info:
        find_clauses({"query": {"bool": {"must": [{"splade": spec}]}}})
    assert info.value.error_type == error_type
    assert words in str(info.value)
    assert "query.bool.must[0]" in str(info.value)  # where in the body


@pytest.mark.parametrize(
    "engine, version, field_type, style",
    [
        ("elasticsearch", "8.15.0", "rank_features", None),
        ("elasticsearch", "9.1.0", "sparse_vector", None),
        ("opensearch", "2.19.0", "rank_features", None),
        ("opensearch", "2.19.0", "rank_features", "neural_sparse"),
        ("opensearch", "3.3.0", "sparse_vector", None),
    ],
)
def test_replacement_is_exactly_what_search_would_send(engine, version, field_type, style):
    """The proxy has no query code of its own: a top-level clause becomes the query that
    ``QueryBuilder.search_request`` (used by ``search()``) puts in its body."""
    builder = QueryBuilder.for_engine(
        engine, version=version, field="body", field_type=field_type, style=style, max_clauses=1024
    )
    vec = vector({"tax": 2.5, "depreciation": 1.25, ".": 0.5})
    body = {"query": {"splade": {"body": "tax depreciation."}}, "size": 10}
    found = find_clauses(body)
    query = rewrite.clause_query(builder, found.clauses[0].clause, vec, reserve=found.reserve(1024))
    rewritten = replace_clauses(body, found, [query])
    expected = builder.search_request(vec, k=10).request.body
    assert rewritten["query"] == expected["query"]
    assert rewritten["size"] == 10


def test_pruning_and_boost_of_the_long_form():
    builder = QueryBuilder.for_engine("opensearch", version="2.19.0", field="body")
    vec = vector({"tax": 2.5, "depreciation": 1.25, ".": 0.5, "home": 0.1})
    clause = parse_clause({"body": {"query": "t", "top_k": 2, "boost": 3.0}})
    query = rewrite.clause_query(builder, clause, vec)
    inner = query["bool"]["must"][0]
    assert query["bool"]["boost"] == 3.0
    assert inner == builder.sparse_query(vec, pruning=QueryPruning(top_k=2))
    assert [c["rank_feature"]["field"] for c in inner["bool"]["should"]] == [
        "body.tax",
        "body.depreciation",
    ]
    min_weight = parse_clause({"body": {"query": "t", "min_weight": 1.0}})
    kept = rewrite.clause_query(builder, min_weight, vec)["bool"]["should"]
    assert len(kept) == 2  # 2.5 and 1.25 are >= 1.0


def test_several_clauses_share_the_clause_limit():
    builder = QueryBuilder.for_engine("opensearch", version="2.19.0", field="body", max_clauses=5)
    vec = vector({"tax": 2.5, "depreciation": 1.25, ".": 0.5, "home": 0.3, "garden": 0.2})
    body = {"query": {"bool": {"should": [S, S, {"match": {"title": "x"}}]}}}
    found = find_clauses(body)
    assert found.other_nodes == 2  # bool + match
    reserve = found.reserve(builder.max_clauses)
    queries = [rewrite.clause_query(builder, c.clause, vec, reserve=reserve) for c in found.clauses]
    sizes = [len(q["bool"]["should"]) for q in queries]
    assert sizes == [1, 1]  # (5 - 2) // 2 each: all together within the limit
    assert queries[0]["bool"]["should"][0]["rank_feature"]["field"] == "body.tax"


def test_msearch_lines_round_trip_byte_for_byte():
    raw = b'{"index":"a"}\n{"query":{"match_all":{}}}\n\n{"query" : {"splade":{"f":"x"}}}\n'
    items = rewrite.split_msearch(raw)
    assert [i.header for i in items] == [{"index": "a"}, {}]
    lines = [line for item in items for line in (item.header_line, item.body_line)]
    assert rewrite.join_msearch(lines) == raw
    assert rewrite.msearch_index(items[0].header, "default") == "a"
    assert rewrite.msearch_index(items[1].header, "default") == "default"
    assert rewrite.msearch_index({"index": ["a", "b"]}, None) == "a,b"
    with pytest.raises(RewriteError, match="in pairs"):
        rewrite.split_msearch(b'{"index":"a"}\n{"query":{}}\n{}\n')


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/docs/_search", ("_search", "docs")),
        ("/_search", ("_search", None)),
        ("/a,b*/_msearch", ("_msearch", "a,b*")),
        ("/_all/_search/", ("_search", "_all")),
        ("/docs/_doc/1", None),
        ("/docs/_search/template", None),
        ("/_cluster/_search", None),
        ("/_search/scroll", None),
    ],
)
def test_search_paths(path, expected):
    got = rewrite.search_path(path)
    assert (got and (got.api, got.index)) == expected


def test_invalid_json_is_a_parse_error():
    with pytest.raises(RewriteError) as info:
        rewrite.parse_json_body(b'{"query": {"splade": ')
    assert info.value.error_type == "parse_exception"
