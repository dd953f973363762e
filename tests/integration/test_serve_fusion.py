"""``splade-es serve``: a ``splade`` clause with ``hybrid`` through the proxy gives what
``splade_es.search`` gives for the same hybrid and fusion (the official client, pointed at the
proxy); ``auto`` fuses client-side where the cluster has no hybrid (the emulator, OpenSearch
without neural-search) and in the engine where the search pipeline exists."""

from __future__ import annotations

import contextlib
import json

import opensearchpy
import pytest

from splade_es import Hybrid, QueryBuilder, SpladeEncoder, search
from splade_es.search import create_hybrid_pipeline, hits_of
from tests.integration.serve_support import index_corpus, raw_request, running_proxy
from tests.integration.test_fusion_node import assert_same_fusion

pytestmark = pytest.mark.integration

QUERIES = ["depreciation tax deduction", "brain white matter imaging", "sparse vector search"]
N_DOCS = 30
FIELDS = ["title", "text"]


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture
def indexed(cluster, index_name, encoder):
    return index_corpus(cluster, index_name, encoder, N_DOCS)


@pytest.fixture
def proxy(cluster, encoder):
    with running_proxy(cluster.url, encoder) as app:
        yield app


def engine_fuses(cluster, method: str) -> bool:
    from splade_es.engines import dialect_for

    dialect = dialect_for(cluster.engine, cluster.version)
    return (
        cluster.engine == "opensearch"
        and cluster.has_plugin("neural")
        and method in dialect.hybrid_methods()
    )


def body(text: str, fusion: str, method: str, size: int = 10) -> dict:
    hybrid = {"method": method, "bm25_weight": 0.3, "text_fields": FIELDS, "fusion": fusion}
    return {"query": {"splade": {"splade": {"query": text, "hybrid": hybrid}}}, "size": size}


@pytest.mark.parametrize("method", ["rrf", "linear"])
def test_client_fusion_through_the_proxy_equals_search(cluster, indexed, proxy, encoder, method):
    app_client = opensearchpy.OpenSearch(hosts=[proxy.state.url], max_retries=0)
    builder = QueryBuilder.for_index(cluster.client, indexed)
    hybrid = Hybrid(method=method, bm25_weight=0.3, text_fields=tuple(FIELDS))
    for text in QUERIES:
        direct = search(
            cluster.client,
            indexed,
            text,
            encoder=encoder,
            builder=builder,
            hybrid=hybrid,
            fusion="client",
        )
        assert direct.hits
        answer = app_client.search(index=indexed, body=body(text, "client", method))
        assert [(h.id, h.score) for h in hits_of(answer)] == [(h.id, h.score) for h in direct.hits]
    app_client.close()
    # Earlier tests in the session may have left the (cluster-wide) search pipeline behind.
    without_pipeline(cluster, Hybrid(method=method, bm25_weight=0.3).pipeline_name)
    status, headers, _ = raw_request(
        proxy.state.url,
        "POST",
        f"/{indexed}/_search",
        json.dumps(body(QUERIES[0], "auto", method)).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200
    fusion = dict((k.lower(), v) for k, v in headers).get("x-splade-fusion")
    # auto: the pipeline does not exist yet, so the engine cannot fuse through it.
    assert fusion == "client"


@pytest.mark.engines("opensearch")
@pytest.mark.needs_opensearch_plugin("neural", "the hybrid query and its pipelines")
@pytest.mark.parametrize("method", ["rrf", "linear"])
def test_engine_and_client_fusion_agree_through_the_proxy(cluster, indexed, proxy, method):
    if not engine_fuses(cluster, method):
        pytest.skip(f"{cluster.spec.name} has no {method} hybrid")
    create_hybrid_pipeline(
        cluster.client, Hybrid(method=method, bm25_weight=0.3, text_fields=tuple(FIELDS))
    )
    app_client = opensearchpy.OpenSearch(hosts=[proxy.state.url], max_retries=0)
    for text in QUERIES:
        engine = app_client.search(index=indexed, body=body(text, "engine", method))
        client = app_client.search(index=indexed, body=body(text, "client", method))
        auto = app_client.search(index=indexed, body=body(text, "auto", method))
        pairs = [[(h.id, h.score) for h in hits_of(r)] for r in (engine, client, auto)]
        assert pairs[0]
        assert assert_same_fusion(pairs[0], pairs[1]) == 0.0
        assert pairs[2] == pairs[0]  # auto: the pipeline exists, the engine fuses
    app_client.close()


def test_a_hybrid_clause_inside_another_query_is_a_400(cluster, indexed, proxy):
    app_client = opensearchpy.OpenSearch(hosts=[proxy.state.url], max_retries=0)
    nested = {"query": {"bool": {"must": [body("tax", "client", "rrf")["query"]]}}}
    with pytest.raises(opensearchpy.RequestError) as raised:
        app_client.search(index=indexed, body=nested)
    assert "whole [query]" in str(raised.value)
    app_client.close()


def test_client_fusion_answers_plain_json_to_an_app_that_accepts_gzip(cluster, indexed, proxy):
    """An app that accepts gzip (python-requests does by default) still gets the fused search
    answer: serve reads the _msearch answer itself, so it never asks the cluster to compress
    it (a real OpenSearch node gzips when asked)."""
    import gzip

    request = json.dumps(body("depreciation tax deduction", "client", "rrf")).encode()
    answers = []
    for accept in ("gzip, deflate", "identity"):
        status, headers, raw = raw_request(
            proxy.state.url,
            "POST",
            f"/{indexed}/_search",
            request,
            {"Content-Type": "application/json", "Accept-Encoding": accept},
        )
        assert status == 200, raw[:300]
        encoding = dict((k.lower(), v) for k, v in headers).get("content-encoding", "")
        answers.append(json.loads(gzip.decompress(raw) if "gzip" in encoding else raw))
    assert answers[0]["hits"]["hits"], answers[0]
    ranked = [[(h["_id"], h["_score"]) for h in a["hits"]["hits"]] for a in answers]
    assert ranked[0] == ranked[1]


def without_pipeline(cluster, name: str) -> None:
    """Delete search pipeline ``name`` where the cluster has one (nothing elsewhere)."""
    # absent, or no search pipelines on this cluster (either client's error): nothing to do
    with contextlib.suppress(Exception):
        cluster.client.transport.perform_request("DELETE", f"/_search/pipeline/{name}")
