"""``splade_es.aio`` (item 7 of the serve issue): the async library path on
``AsyncOpenSearch`` / ``AsyncElasticsearch`` gives what the synchronous API gives."""

from __future__ import annotations

import asyncio

import elasticsearch
import opensearchpy
import pytest

from splade_es import QueryBuilder, SpladeEncoder, aio, explain, search
from splade_es.exceptions import ConnectionFailedError, InputError
from tests.integration.serve_support import StubServer, forward_to, index_corpus

pytestmark = pytest.mark.integration

TEXT = "depreciation tax deduction"


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture
def indexed(cluster, index_name, encoder):
    return index_corpus(cluster, index_name, encoder, 20)


def pairs(result):
    return [(h.id, h.score) for h in result.hits]


def test_async_opensearch_equals_the_sync_api(cluster, indexed, encoder):
    sync_builder = QueryBuilder.for_index(cluster.client, indexed)
    direct = search(cluster.client, indexed, TEXT, encoder=encoder, builder=sync_builder, k=20)
    vector = encoder.encode_queries([TEXT])
    top = direct.hits[0].id
    expected = explain(cluster.client, indexed, top, vector, builder=sync_builder)

    async def run():
        client = opensearchpy.AsyncOpenSearch(hosts=[cluster.url])
        try:
            builder = await aio.QueryBuilder.for_index(client, indexed)
            result = await aio.search(client, indexed, TEXT, encoder=encoder, builder=builder, k=20)
            explained = await aio.explain(client, indexed, top, vector, builder=builder)
            with pytest.raises(InputError, match="not found"):
                await aio.explain(client, indexed, "missing", vector, builder=builder)
            return builder, result, explained
        finally:
            await client.close()

    builder, result, explained = asyncio.run(run())
    assert (builder.dialect.engine, builder.dialect.version) == (
        sync_builder.dialect.engine,
        sync_builder.dialect.version,
    )
    assert (builder.field_type, builder.max_clauses) == (
        sync_builder.field_type,
        sync_builder.max_clauses,
    )
    assert pairs(result) == pairs(direct) and direct.hits
    assert result.request == direct.request
    assert explained == expected
    assert explained.score == pytest.approx(direct.hits[0].score, rel=1e-5)


def test_async_elasticsearch_client(cluster, indexed, encoder):
    direct = search(cluster.client, indexed, TEXT, encoder=encoder, k=20)

    async def run(url):
        client = elasticsearch.AsyncElasticsearch(url)
        try:
            return await aio.search(client, indexed, TEXT, encoder=encoder, k=20)
        finally:
            await client.close()

    # The emulator refuses Elasticsearch's versioned media types; the gate reads them as
    # plain JSON, as Elasticsearch does.
    with StubServer(forward_to(cluster.url, plain_json=True)) as gate:
        result = asyncio.run(run(gate.url))
    assert pairs(result) == pairs(direct)


def test_client_errors_become_ours(cluster, encoder):
    async def run():
        client = opensearchpy.AsyncOpenSearch(hosts=["http://127.0.0.1:9"], max_retries=0)
        try:
            await aio.QueryBuilder.for_index(client, "docs")
        finally:
            await client.close()

    with pytest.raises(ConnectionFailedError, match="reading cluster info"):
        asyncio.run(run())
