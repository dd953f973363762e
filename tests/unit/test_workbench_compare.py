"""The workbench's pure parts: configuration specs, rank changes, wins/ties/losses, the
measures against ``evaluate``'s, and columns whose contributions add up to the score."""

from __future__ import annotations

import math

import pytest

from splade_es.engines import dialect_for
from splade_es.evaluate import score_run
from splade_es.exceptions import ConfigurationError, EmptyQueryError
from splade_es.query import QueryBuilder, QueryPruning
from splade_es.sparse import stored_precision
from splade_es.workbench.columns import column_of, plan_column, title_of, vectors_request
from splade_es.workbench.compare import (
    QueryComparison,
    change_text,
    query_measures,
    rank_changes,
    records_against,
    summarize,
)
from splade_es.workbench.configurations import parse_configuration, parse_configurations


# ---------------------------------------------------------------- configurations
@pytest.mark.parametrize(
    ("spec", "kind", "method", "weight"),
    [
        ("bm25", "bm25", "sum", 0.5),
        ("splade", "splade", "sum", 0.5),
        ("hybrid", "hybrid", "sum", 0.5),
        ("hybrid:rrf", "hybrid", "rrf", 0.5),
        ("hybrid:linear:0.3", "hybrid", "linear", 0.3),
        ("index=docs-v2", "splade", "sum", 0.5),
    ],
)
def test_kinds_methods_and_weights(spec, kind, method, weight):
    c = parse_configuration(spec)
    assert (c.kind, c.method, c.bm25_weight) == (kind, method, weight)
    assert c.label == spec
    hybrid = c.hybrid()
    assert (hybrid is not None) == (kind == "hybrid")
    if hybrid is not None:
        assert (hybrid.method, hybrid.bm25_weight) == (method, weight)


def test_options():
    c = parse_configuration(
        "splade, index=docs-new ,model=/m/new,field=emb,top_k=5,min_weight=0.2,mass=0.9,name=new"
    )
    assert (c.index, c.model, c.sparse_field, c.label) == ("docs-new", "/m/new", "emb", "new")
    assert c.pruning == QueryPruning(top_k=5, min_weight=0.2, mass=0.9)
    assert c.index_or("docs") == "docs-new" and parse_configuration("bm25").index_or("d") == "d"
    hybrid = parse_configuration("hybrid:rrf,text_fields=title+body,fusion=client")
    assert hybrid.text_fields == ("title", "body") and hybrid.fusion == "client"
    assert hybrid.hybrid().text_fields == ("title", "body")
    assert not parse_configuration("bm25").encodes and parse_configuration("hybrid").encodes


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "empty"),
        ("dense", "must start with one of"),
        ("bm25:rrf", "takes no ':' arguments"),
        ("hybrid:rrf:0.3:1", "hybrid[:METHOD[:WEIGHT]]"),
        ("hybrid:max", "method is one of"),
        ("hybrid:linear:1.5", "BM25 weight is in [0, 1]"),
        ("hybrid:linear:x", "weight 'x' is not a number"),
        ("splade,index", "is not KEY=VALUE"),
        ("splade,colour=red", "'colour' is not an option"),
        ("splade,index=a,index=b", "'index' is given twice"),
        ("splade,top_k=2.5", "not a whole number"),
        ("splade,top_k=0", "top_k must be >= 1"),
        ("splade,mass=2", "mass must be in (0, 1]"),
        ("splade,fusion=client", "fusion applies to hybrids"),
        ("hybrid,fusion=magic", "fusion is one of"),
        ("hybrid,text_fields=+", "FIELD+FIELD"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, why):
    with pytest.raises(ConfigurationError) as caught:
        parse_configuration(spec)
    assert why in str(caught.value)
    assert caught.value.option == "config"


def test_two_to_four_distinct_configurations():
    assert len(parse_configurations(["bm25", "splade", "hybrid", "hybrid:rrf"])) == 4
    for specs in (["bm25"], ["bm25", "splade", "hybrid", "hybrid:rrf", "hybrid:linear"]):
        with pytest.raises(ConfigurationError, match="compare 2 to 4"):
            parse_configurations(specs)
    with pytest.raises(ConfigurationError, match="given twice"):
        parse_configurations(["splade", "splade"])
    assert len(parse_configurations(["splade", "splade,name=again"])) == 2


# ---------------------------------------------------------------- rank changes, records
def test_rank_changes():
    assert rank_changes(["a", "b", "c"], ["c", "a", "x"]) == [2, -1, None]
    assert rank_changes([], ["a"]) == [None]
    assert rank_changes(["a", "b"], ["a", "b"]) == [0, 0]
    assert [change_text(c) for c in (2, -1, 0, None)] == ["+2", "-1", "=", "new"]


def test_records_count_wins_ties_and_losses():
    per_query = [
        {"base": {"ndcg@10": 0.5, "mrr@10": 1.0, "recall@100": 1.0},
         "new": {"ndcg@10": 0.7, "mrr@10": 1.0, "recall@100": 0.5}},
        {"base": {"ndcg@10": 0.5, "mrr@10": 0.5, "recall@100": 1.0},
         "new": {"ndcg@10": 0.5 + 1e-12, "mrr@10": 1.0, "recall@100": 0.5}},
        {"base": {"ndcg@10": 0.9, "mrr@10": 1.0, "recall@100": 1.0},
         "new": {"ndcg@10": 0.1, "mrr@10": 0.5, "recall@100": 1.0}},
    ]  # fmt: skip
    records = records_against(per_query, "base", "new")
    assert records["ndcg@10"].to_json() == {"wins": 1, "ties": 1, "losses": 1}
    assert records["mrr@10"].to_json() == {"wins": 1, "ties": 1, "losses": 1}
    assert records["recall@100"].to_json() == {"wins": 0, "ties": 1, "losses": 2}


def test_per_query_measures_average_to_evaluates():
    qrels = {"q1": {"d1": 1, "d9": 2}, "q2": {"d3": 1}, "q3": {"d4": 1}}
    run = {"q1": {"d2": 3.0, "d1": 2.0, "d9": 1.0}, "q2": {"d5": 1.0}, "q3": {}}
    per_query = {qid: query_measures(run[qid], qrels[qid]) for qid in qrels}
    assert per_query["q2"]["ndcg@10"] == 0.0 and per_query["q3"]["recall@100"] == 0.0
    assert per_query["q1"]["mrr@10"] == pytest.approx(0.5)
    expected = score_run(run, qrels)
    for name, value in expected.items():
        assert sum(q[name] for q in per_query.values()) / 3 == pytest.approx(value)
    assert query_measures({"d1": 1.0}, None) == {}


# ---------------------------------------------------------------- columns
BUILDER = QueryBuilder.for_engine("opensearch", version="2.19.0", field="splade")
DIALECT = dialect_for("opensearch", "2.19.0")
QUERY = {"tax": 1.7, "deduction": 0.9, "law": 0.25, "car": 0.05}
DOCS = {
    "d1": {"tax": 1.3333, "law": 0.77, "car": 2.0},
    "d2": {"deduction": 0.5123, "car": 1.1},
    "d3": {"unrelated": 3.0},
}


def engine_score(query, doc):
    """What the engine scores: query weight x stored (9-bit) document weight."""
    common = [k for k in query if k in doc]
    stored = stored_precision([doc[k] for k in common])
    return math.fsum(query[k] * float(s) for k, s in zip(common, stored, strict=True))


def responses(plan, ids):
    hits = [{"_id": i, "_score": engine_score(plan.features, DOCS[i]), "_source": {}} for i in ids]
    found = {"hits": {"hits": sorted(hits, key=lambda h: -h["_score"])}}
    stored = {
        "hits": {"hits": [{"_id": i, "_score": 1.0, "_source": {"splade": DOCS[i]}} for i in ids]}
    }
    return found, stored


def test_contributions_add_up_to_the_score_and_pruned_tokens_add_nothing():
    config = parse_configuration("splade,top_k=2")
    plan = plan_column(config, "docs", "tax law", dialect=DIALECT, builder=BUILDER,
                       vector=QUERY, k=10)  # fmt: skip
    assert set(plan.features) == {"tax", "deduction"} and plan.prune.dropped == 2
    assert (
        plan.request.body
        == BUILDER.search_request(
            QUERY, k=10, text="tax law", pruning=QueryPruning(top_k=2)
        ).request.body
    )
    found, stored = responses(plan, ["d1", "d2"])
    assert vectors_request(plan, ["d1", "d2"]).body["query"] == {"ids": {"values": ["d1", "d2"]}}
    column = column_of(plan, found, stored, shown=10)
    assert column.scores_are_contributions and column.ranking == ["d1", "d2"]
    for hit in column.hits:
        assert hit.explained == pytest.approx(hit.score, rel=1e-12)
        assert {c.token for c in hit.contributions} <= {"tax", "deduction"}
    d1 = column.hits[0]
    assert {c.token for c in d1.pruned} == {"law", "car"}  # held by d1, pruned from the query
    assert [t.kept for t in column.query_tokens] == [True, True, False, False]
    assert [t.token for t in column.query_tokens] == ["tax", "deduction", "law", "car"]


def test_shown_hits_are_cut_but_the_run_keeps_every_hit():
    plan = plan_column(parse_configuration("splade"), "docs", "t", dialect=DIALECT,
                       builder=BUILDER, vector=QUERY, k=10)  # fmt: skip
    found, stored = responses(plan, ["d1", "d2"])
    column = column_of(plan, found, stored, shown=1)
    assert [h.id for h in column.hits] == ["d1"] and list(column.run) == ["d1", "d2"]


def test_bm25_columns_send_the_dialects_lexical_query_and_explain_nothing():
    config = parse_configuration("bm25,text_fields=title")
    plan = plan_column(config, "docs", "tax law", dialect=DIALECT, builder=None, vector=None, k=5)
    assert (
        plan.request.body
        == DIALECT.search_request(DIALECT.lexical_query("tax law", ("title",)), k=5).body
    )
    assert vectors_request(plan, ["d1"]) is None
    hit = {"_id": "d1", "_score": 2.5, "_source": {"title": "<img src=x onerror=alert(1)>"}}
    column = column_of(plan, {"hits": {"hits": [hit]}}, None, shown=10)
    assert column.hits[0].title == "<img src=x onerror=alert(1)>"  # escaped by the page
    assert not column.hits[0].contributions and not column.scores_are_contributions


def test_a_query_pruned_to_nothing_cannot_be_planned():
    config = parse_configuration("splade,min_weight=100")
    with pytest.raises(EmptyQueryError):
        plan_column(config, "d", "t", dialect=DIALECT, builder=BUILDER, vector=QUERY, k=5)


def test_titles_fall_back_to_the_first_line():
    assert title_of({"title": "T", "text": "x"}) == "T"
    assert title_of({"title": " ", "text": "line one\nline two"}) == "line one"
    assert title_of({}) == "" and len(title_of({"title": "x" * 1000})) == 200


def test_summary_means_equal_evaluates_and_skip_unjudged_queries():
    from splade_es.workbench.columns import Column

    configs = parse_configurations(["bm25", "splade"])
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    runs = {
        "q1": ({"d1": 2.0, "d2": 1.0}, {"d2": 2.0, "d1": 1.0}),
        "q2": ({"d3": 1.0}, {"d2": 5.0}),
        "q3": ({"d1": 1.0}, {"d1": 1.0}),  # not judged
    }
    compared = tuple(
        QueryComparison(
            qid, "text",
            tuple(Column(c.label, "docs", c.kind, run=run) for c, run in zip(configs, pair,
                                                                              strict=True)),
            {c.label: query_measures(run, qrels[qid]) for c, run in zip(configs, pair,
                                                                        strict=True)}
            if qid in qrels else {},
        )
        for qid, pair in runs.items()
    )  # fmt: skip
    summary = summarize(configs, compared, qrels)
    assert summary.judged == 2
    for position, label in enumerate(["bm25", "splade"]):
        run = {qid: runs[qid][position] for qid in qrels}
        assert summary.metrics[label] == score_run(run, qrels)
    assert summary.records["splade"]["ndcg@10"].to_json() == {"wins": 1, "ties": 0, "losses": 1}
    assert summary.to_json()["baseline"] == "bm25"


@pytest.mark.parametrize(
    "name",
    [
        "splade_es.workbench.configurations",
        "splade_es.workbench.columns",
        "splade_es.workbench.compare",
        "splade_es.workbench.judgments",
    ],
)
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted and not result.failed


def test_a_client_fused_hybrid_plans_both_searches_and_fuses_them():
    from splade_es.search import FusionChoice, client_fusion
    from splade_es.workbench.columns import fused_response

    config = parse_configuration("hybrid:rrf,top_k=3")
    builder = BUILDER
    plan = plan_column(config, "docs", "tax law", dialect=DIALECT, builder=builder, vector=QUERY,
                       k=5, fusion=FusionChoice("client", "fused here"))  # fmt: skip
    expected = client_fusion(
        builder, QUERY, text="tax law", k=5, hybrid=config.hybrid(), pruning=config.pruning
    )
    assert plan.fused is not None and plan.fused.requests == expected.requests
    assert plan.features == expected.features and len(plan.features) == 3
    lexical = {"hits": {"hits": [{"_id": "d2", "_score": 4.0}, {"_id": "d1", "_score": 1.0}]}}
    sparse = {"hits": {"hits": [{"_id": "d1", "_score": 3.0}]}}
    fused = fused_response(plan, [lexical, sparse])
    assert [h["_id"] for h in fused["hits"]["hits"]] == ["d1", "d2"]  # in both lists: first
    column = column_of(plan, fused, None, shown=5)
    assert column.fusion_note == "fused here" and not column.scores_are_contributions
    engine = plan_column(config, "docs", "tax law", dialect=DIALECT, builder=builder,
                         vector=QUERY, k=5, fusion=FusionChoice("engine", "engine"))  # fmt: skip
    assert engine.fused is None and "search_pipeline" in engine.request.params
