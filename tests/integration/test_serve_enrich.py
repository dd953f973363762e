"""``splade-es serve --enrich``: documents apps index themselves, through the official
clients, get exactly the vectors ``splade-es ingest`` gives them.

Engine facts the write path rests on (checked here against the real node):
- bulk item metadata ``if_seq_no`` / ``if_primary_term`` make an ``index`` conditional
  (opensearch-project/OpenSearch 2.19 server/.../action/bulk/BulkRequestParser.java reads
  ``if_seq_no``/``if_primary_term`` for every action; elastic/elasticsearch the same since 6.7);
- ``_mget`` answers ``_seq_no``/``_primary_term`` for found documents (GetResult#toXContent);
- partial ``doc`` updates merge maps recursively and replace other values
  (XContentHelper#update, OpenSearch 2.19 and Elasticsearch 8/9 alike).
"""

from __future__ import annotations

import json
import threading

import elasticsearch
import elasticsearch.helpers
import opensearchpy
import opensearchpy.helpers
import pytest

from splade_es import SpladeEncoder, create_index
from splade_es.ingest import IngestConfig, ingest
from splade_es.serve.enrich import EnrichConfig, EnrichRule
from tests.integration.corpus import make_documents
from tests.integration.serve_support import StubServer, forward_to, raw_request, running_proxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


def enrich(*patterns: str, **options) -> EnrichConfig:
    return EnrichConfig(rules=tuple(EnrichRule(p) for p in patterns), **options)


@pytest.fixture
def target(cluster, index_name):
    create_index(cluster.client, index_name, replicas=0)
    return index_name


@pytest.fixture
def proxy(cluster, encoder):
    with running_proxy(cluster.url, encoder, enrich=enrich("splade-es-test-*")) as app:
        yield app


def client_for(url: str, **options) -> opensearchpy.OpenSearch:
    return opensearchpy.OpenSearch(hosts=[url], **options)


def stored(cluster, index: str) -> dict[str, dict]:
    cluster.client.indices.refresh(index=index)
    body = {"size": 10_000, "query": {"match_all": {}}}
    return {h["_id"]: h["_source"] for h in cluster.client.search(index=index, body=body)["hits"]["hits"]}


def ingested_vectors(cluster, index_name, encoder, docs) -> dict[str, dict[str, float]]:
    """What ``splade-es ingest`` writes for ``docs``, read back."""
    reference = f"{index_name}-ingest"
    ingest(
        cluster.client,
        [{**d, "_id": d["id"]} for d in docs],
        encoder=encoder,
        config=IngestConfig(index=reference, create=True, add_id_field=False),
    )
    try:
        return {i: s["splade"] for i, s in stored(cluster, reference).items()}
    finally:
        cluster.client.indices.delete(index=reference)


def assert_same_vectors(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key, weight in want.items():
        assert got[key] == pytest.approx(weight, rel=1e-5, abs=1e-6), key


def test_bulk_helper_documents_get_the_vectors_ingest_gives(cluster, target, proxy, encoder):
    docs = make_documents(120, seed=3)
    app = client_for(proxy.state.url)
    actions = [{"_index": target, "_id": d["id"], "_source": d} for d in docs]
    indexed, errors = opensearchpy.helpers.bulk(app, actions, chunk_size=50)
    assert (indexed, errors) == (120, [])
    copies = stored(cluster, target)
    want = ingested_vectors(cluster, target, encoder, docs)
    assert sorted(copies) == sorted(want)
    for doc in docs:
        copy = copies[doc["id"]]
        assert {k: v for k, v in copy.items() if k != "splade"} == doc  # the app's fields as sent
        assert_same_vectors(copy["splade"], want[doc["id"]])
    metrics = raw_request(proxy.state.url, "GET", "/_splade/metrics")[2].decode()
    assert "splade_es_documents_enriched_total 120.0" in metrics
