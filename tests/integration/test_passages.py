"""Passages (issue 24) on real engines: a long document stored as one nested object per
passage, scored by its best passage's exact dot product.

Each test creates the index with ``index_body(passages=True)`` (through ``create_index``),
indexes documents with hand-made passage vectors (plain dicts, no model), and compares what
``QueryBuilder`` / ``search_vector`` return with the dot products computed here, with the
engine's storage precision (``splade_es.sparse.stored_precision``) applied to stored weights.
"""

from __future__ import annotations

import math

import pytest

from splade_es import Hybrid, QueryBuilder, create_index, explain
from splade_es.engines import dialect_for
from splade_es.exceptions import UnsupportedFeatureError
from splade_es.search import hits_of, search_vector
from splade_es.sparse import SparseBatch, Vocabulary, stored_precision
from splade_es.tokens import TokenCodec

pytestmark = pytest.mark.integration

VOCAB = Vocabulary(
    ["[CLS]", "tax", "code", ".", "brain", "garlic", "law", "##s", "depreciation"],
    special_ids={0},
)
# Passages as {token: weight}, with their character offsets. Weights are not 9-bit exact,
# so the engine's rounding shows. d2's passages add up to more than d1's best one, so a sum
# or an average would rank them otherwise than the maximum does.
DOCS: dict[str, list[tuple[int, int, dict[str, float]]]] = {
    "d1": [
        (0, 812, {"garlic": 0.7123456, "law": 0.2}),
        (640, 1490, {"tax": 2.3333333, "depreciation": 1.1111111, ".": 0.5}),
        (1300, 2050, {"tax": 0.3, "brain": 1.7}),
    ],
    "d2": [
        (0, 700, {"tax": 1.2345678, "code": 0.6}),
        (500, 1200, {"tax": 1.3, "code": 0.7777777, "##s": 0.25}),
    ],
    "d3": [(0, 300, {"code": 1.9876543, ".": 0.4321})],  # one passage
    "d4": [(0, 400, {"brain": 1.5}), (350, 800, {"garlic": 0.9})],  # no query token
    "d5": [(0, 500, {"law": 0.8}), (420, 990, {"depreciation": 0.6666667})],
}
QUERIES = [
    {"tax": 1.5, "depreciation": 0.75, "code": 0.4321, ".": 0.3},
    {"code": 1.25, "law": 0.5, "brain": 0.1},
]


def query_batch(query: dict[str, float]) -> SparseBatch:
    ids = [VOCAB._tokens.index(token) for token in query]
    return SparseBatch.from_rows([(ids, list(query.values()))], vocab=VOCAB)


def passage_scores(builder: QueryBuilder, query: dict[str, float]) -> dict[str, list[float]]:
    """Per document, the stored-precision dot product of each passage that shares a token
    with the query (None for one that does not)."""
    codec = TokenCodec(VOCAB, scheme=builder.scheme)
    features = builder.features(query_batch(query))
    scores: dict[str, list[float]] = {}
    for doc_id, passages in DOCS.items():
        row = []
        for _, _, vector in passages:
            stored = codec.encode_tokens(vector)
            common = [k for k in features if k in stored]
            weights = stored_precision([stored[k] for k in common]).tolist()
            dot = math.fsum(features[k] * w for k, w in zip(common, weights, strict=True))
            row.append(dot if common else None)
        scores[doc_id] = row
    return scores


def build(cluster, index_name, field_type, **builder_options) -> QueryBuilder:
    create_index(cluster.client, index_name, field_type=field_type, replicas=0, passages=True)
    builder = QueryBuilder.for_index(cluster.client, index_name, **builder_options)
    assert builder.passages and builder.field_type == field_type
    codec = TokenCodec(VOCAB, scheme=builder.scheme)
    for doc_id, passages in DOCS.items():
        body = {
            "id": doc_id,
            "title": f"title {doc_id}",
            "text": "tax law " if doc_id != "d4" else "brain",
            builder.field: [
                {"vector": codec.encode_tokens(vector), "start": start, "end": end}
                for start, end, vector in passages
            ],
        }
        cluster.client.index(index=index_name, id=doc_id, body=body)
    cluster.client.indices.refresh(index=index_name)
    return builder


def assert_best_passage_scores(cluster, index_name, builder: QueryBuilder) -> None:
    for query in QUERIES:
        expected = passage_scores(builder, query)
        result = search_vector(
            cluster.client, index_name, query_batch(query), builder=builder, k=len(DOCS)
        )
        best = {d: max(s for s in row if s is not None) for d, row in expected.items() if any(row)}
        # (a) every document that shares a token, scored by its best passage
        assert {h.id for h in result.hits} == set(best)
        for hit in result.hits:
            assert hit.score == pytest.approx(best[hit.id], rel=1e-5)
        # (b) the ranking of the maxima (not of sums or averages)
        assert [h.id for h in result.hits] == sorted(best, key=lambda d: -best[d])
        # (c) inner hits: the matching passages, best first, start/end and score only
        for hit in result.hits:
            matching = [
                (score, DOCS[hit.id][i][0], DOCS[hit.id][i][1])
                for i, score in enumerate(expected[hit.id])
                if score is not None
            ]
            matching.sort(key=lambda m: -m[0])
            assert len(hit.passages) == min(builder.passage_hits, len(matching))
            assert (hit.passages[0].start, hit.passages[0].end) == matching[0][1:]
            for passage, (score, start, end) in zip(hit.passages, matching, strict=False):
                assert (passage.start, passage.end) == (start, end)
                assert passage.score == pytest.approx(score, rel=1e-5)
            assert hit.passages[0].score == pytest.approx(hit.score, rel=1e-6)


def test_rank_feature_passages_score_the_best_passage(cluster, index_name):
    builder = build(cluster, index_name, "rank_features")
    assert builder.style == "rank_feature"
    assert_best_passage_scores(cluster, index_name, builder)
    # The mapping the engine kept is the layout index_body asked for.
    mapping = cluster.client.indices.get_mapping(index=index_name)[index_name]["mappings"]
    field = mapping["properties"][builder.field]
    assert field["type"] == "nested"
    assert field["properties"]["vector"]["type"] == "rank_features"
    assert {field["properties"][p]["type"] for p in ("start", "end")} == {"integer"}


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the neural_sparse query")
def test_neural_sparse_passages_score_the_best_passage(cluster, index_name):
    if cluster.version < (2, 14, 0):
        pytest.skip("neural_sparse query_tokens needs OpenSearch 2.14+")
    builder = build(cluster, index_name, "rank_features", style="neural_sparse")
    assert_best_passage_scores(cluster, index_name, builder)


@pytest.mark.needs_opensearch_plugin("neural", "the sparse_vector field type")
def test_sparse_vector_passages_score_the_best_passage(cluster, index_name):
    dialect = dialect_for(cluster.engine, cluster.version)
    if "sparse_vector" not in dialect.field_types():
        with pytest.raises(UnsupportedFeatureError):
            create_index(cluster.client, index_name, field_type="sparse_vector", passages=True)
        return
    builder = build(cluster, index_name, "sparse_vector")
    # Below SEISMIC's approximate_threshold (passages count) OpenSearch scores exactly.
    assert_best_passage_scores(cluster, index_name, builder)


def test_filters_stay_outside_the_passages(cluster, index_name):
    builder = build(cluster, index_name, "rank_features")
    query = query_batch(QUERIES[0])
    plain = search_vector(cluster.client, index_name, query, builder=builder, k=len(DOCS))
    only = [{"terms": {"id": ["d2", "d3"]}}]
    filtered = search_vector(
        cluster.client, index_name, query, builder=builder, k=len(DOCS), filters=only
    )
    assert [h.id for h in filtered.hits] == [h.id for h in plain.hits if h.id in ("d2", "d3")]
    before = {h.id: h for h in plain.hits}
    for hit in filtered.hits:
        assert hit.score == pytest.approx(before[hit.id].score, rel=1e-6)
        assert hit.passages == before[hit.id].passages


def test_sum_hybrid_adds_bm25_to_the_best_passage(cluster, index_name):
    builder = build(cluster, index_name, "rank_features")
    query = query_batch(QUERIES[0])
    sparse = {
        h.id: h for h in search_vector(cluster.client, index_name, query, builder=builder).hits
    }
    hybrid = Hybrid(bm25_weight=0.25, text_fields=("title", "text"))
    mixed = search_vector(
        cluster.client, index_name, query, builder=builder, text="tax", hybrid=hybrid, k=10
    )
    lexical = cluster.client.search(
        index=index_name, body={"query": builder.dialect.lexical_query("tax", ["title", "text"])}
    )
    bm25 = {h.id: h.score for h in hits_of(lexical)}
    assert {h.id for h in mixed.hits} == set(sparse) | set(bm25)
    for hit in mixed.hits:
        dot = sparse[hit.id].score if hit.id in sparse else 0.0
        assert hit.score == pytest.approx(0.75 * dot + 0.25 * bm25.get(hit.id, 0.0), rel=1e-5)
        # The nested clause's inner hits come back inside the bool query.
        assert hit.passages == (sparse[hit.id].passages if hit.id in sparse else ())


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the hybrid query")
def test_linear_hybrid_ranks_passages_documents(cluster, index_name):
    """The nested clause inside OpenSearch's ``hybrid`` query: documents rank, and the inner
    hits are asked for only where the hybrid query returns them (neural-search 3.0+); on 2.19
    it drops a sub-query's inner hits (no ``extractInnerHitBuilders``), shown here with a raw
    body that asks anyway."""
    from splade_es import create_hybrid_pipeline

    builder = build(cluster, index_name, "rank_features")
    hybrid = Hybrid(bm25_weight=0.5, method="linear", text_fields=("title", "text"))
    create_hybrid_pipeline(cluster.client, hybrid)
    query = query_batch(QUERIES[0])
    mixed = search_vector(
        cluster.client, index_name, query, builder=builder, text="tax", hybrid=hybrid, k=10
    )
    assert mixed.hits and "d4" not in {h.id for h in mixed.hits[:3]}
    fused = builder.dialect.inner_hits_with(hybrid)
    assert fused == (cluster.version >= (3, 0, 0))
    assert all(bool(h.passages) == fused for h in mixed.hits if h.id != "d4")
    # What the engine does with inner hits inside a hybrid query, asked directly.
    sparse = builder._clause(builder.prune(query)[0], inner_hits=True)
    body = {"query": {"hybrid": {"queries": [{"match": {"text": "tax"}}, sparse]}}}
    raw = cluster.client.search(
        index=index_name, body=body, params={"search_pipeline": hybrid.pipeline_name}
    )
    returned = any("inner_hits" in h for h in raw["hits"]["hits"])
    assert returned == fused


def test_explain_names_the_best_passage(cluster, index_name):
    builder = build(cluster, index_name, "rank_features")
    query = query_batch(QUERIES[0])
    result = explain(cluster.client, index_name, "d1", query, builder=builder)
    assert result.passage is not None and (result.passage.start, result.passage.end) == (640, 1490)
    assert result.engine_score == pytest.approx(result.score, rel=1e-5)
    assert result.passage.score == pytest.approx(result.score, rel=1e-12)
    assert {c.token for c in result.contributions} == {"tax", "depreciation", "."}
