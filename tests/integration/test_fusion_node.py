"""Client-side fusion against the engine's own, on a real cluster.

On OpenSearch with the neural-search plugin (the real 2.19.6 node): for 50 queries of a
generated corpus, ``fusion="client"`` (one ``_msearch``, fused by ``splade_es.fusion``) gives
the same documents, order and scores (to float32 rounding) as ``fusion="engine"`` (the
``hybrid`` query through the ``score-ranker-processor`` / ``normalization-processor``
pipeline). The comparison is exact because both fuse the same lists: the index has one shard
(OpenSearch ranks and combines per shard), and each sub-query of the hybrid query returns its
top ``size`` hits (no ``pagination_depth``: neural-search ``HybridCollectorManager``), which is
the window the dialect gives the client. Ties are the one freedom: the engine breaks them by
Lucene's document number, the client by rank; documents of equal score are compared as sets.

On a cluster without the engine's fusion (the emulator, OpenSearch without the plugin),
``fusion="auto"`` falls back to the client's and says so.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from splade_es.engines import Hybrid
from splade_es.query import QueryBuilder
from splade_es.search import (
    choose_fusion,
    create_hybrid_pipeline,
    create_index,
    search_vector,
)
from tests.integration.corpus import TOPICAL, make_documents

DOCUMENTS = 400
QUERIES = 50
FIELDS = ("title", "text")
# Filled by the comparison tests, printed at the end (pytest -s): the largest differences.
MEASURED: dict[str, float] = {}


def corpus_vectors(docs: list[dict[str, Any]], seed: int = 7) -> list[dict[str, float]]:
    """A SPLADE-like vector per document: its words with random weights, plus a few
    expansion terms it does not contain (so SPLADE and BM25 rank differently)."""
    rng = random.Random(seed)
    vectors = []
    for doc in docs:
        words = set(doc["text"].split())
        words |= set(rng.sample(TOPICAL, 3))
        vectors.append({w: round(rng.uniform(0.05, 3.0), 4) for w in sorted(words)})
    return vectors


def queries(seed: int = 11) -> list[tuple[str, dict[str, float]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(QUERIES):
        words = rng.sample(TOPICAL, rng.randint(1, 3))
        vector = {w: round(rng.uniform(0.2, 2.5), 3) for w in words}
        vector.update({w: round(rng.uniform(0.1, 0.8), 3) for w in rng.sample(TOPICAL, 2)})
        out.append((" ".join(words), vector))
    return out


@pytest.fixture
def fusion_index(cluster, index_name) -> tuple[str, QueryBuilder]:
    if type(cluster.client).__module__.startswith("opensearchpy"):
        from opensearchpy import helpers
    else:
        from elasticsearch import helpers
    create_index(cluster.client, index_name, field_type="rank_features", shards=1, replicas=0)
    docs = make_documents(DOCUMENTS, seed=3)
    vectors = corpus_vectors(docs)
    actions = (
        {"_index": index_name, "_id": d["id"], "_source": {**d, "splade": v}}
        for d, v in zip(docs, vectors, strict=True)
    )
    ok, errors = helpers.bulk(cluster.client, actions, refresh=True, raise_on_error=False)
    assert not errors and ok == DOCUMENTS
    builder = QueryBuilder.for_index(cluster.client, index_name, field="splade")
    return index_name, builder


def f32(value: float) -> np.float32:
    return np.float32(value)


def assert_same_fusion(engine: list[tuple[str, float]], client: list[tuple[str, float]]) -> float:
    """Same scores position by position (as float32, within one ulp), the same documents per
    score (ties as sets; at the cut, the client's tied documents are among those the engine
    could have kept). Returns the largest absolute score difference."""
    assert len(engine) == len(client), (engine, client)
    worst = 0.0
    for (_, e), (_, c) in zip(engine, client, strict=True):
        assert abs(int(f32(e).view(np.int32)) - int(f32(c).view(np.int32))) <= 1, (e, c)
        worst = max(worst, abs(e - c))
    groups: dict[np.float32, tuple[set[str], set[str]]] = {}
    for doc, score in engine:
        groups.setdefault(f32(score), (set(), set()))[0].add(doc)
    for doc, score in client:
        groups.setdefault(f32(score), (set(), set()))[1].add(doc)
    last = f32(engine[-1][1]) if engine else None
    for score, (from_engine, from_client) in groups.items():
        if score == last and len(engine) > 0:
            assert len(from_engine) == len(from_client)  # which tied ones made the cut: free
        else:
            assert from_engine == from_client, (score, from_engine, from_client)
    return worst


def compare(cluster, fusion_index, hybrid: Hybrid, k: int) -> dict[str, int]:
    index, builder = fusion_index
    create_hybrid_pipeline(cluster.client, hybrid)
    compared = {"queries": 0, "hits": 0}
    worst = 0.0
    for text, vector in queries():
        args: dict[str, Any] = dict(builder=builder, text=text, k=k, hybrid=hybrid, source=False)
        engine = search_vector(cluster.client, index, vector, fusion="engine", **args)
        client = search_vector(cluster.client, index, vector, fusion="client", **args)
        assert engine.fusion == "engine" and client.fusion == "client"
        engine_hits = [(h.id, h.score) for h in engine.hits]
        client_hits = [(h.id, h.score) for h in client.hits]
        worst = max(worst, assert_same_fusion(engine_hits, client_hits))
        compared["queries"] += 1
        compared["hits"] += len(engine_hits)
    what = (
        f"rank_constant={hybrid.rank_constant}"
        if hybrid.method == "rrf"
        else f"{hybrid.normalizer}, BM25 weight {hybrid.bm25_weight:g}"
    )
    key = f"{cluster.spec.name} {hybrid.method} {what} k={k}"
    MEASURED[key] = worst
    print(f"\n{key}: {compared['queries']} queries, {compared['hits']} hits, max |diff| {worst!r}")
    assert compared["queries"] == QUERIES and compared["hits"] >= QUERIES * min(k, 5)
    return compared


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the score-ranker-processor")
@pytest.mark.parametrize(("rank_constant", "k"), [(60, 10), (5, 25)])
def test_client_rrf_equals_the_score_ranker_processor(cluster, fusion_index, rank_constant, k):
    if "rrf" not in fusion_index[1].dialect.hybrid_methods():
        pytest.skip(f"no score-ranker-processor before OpenSearch 2.19 ({cluster.version})")
    hybrid = Hybrid(method="rrf", rank_constant=rank_constant, text_fields=FIELDS)
    compare(cluster, fusion_index, hybrid, k)


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the normalization-processor")
@pytest.mark.parametrize(("weight", "k"), [(0.5, 10), (0.3, 20), (0.8, 7)])
def test_client_min_max_linear_equals_the_normalization_processor(cluster, fusion_index, weight, k):
    hybrid = Hybrid(method="linear", bm25_weight=weight, text_fields=FIELDS)
    compare(cluster, fusion_index, hybrid, k)


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the normalization-processor")
@pytest.mark.parametrize(("weight", "k"), [(0.5, 10), (0.2, 15)])
def test_client_l2_linear_equals_the_normalization_processor(cluster, fusion_index, weight, k):
    hybrid = Hybrid(method="linear", normalizer="l2", bm25_weight=weight, text_fields=FIELDS)
    compare(cluster, fusion_index, hybrid, k)


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the hybrid query and its pipelines")
def test_auto_uses_the_engine_where_the_plugin_and_pipeline_are(cluster, fusion_index):
    index, builder = fusion_index
    hybrid = Hybrid(method="linear", bm25_weight=0.4, text_fields=FIELDS)
    missing = Hybrid(method="linear", bm25_weight=0.4, text_fields=FIELDS, pipeline="nope-x1")
    create_hybrid_pipeline(cluster.client, hybrid)
    choice = choose_fusion(cluster.client, hybrid, "auto")
    assert choice.fusion == "engine", choice
    without = choose_fusion(cluster.client, missing, "auto")
    assert without.fusion == "client" and "nope-x1" in without.note
    text, vector = queries()[1]
    args: dict[str, Any] = dict(builder=builder, text=text, k=10, hybrid=hybrid, source=False)
    auto = search_vector(cluster.client, index, vector, fusion=choice, **args)
    engine = search_vector(cluster.client, index, vector, fusion="engine", **args)
    assert auto.fusion == "engine" and auto.request == engine.request
    assert [(h.id, h.score) for h in auto.hits] == [(h.id, h.score) for h in engine.hits]


def test_auto_falls_back_to_the_client_where_the_engine_cannot_fuse(cluster, fusion_index):
    """The emulator and OpenSearch without neural-search have no hybrid pipelines (and an
    Elasticsearch cluster on a basic license no retrievers): ``auto`` fuses client-side, says
    so, and ranks as the client's fusion does."""
    index, builder = fusion_index
    hybrid = Hybrid(method="rrf", rank_constant=60, text_fields=FIELDS)
    choice = choose_fusion(cluster.client, hybrid, "auto", dialect=builder.dialect)
    engine_has_it = (
        cluster.engine == "opensearch"
        and cluster.has_plugin("neural")
        and "rrf" in builder.dialect.hybrid_methods()
    )
    if engine_has_it:
        pytest.skip(f"{cluster.spec.name} fuses rrf itself (compared with the client above)")
    assert choice.fusion == "client", choice
    assert "fusion=auto" in choice.note
    text, vector = queries()[0]
    args: dict[str, Any] = dict(builder=builder, text=text, k=10, hybrid=hybrid, source=False)
    auto = search_vector(cluster.client, index, vector, fusion="auto", **args)
    client = search_vector(cluster.client, index, vector, fusion="client", **args)
    assert auto.fusion == "client" and auto.hits
    assert [(h.id, h.score) for h in auto.hits] == [(h.id, h.score) for h in client.hits]
    # The fused list holds both sides: BM25's best and SPLADE's best documents.
    bm25_best = cluster.client.search(
        index=index, body={"query": {"multi_match": {"query": text, "fields": list(FIELDS)}}}
    )["hits"]["hits"][0]["_id"]
    assert bm25_best in {h.id for h in auto.hits}
