"""Issue 4 end to end: the engine's _score is the SPLADE dot product, on every cluster.

Each test creates its index from the packaged templates (``create_index``), indexes a small
corpus encoded by a random-weight model, and compares the engine's scores with the same dot
products computed in memory.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from splade_es import (
    Hybrid,
    QueryBuilder,
    SpladeEncoder,
    create_hybrid_pipeline,
    create_index,
    explain,
)
from splade_es.cli import main
from splade_es.exceptions import ConfigurationError, UnsupportedFeatureError
from splade_es.search import search_vector, send
from splade_es.sparse import stored_precision
from tests.integration.corpus import bulk_index, document_text, make_documents

pytestmark = pytest.mark.integration

QUERIES = ["depreciation tax deduction", "brain white matter imaging", "sparse vector search"]
N_DOCS = 40


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture(scope="module")
def corpus(encoder):
    docs = make_documents(N_DOCS)
    return docs, encoder.encode_documents([document_text(d) for d in docs])


def build_index(cluster, index_name, encoder, corpus, field_type="rank_features", **builder_kw):
    docs, vectors = corpus
    create_index(cluster.client, index_name, field_type=field_type, replicas=0)
    builder = QueryBuilder.for_index(cluster.client, index_name, **builder_kw)
    assert builder.field_type == field_type
    bulk_index(cluster.client, index_name, docs, vectors, builder.codec(vectors.vocab))
    return builder


def expected_scores(builder, query_vector, corpus, *, stored: bool) -> dict[str, float]:
    """In-memory dot products of the query's features with every document's features."""
    docs, vectors = corpus
    features = builder.prune(query_vector)[0]
    codec = builder.codec(vectors.vocab)
    scores = {}
    for i, doc in enumerate(docs):
        doc_features = codec.encode(vectors, i)
        common = [k for k in features if k in doc_features]
        weights = [doc_features[k] for k in common]
        if stored:
            weights = stored_precision(weights).tolist()
        score = sum(features[k] * w for k, w in zip(common, weights, strict=True))
        if common:
            scores[doc["id"]] = score
    return scores


def best_document(builder, encoder, corpus, text) -> str:
    scores = expected_scores(builder, encoder.encode_queries([text]), corpus, stored=True)
    return max(scores, key=scores.get)


def assert_scores_are_dot_products(cluster, index_name, builder, encoder, corpus):
    for text in QUERIES:
        query = encoder.encode_queries([text])
        result = search_vector(cluster.client, index_name, query, builder=builder, k=N_DOCS)
        exact = expected_scores(builder, query, corpus, stored=False)
        stored = expected_scores(builder, query, corpus, stored=True)
        assert {h.id for h in result.hits} == set(exact)  # every matching doc, no other
        assert result.hits, "the corpus shares tokens with every query"
        for hit in result.hits:
            # The bar: within 2^-8 of the full-precision dot product...
            assert hit.score == pytest.approx(exact[hit.id], rel=2**-8)
            # ...and, scoring in memory with the stored precision, equal up to float32 sums.
            assert hit.score == pytest.approx(stored[hit.id], rel=1e-5)
        ranked = sorted(stored, key=lambda d: -stored[d])
        assert [h.id for h in result.hits][:3] == ranked[:3]


def test_rank_feature_query_scores_the_exact_dot_product(cluster, index_name, encoder, corpus):
    builder = build_index(cluster, index_name, encoder, corpus)
    assert builder.style == "rank_feature"
    assert_scores_are_dot_products(cluster, index_name, builder, encoder, corpus)


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the neural_sparse query")
def test_neural_sparse_query_scores_the_exact_dot_product(cluster, index_name, encoder, corpus):
    if cluster.version < (2, 14, 0):
        pytest.skip("neural_sparse query_tokens needs OpenSearch 2.14+")
    builder = build_index(cluster, index_name, encoder, corpus, style="neural_sparse")
    assert_scores_are_dot_products(cluster, index_name, builder, encoder, corpus)


@pytest.mark.needs_opensearch_plugin("neural", "the sparse_vector field type")
def test_sparse_vector_field_scores_the_exact_dot_product(cluster, index_name, encoder, corpus):
    dialect_builder = QueryBuilder.for_engine(cluster.engine, version=cluster.version)
    if "sparse_vector" not in dialect_builder.dialect.field_types():
        with pytest.raises(UnsupportedFeatureError):
            create_index(cluster.client, index_name, field_type="sparse_vector")
        return
    builder = build_index(cluster, index_name, encoder, corpus, field_type="sparse_vector")
    # Below SEISMIC's approximate_threshold (1M docs/segment) OpenSearch scores exactly too.
    assert_scores_are_dot_products(cluster, index_name, builder, encoder, corpus)


def test_filters_restrict_without_changing_scores(cluster, index_name, encoder, corpus):
    builder = build_index(cluster, index_name, encoder, corpus)
    query = encoder.encode_queries([QUERIES[0]])
    plain = search_vector(cluster.client, index_name, query, builder=builder, k=N_DOCS)
    filtered = search_vector(
        cluster.client,
        index_name,
        query,
        builder=builder,
        k=N_DOCS,
        filters=[{"term": {"lang": "en"}}],
    )
    english = {d["id"] for d in corpus[0] if d["lang"] == "en"}
    assert filtered.hits and {h.id for h in filtered.hits} <= english
    assert {h.id for h in filtered.hits} == {h.id for h in plain.hits} & english
    plain_scores = {h.id: h.score for h in plain.hits}
    for hit in filtered.hits:
        assert hit.score == pytest.approx(plain_scores[hit.id], rel=1e-6)


def test_weighted_sum_hybrid_adds_weighted_bm25(cluster, index_name, encoder, corpus):
    builder = build_index(cluster, index_name, encoder, corpus)
    text = QUERIES[1]
    query = encoder.encode_queries([text])
    hybrid = Hybrid(bm25_weight=0.3, text_fields=("title", "text"))
    mixed = search_vector(
        cluster.client, index_name, query, builder=builder, text=text, k=N_DOCS, hybrid=hybrid
    )
    sparse = {
        h.id: h.score
        for h in search_vector(cluster.client, index_name, query, builder=builder, k=N_DOCS).hits
    }
    lexical_request = builder.dialect.search_request(
        builder.dialect.lexical_query(text, hybrid.text_fields), k=N_DOCS
    )
    bm25 = {
        h["_id"]: h["_score"]
        for h in send(cluster.client, index_name, lexical_request)[0]["hits"]["hits"]
    }
    assert mixed.hits
    for hit in mixed.hits:
        expected = 0.7 * sparse.get(hit.id, 0.0) + 0.3 * bm25.get(hit.id, 0.0)
        assert hit.score == pytest.approx(expected, rel=1e-5)


@pytest.mark.needs_opensearch_plugin("neural", "hybrid queries and search pipelines")
@pytest.mark.parametrize("method", ["linear", "rrf"])
def test_fused_hybrid_methods_return_documents_of_both_sides(
    cluster, index_name, encoder, corpus, method
):
    builder = build_index(cluster, index_name, encoder, corpus)
    hybrid = Hybrid(bm25_weight=0.4, method=method)
    if method not in builder.dialect.hybrid_methods():
        pytest.skip(f"{cluster.engine} {cluster.version} has no {method} hybrid")
    pipeline = create_hybrid_pipeline(cluster.client, hybrid)
    assert (pipeline is not None) == (cluster.engine == "opensearch")
    text = QUERIES[0]
    result = search_vector(
        cluster.client,
        index_name,
        encoder.encode_queries([text]),
        builder=builder,
        text=text,
        k=10,
        hybrid=hybrid,
    )
    assert 0 < len(result.hits) <= 10
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)


def test_explain_contributions_sum_to_the_score(cluster, index_name, encoder, corpus):
    builder = build_index(cluster, index_name, encoder, corpus)
    query = encoder.encode_queries([QUERIES[2]])
    result = search_vector(cluster.client, index_name, query, builder=builder, k=3)
    for hit in result.hits:
        explanation = explain(cluster.client, index_name, hit.id, query, builder=builder)
        assert explanation.contributions
        assert explanation.score == pytest.approx(hit.score, rel=1e-5)
        for part in explanation.contributions:
            assert part.contribution == pytest.approx(part.query_weight * part.doc_weight)
            assert part.token in encoder.vocab


def test_queries_over_the_clause_limit_are_pruned_not_refused(cluster, index_name, encoder, corpus):
    builder = build_index(cluster, index_name, encoder, corpus)
    assert builder.max_clauses and builder.max_clauses >= 1024
    _, vectors = corpus
    present = builder.codec(vectors.vocab).decode(builder.codec(vectors.vocab).encode(vectors, 0))
    token = max(present, key=present.get)  # a token document 0 has
    heavy = {f"synthetic{i}": 1.0 + i / 10000 for i in range(builder.max_clauses + 500)}
    heavy[token] = 50.0
    result = search_vector(cluster.client, index_name, heavy, builder=builder, k=N_DOCS)
    assert result.prune.clause_limited
    assert result.prune.kept == builder.max_clauses
    assert "doc-0" in {h.id for h in result.hits}  # the heaviest token was kept, and matches


def test_create_index_refuses_an_existing_index(cluster, index_name):
    create_index(cluster.client, index_name, replicas=0)
    with pytest.raises(ConfigurationError, match="already exists"):
        create_index(cluster.client, index_name, replicas=0)


def test_cli_create_index_search_and_evaluate(
    cluster, index_name, encoder, corpus, search_model_dir, tmp_path
):
    runner = CliRunner()
    base = ["--url", cluster.url]
    created = runner.invoke(main, ["create-index", *base, "--index", index_name, "--replicas", "0"])
    assert created.exit_code == 0, created.output
    builder = QueryBuilder.for_index(cluster.client, index_name)
    docs, vectors = corpus
    bulk_index(cluster.client, index_name, docs, vectors, builder.codec(vectors.vocab))

    found = runner.invoke(
        main,
        [
            "search",
            *base,
            "--index",
            index_name,
            "-m",
            str(search_model_dir),
            "--json",
            "--k",
            "3",
            QUERIES[0],
        ],
    )
    assert found.exit_code == 0, found.output
    payload = json.loads(found.stdout)
    expected = expected_scores(builder, encoder.encode_queries([QUERIES[0]]), corpus, stored=True)
    best = best_document(builder, encoder, corpus, QUERIES[0])
    assert payload["hits"][0]["id"] == best
    assert payload["hits"][0]["score"] == pytest.approx(expected[best], rel=1e-5)
    assert payload["hits"][0]["top_tokens"]

    (tmp_path / "q.jsonl").write_text(
        "\n".join(json.dumps({"_id": f"q{i}", "text": t}) for i, t in enumerate(QUERIES))
    )
    (tmp_path / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(
            f"q{i}\t{best_document(builder, encoder, corpus, t)}\t1\n"
            for i, t in enumerate(QUERIES)
        )
    )
    report = runner.invoke(
        main,
        [
            "evaluate",
            *base,
            "--index",
            index_name,
            "-m",
            str(search_model_dir),
            "--queries",
            str(tmp_path / "q.jsonl"),
            "--qrels",
            str(tmp_path / "qrels.tsv"),
            "--json",
        ],
    )
    assert report.exit_code == 0, report.output
    metrics = json.loads(report.stdout)
    assert set(metrics) >= {"ndcg@10", "mrr@10", "recall@100", "queries", "latency_ms"}
    # Each query's judged document is its exact top hit: perfect scores through the cluster.
    assert metrics["queries"] == 3
    assert metrics["ndcg@10"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx(1.0)
    assert set(metrics["latency_ms"]) == {"encode", "search", "total"}
    assert metrics["latency_ms"]["search"]["p50"] > 0
