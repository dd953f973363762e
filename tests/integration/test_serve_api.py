"""``splade-es serve``'s own endpoints (translation, encode, TEI ``/embed_sparse``, health,
metrics), index facts refreshed on mapping changes, and the Elasticsearch client through the
proxy (against the emulator, and against a stub that answers as Elasticsearch 8.15)."""

from __future__ import annotations

import json

import elasticsearch
import pytest

from splade_es import Hybrid, QueryBuilder, QueryPruning, SpladeEncoder, search
from splade_es.search import hits_of
from splade_es.tokens import TokenCodec
from tests.integration.serve_support import (
    StubServer,
    forward_to,
    index_corpus,
    post_json,
    raw_request,
    running_proxy,
)
from tests.vectors import assert_same_vector

pytestmark = pytest.mark.integration

TEXT = "depreciation tax deduction"


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture
def indexed(cluster, index_name, encoder):
    return index_corpus(cluster, index_name, encoder, 20)


@pytest.fixture
def proxy(cluster, encoder):
    with running_proxy(cluster.url, encoder) as app:
        yield app


def test_translation_for_an_index_is_the_body_search_sends(cluster, indexed, proxy, encoder):
    status, out = post_json(
        proxy, "/_splade/query", {"text": TEXT, "index": indexed, "k": 7, "top_k": 5}
    )
    assert status == 200
    builder = QueryBuilder.for_index(cluster.client, indexed)
    vector = encoder.encode_queries([TEXT])
    expected = builder.search_request(vector, k=7, text=TEXT, pruning=QueryPruning(top_k=5))
    assert out["body"] == expected.request.body
    assert out["params"] == {}
    assert out["pruning"]["kept"] == 5
    # The app sends the body itself, with its own client: same hits as search() pruned alike.
    hits = hits_of(cluster.client.search(index=indexed, body=out["body"]))
    assert hits and len(hits) <= 7


def test_translation_for_an_engine_without_a_cluster(proxy, encoder):
    status, out = post_json(
        proxy,
        "/_splade/query",
        {
            "text": TEXT,
            "engine": "elasticsearch",
            "version": "9.1.0",
            "field_type": "sparse_vector",
            "field": "emb",
            "filters": [{"term": {"lang": "en"}}],
            "hybrid": {"method": "rrf", "text_fields": ["title"]},
        },
    )
    assert status == 200
    builder = QueryBuilder.for_engine(
        "elasticsearch", version="9.1.0", field="emb", field_type="sparse_vector"
    )
    expected = builder.search_request(
        encoder.encode_queries([TEXT]),
        text=TEXT,
        filters=[{"term": {"lang": "en"}}],
        hybrid=Hybrid(method="rrf", text_fields=("title",)),
    )
    assert out["body"] == expected.request.body
    assert "retriever" in out["body"]
    status, err = post_json(proxy, "/_splade/query", {"text": TEXT})
    assert status == 400 and err["error"]["type"] == "illegal_argument_exception"
    status, err = post_json(
        proxy, "/_splade/query", {"text": TEXT, "engine": "solr", "version": "1"}
    )
    assert status == 400 and "unknown engine" in err["error"]["reason"]


def test_encode_and_tei_embed_sparse(proxy, encoder):
    texts = ["tax law", "garlic powder."]
    status, out = post_json(proxy, "/_splade/encode", {"texts": texts})
    assert status == 200
    batch = encoder.encode_queries(texts)
    codec = TokenCodec(batch.vocab)
    for i, vector in enumerate(out["vectors"]):
        assert_same_vector(vector["tokens"], batch.to_dict(i))
        assert_same_vector(vector["features"], codec.encode(batch, i))
    status, docs = post_json(proxy, "/_splade/encode", {"texts": texts, "kind": "document"})
    assert status == 200
    assert_same_vector(docs["vectors"][0]["tokens"], batch.to_dict(0))

    status, tei = post_json(proxy, "/embed_sparse", {"inputs": texts[0]})
    assert status == 200
    ids, weights = batch.row(0)
    assert len(tei) == 1
    assert_same_vector(
        {str(item["index"]): item["value"] for item in tei[0]},
        {str(int(i)): float(w) for i, w in zip(ids, weights, strict=True)},
    )
    status, tei = post_json(proxy, "/embed_sparse", {"inputs": texts})
    assert status == 200 and len(tei) == 2
    status, err = post_json(proxy, "/embed_sparse", {"inputs": ["ok", ""]})
    assert status == 422 and err["error_type"] == "Validation"


def test_health_and_metrics(indexed, proxy):
    status, _, body = raw_request(proxy.state.url, "GET", "/_splade/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["cluster"]["reachable"]
    for _ in range(3):
        post_json(proxy, f"/{indexed}/_search", {"query": {"splade": {"splade": TEXT}}})
    status, headers, body = raw_request(proxy.state.url, "GET", "/_splade/metrics")
    text = body.decode()
    assert status == 200
    assert dict(headers)["content-type"].startswith("text/plain")
    assert 'splade_es_requests_total{route="search",status="2xx"} 3.0' in text
    assert "splade_es_query_cache_hits_total 2.0" in text
    assert "splade_es_query_cache_hit_ratio 0.666" in text
    assert "splade_es_encode_seconds_count 1.0" in text
    assert "splade_es_upstream_seconds_count" in text
    assert "splade_es_batch_size_bucket" in text


def test_facts_are_cached_and_refreshed_when_mappings_change(cluster, indexed, proxy, encoder):
    facts = proxy.state.service.facts
    body = {"query": {"splade": {"splade": TEXT}}, "size": 20}
    post_json(proxy, f"/{indexed}/_search", body)
    reads = facts.reads
    post_json(proxy, f"/{indexed}/_search", body)
    assert facts.reads == reads  # cached: no cluster reads for the second search
    status, _ = post_json(
        proxy, f"/{indexed}/_mapping", {"properties": {"extra": {"type": "keyword"}}}
    )
    assert status == 200
    status, out = post_json(proxy, f"/{indexed}/_search", body)
    assert status == 200 and facts.reads > reads  # re-read after the mapping change
    direct = search(cluster.client, indexed, TEXT, encoder=encoder, k=20)
    assert [(h.id, h.score) for h in hits_of(out)] == [(h.id, h.score) for h in direct.hits]


def test_elasticsearch_client_through_the_proxy(cluster, indexed, encoder):
    # The emulator refuses the client's versioned media types; a gate behind the proxy reads
    # them as plain JSON, as Elasticsearch does. The proxy itself passes them on untouched.
    direct = search(cluster.client, indexed, TEXT, encoder=encoder, k=20)
    with (
        StubServer(forward_to(cluster.url, plain_json=True)) as gate,
        running_proxy(gate.url, encoder) as app,
    ):
        es = elasticsearch.Elasticsearch(app.state.url, max_retries=0)
        result = es.search(index=indexed, query={"splade": {"splade": TEXT}}, size=20)
        assert [(h.id, h.score) for h in hits_of(result.body)] == [
            (h.id, h.score) for h in direct.hits
        ]
        with pytest.raises(elasticsearch.BadRequestError) as info:
            es.search(index=indexed, query={"splade": {"splade": {"query": "x", "top_k": -1}}})
        assert info.value.error == "illegal_argument_exception"
    searched = [r for r in gate.requests if r.target.startswith(f"/{indexed}/_search")]
    content_type = dict((k.lower(), v) for k, v in searched[0].headers)["content-type"]
    assert content_type == "application/vnd.elasticsearch+json; compatible-with=9"


def test_elasticsearch_upstream_gets_the_elasticsearch_dialect(encoder):
    """Against a stub answering as Elasticsearch 8.15 with a ``sparse_vector`` field: the
    search it receives is the ES dialect's ``sparse_vector`` query, media types untouched."""
    product = [("X-Elastic-Product", "Elasticsearch"), ("Content-Type", "application/json")]
    searches = []

    def handler(request):
        path = request.target.split("?")[0]
        if path == "/":
            info = {"version": {"number": "8.15.0", "build_flavor": "default"}}
            return 200, product, json.dumps(info).encode()
        if path == "/docs/_mapping":
            mapping = {"docs": {"mappings": {"properties": {"emb": {"type": "sparse_vector"}}}}}
            return 200, product, json.dumps(mapping).encode()
        if path == "/_cluster/settings":
            return 200, product, b'{"persistent":{},"transient":{},"defaults":{}}'
        if path == "/docs/_search":
            searches.append(request)
            hits = {"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}}
            return 200, product, json.dumps({"took": 1, "timed_out": False, **hits}).encode()
        return 404, product, b"{}"

    with StubServer(handler) as stub, running_proxy(stub.url, encoder) as app:
        es = elasticsearch.Elasticsearch(app.state.url, max_retries=0)
        es.search(index="docs", query={"splade": {"emb": {"query": TEXT, "top_k": 4}}}, size=3)
    [request] = searches
    builder = QueryBuilder.for_engine(
        "elasticsearch", version="8.15.0", field="emb", field_type="sparse_vector"
    )
    expected = builder.sparse_query(encoder.encode_queries([TEXT]), pruning=QueryPruning(top_k=4))
    assert json.loads(request.body) == {"query": expected, "size": 3}
    assert expected["sparse_vector"]["prune"] is False
    content_type = dict((k.lower(), v) for k, v in request.headers)["content-type"]
    assert content_type.startswith("application/vnd.elasticsearch+json")


def test_mapping_changed_behind_the_proxy_is_noticed(encoder):
    """The field is changed directly on the cluster (not through the proxy) from
    rank_features to sparse_vector: the cached facts are stale, the cluster refuses the
    rewritten search with a 400, the proxy re-reads the mapping and sends the query for the
    new type. (A stub engine: the emulator accepts either query on either field; on real
    engines a rank_feature query on a sparse_vector field fails to create the query.)"""
    state = {"type": "rank_features"}
    product = [("Content-Type", "application/json")]
    searches = []

    def handler(request):
        path = request.target.split("?")[0]
        if path == "/":
            info = {"version": {"number": "3.3.0", "distribution": "opensearch"}}
            return 200, product, json.dumps(info).encode()
        if path == "/docs/_mapping":
            mapping = {"docs": {"mappings": {"properties": {"emb": {"type": state["type"]}}}}}
            return 200, product, json.dumps(mapping).encode()
        if path == "/_cluster/settings":
            return 200, product, b'{"persistent":{},"transient":{},"defaults":{}}'
        if path == "/docs/_search":
            body = json.loads(request.body)
            searches.append(body)
            wants = "neural_sparse" if state["type"] == "sparse_vector" else "rank_feature"
            if wants not in json.dumps(body):
                error = {"type": "query_shard_exception", "reason": "failed to create query"}
                return 400, product, json.dumps({"error": error, "status": 400}).encode()
            return 200, product, b'{"took":1,"hits":{"hits":[]}}'
        return 404, product, b"{}"

    body = {"query": {"splade": {"emb": TEXT}}}
    with StubServer(handler) as stub, running_proxy(stub.url, encoder) as app:
        assert post_json(app, "/docs/_search", body)[0] == 200
        state["type"] = "sparse_vector"
        status, out = post_json(app, "/docs/_search", body)
    assert status == 200, out
    assert len(searches) == 3  # rank_feature (ok), rank_feature (refused), neural_sparse
    assert "rank_feature" in json.dumps(searches[1])
    assert "neural_sparse" in json.dumps(searches[2])
