"""What the dialects assume about the engines, asked of the engine itself.

Each test sends the engine a raw body (not one of ours) that shows one fact a dialect decision
rests on, so a real node catches a wrong assumption where unit tests can only cite sources.
The osmem emulator differs on several of them (noted per test); those run on real engines only.
"""

from __future__ import annotations

import pytest

from splade_es.engines import dialect_for
from splade_es.engines.base import Hybrid
from splade_es.search import create_hybrid_pipeline

pytestmark = pytest.mark.integration

DOCS = {
    "d0": {"text": "tax code", "splade": {"tax": 1.5}},
    "d1": {"text": "garlic tax", "splade": {"garlic": 2.0, "tax": 0.5}},
    "d2": {"text": "brain", "splade": {"brain": 1.0}},
}


@pytest.fixture
def small_index(cluster, index_name):
    mappings = {"properties": {"splade": {"type": "rank_features"}, "text": {"type": "text"}}}
    cluster.client.indices.create(index=index_name, body={"mappings": mappings})
    for doc_id, doc in DOCS.items():
        cluster.client.index(index=index_name, id=doc_id, body=doc)
    cluster.client.indices.refresh(index=index_name)
    return index_name


def _error(call) -> str:
    """The engine's error text for a request that fails, "" for one that succeeds."""
    try:
        call()
    except Exception as exc:  # the error classes differ between the two official clients
        return str(exc)
    return ""


@pytest.mark.emulator_lacks("clause limit enforcement (it runs 1025 clauses)")
def test_the_bool_clause_limit_is_enforced_at_the_configured_value(cluster, small_index):
    """Why QueryBuilder prunes to the limit instead of sending everything: one clause more
    than ``indices.query.bool.max_clause_count`` (1024 by default) is a 400."""
    if cluster.engine != "opensearch":
        pytest.skip("Elasticsearch derives its limit from the heap (doctor measures it)")

    def query(n: int) -> dict:
        should = [{"rank_feature": {"field": f"splade.t{i}", "linear": {}}} for i in range(n)]
        return {"query": {"bool": {"should": should}}}

    cluster.client.search(index=small_index, body=query(1024))
    error = _error(lambda: cluster.client.search(index=small_index, body=query(1025)))
    assert "maxClauseCount is set to 1024" in error


def test_pit_shard_doc_tiebreaker_exists_where_the_dialect_says(cluster, small_index):
    """The migration reader pages a point in time by ``_shard_doc`` only where the dialect
    says it exists (OpenSearch 3.3+, Elasticsearch 7.12+); elsewhere it must use a scroll."""
    dialect = dialect_for(cluster.engine, cluster.version)
    pit_id = dialect.open_pit(cluster.client, small_index, "1m")
    try:
        body = {"pit": {"id": pit_id, "keep_alive": "1m"}, "sort": [{"_shard_doc": "asc"}]}
        error = _error(lambda: cluster.client.search(body=body))
    finally:
        dialect.close_pit(cluster.client, pit_id)
    if dialect.pit_sort() is None:
        assert "No mapping found for [_shard_doc]" in error
    else:
        assert error == ""


def test_rank_features_store_nine_significant_bits(cluster, small_index):
    """SparseBatch.stored() rounds to what the engine keeps: 0.3333333 is stored as
    0.3330078125 (Lucene FeatureField keeps 9 significant bits), and a linear rank_feature
    query returns exactly that as the score."""
    cluster.client.index(
        index=small_index, id="p", body={"splade": {"prec": 0.3333333}}, refresh=True
    )
    body = {"query": {"rank_feature": {"field": "splade.prec", "linear": {}}}}
    [hit] = cluster.client.search(index=small_index, body=body)["hits"]["hits"]
    # The score is a float32 printed with float32 digits (0.3330078); 0.3333333 would be
    # 3e-4 away.
    assert hit["_score"] == pytest.approx(0.3330078125, abs=1e-7)


@pytest.mark.needs_opensearch_plugin("neural", "search pipelines")
def test_normalization_weights_must_be_doubles(cluster, small_index):
    """Why the dialect sends ``[0.0, 1.0]`` and never ``[0, 1.0]``: neural-search casts each
    weight to Double (ScoreCombinationUtil.getWeights) and an integer fails the pipeline."""
    if cluster.engine != "opensearch":
        pytest.skip("OpenSearch search pipelines")
    client = cluster.client

    def pipeline(weights: list) -> dict:
        combination = {"technique": "arithmetic_mean", "parameters": {"weights": weights}}
        processor = {"normalization": {"technique": "min_max"}, "combination": combination}
        return {"phase_results_processors": [{"normalization-processor": processor}]}

    path = f"/_search/pipeline/{small_index}-weights"
    put = client.transport.perform_request
    error = _error(lambda: put("PUT", path, body=pipeline([0, 1.0])))
    assert "cannot be cast to class java.lang.Double" in error
    put("PUT", path, body=pipeline([0.0, 1.0]))
    put("DELETE", path)


@pytest.mark.needs_opensearch_plugin("neural", "the score-ranker-processor")
def test_rrf_rank_constant_is_read_where_the_dialect_sends_it(cluster, small_index):
    """neural-search 2.19 / 3.0 read ``combination.parameters.rank_constant`` and silently
    use 60 for ``combination.rank_constant``; 3.1+ the other way round (RRFProcessorFactory).
    With k = 20 the best document of both lists scores 2 / (20 + 1)."""
    if cluster.engine != "opensearch":
        pytest.skip("OpenSearch search pipelines")

    dialect = dialect_for(cluster.engine, cluster.version)
    if "rrf" not in dialect.hybrid_methods():
        pytest.skip(f"no rrf before OpenSearch 2.19 ({cluster.version})")
    hybrid = Hybrid(method="rrf", rank_constant=20)
    pipeline = create_hybrid_pipeline(cluster.client, hybrid)
    body = {
        "query": {
            "hybrid": {
                "queries": [
                    {"match": {"text": "tax"}},
                    {"rank_feature": {"field": "splade.tax", "linear": {}}},
                ]
            }
        }
    }
    hits = cluster.client.search(
        index=small_index, body=body, params={"search_pipeline": pipeline}
    )["hits"]["hits"]
    assert hits[0]["_score"] == pytest.approx(2 / 21, rel=1e-6)
