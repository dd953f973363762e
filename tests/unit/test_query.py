"""QueryBuilder and query pruning (no cluster)."""

from __future__ import annotations

import pytest

from splade_es import QueryBuilder, QueryPruning
from splade_es.engines import Hybrid
from splade_es.exceptions import ConfigurationError
from splade_es.query import prune_features
from splade_es.search import contributions
from splade_es.sparse import SparseBatch, Vocabulary, stored_precision

FEATURES = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}  # total 10


def test_pruning_by_top_k_min_weight_and_mass():
    assert list(prune_features(FEATURES, QueryPruning(top_k=2))[0]) == ["a", "b"]
    assert list(prune_features(FEATURES, QueryPruning(min_weight=2.0))[0]) == ["a", "b", "c"]
    kept, report = prune_features(FEATURES, QueryPruning(mass=0.7))
    assert list(kept) == ["a", "b"]  # 7 of 10
    assert report.kept_weight == pytest.approx(0.7)
    assert report.dropped == 2 and report.pruned and not report.clause_limited
    kept, report = prune_features(FEATURES, QueryPruning(mass=0.71))
    assert list(kept) == ["a", "b", "c"]
    kept, report = prune_features(FEATURES, QueryPruning())
    assert kept == FEATURES and not report.pruned and report.kept_weight == 1.0


def test_clause_limit_prunes_and_reports_instead_of_failing():
    many = {f"t{i}": float(i + 1) for i in range(3000)}
    kept, report = prune_features(many, QueryPruning(), max_clauses=1024)
    assert len(kept) == 1024
    assert min(kept.values()) == 3000 - 1023  # the heaviest were kept
    assert report.clause_limited and report.dropped == 3000 - 1024


def test_pruning_options_are_validated():
    for bad in (dict(top_k=0), dict(min_weight=-1.0), dict(mass=0.0), dict(mass=1.5)):
        with pytest.raises(ConfigurationError):
            QueryPruning(**bad)


def _query_batch() -> SparseBatch:
    vocab = Vocabulary(["[CLS]", "tax", ".", "[SEP]"], special_ids={0, 3})
    return SparseBatch.from_rows([([0, 1, 2, 3], [5.0, 2.0, 0.5, 4.0])], vocab=vocab)


def test_builder_drops_special_tokens_and_escapes_keys():
    builder = QueryBuilder.for_engine("opensearch", version="2.19.0", field="sp")
    query = builder.sparse_query(_query_batch())
    fields = {
        c["rank_feature"]["field"]: c["rank_feature"]["boost"] for c in query["bool"]["should"]
    }
    assert fields == {"sp.tax": 2.0, "sp.%2E": 0.5}
    from_dict = builder.sparse_query({"tax": 2.0, ".": 0.5, "zero": 0.0})
    assert from_dict == query


def test_builder_for_integer_keys_needs_the_vocabulary():
    builder = QueryBuilder.for_engine(
        "opensearch", version="3.3.0", field="sp", field_type="sparse_vector"
    )
    assert builder.style == "neural_sparse"
    query = builder.sparse_query(_query_batch())
    assert query["neural_sparse"]["sp"]["query_tokens"] == {"1": 2.0, "2": 0.5}
    with pytest.raises(ConfigurationError, match="token ids"):
        builder.sparse_query({"tax": 1.0})


def test_search_request_reserves_clauses_for_the_bm25_side_of_a_hybrid():
    builder = QueryBuilder.for_engine("elasticsearch", version="8.15.0", max_clauses=10)
    vector = {f"t{i}": float(i + 1) for i in range(20)}
    plain = builder.search_request(vector, k=3)
    assert plain.prune.kept == 10 and plain.prune.clause_limited
    hybrid = builder.search_request(
        vector, k=3, text="two words", hybrid=Hybrid(text_fields=("title", "text"))
    )
    assert hybrid.prune.kept == 10 - (2 * 2 + 1)
    with pytest.raises(ConfigurationError, match="text"):
        builder.search_request(vector, k=3, hybrid=Hybrid())


def test_contributions_add_up_to_the_stored_precision_dot_product():
    query = {"a": 1.3, "b": 0.7, "c": 2.0}
    document = {"a": 0.7, "c": 1.1111, "z": 5.0}
    parts = contributions(query, document)
    assert [p.key for p in parts] == ["c", "a"]  # heaviest first, only shared keys
    expected = 1.3 * float(stored_precision([0.7])[0]) + 2.0 * float(stored_precision([1.1111])[0])
    assert sum(p.contribution for p in parts) == pytest.approx(expected, rel=1e-12)
    assert all(abs(p.doc_weight - document[p.key]) <= document[p.key] * 2**-8 for p in parts)


def test_stored_precision_truncates_to_nine_significant_bits():
    import numpy as np

    values = np.random.default_rng(0).uniform(1e-3, 50, 10000).astype(np.float32)
    stored = stored_precision(values)
    rel = (values - stored) / values
    assert (rel >= 0).all() and (rel < 2**-8).all()
    assert stored_precision([0.7]).tolist() == [0.69921875]


# ---------------------------------------------------------------------- empty queries
@pytest.mark.parametrize("engine", ["elasticsearch", "opensearch"])
def test_a_query_pruned_to_nothing_is_an_error_not_a_match_all(engine):
    from splade_es.exceptions import EmptyQueryError

    builder = QueryBuilder.for_engine(engine, pruning=QueryPruning(min_weight=100.0))
    for build in (
        lambda: builder.sparse_query(FEATURES),
        lambda: builder.search_request(FEATURES, k=10),
    ):
        with pytest.raises(EmptyQueryError) as caught:
            build()
        message = str(caught.value)
        assert "minimum weight 100" in message and "all 4 query tokens" in message
        assert "min_weight" not in message and "empty=" not in message  # no Python names
    with pytest.raises(EmptyQueryError, match="no tokens"):
        QueryBuilder.for_engine(engine).sparse_query({})


@pytest.mark.parametrize("engine", ["elasticsearch", "opensearch"])
def test_an_empty_hybrid_query_ranks_by_bm25_alone(engine):
    builder = QueryBuilder.for_engine(engine, pruning=QueryPruning(min_weight=100.0))
    prepared = builder.search_request(
        FEATURES, k=10, text="tax code", hybrid=Hybrid(bm25_weight=0.3)
    )
    assert prepared.prune.empty
    body = repr(prepared.request.body)
    # match_none: MatchNoDocsQuery on both engines (elastic/elasticsearch and
    # opensearch-project/OpenSearch, main: server/src/main/java/org/{elasticsearch,opensearch}/
    # index/query/MatchNoneQueryBuilder.java); an empty bool would match every document.
    assert "{'match_none': {}}" in body and "multi_match" in body
    assert "'should': []" not in body
