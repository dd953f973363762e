"""Issue 12: what a new user hits in the first hour, end to end against the test cluster."""

from __future__ import annotations

import pytest

from splade_es import (
    IngestConfig,
    QueryBuilder,
    SpladeEncoder,
    create_index,
    evaluate,
    explain,
    ingest,
    search,
)
from tests.integration.corpus import make_documents

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


def test_what_connect_returns_is_accepted_wherever_a_client_is(cluster, index_name, encoder):
    connected = cluster.cluster  # a splade_es.Cluster, as connect() returns it
    create_index(connected, index_name, replicas=0)
    docs = make_documents(20, seed=4)
    report = ingest(
        connected, docs, encoder=encoder, config=IngestConfig(index=index_name, id_field="id")
    )
    assert report.indexed == 20
    cluster.client.indices.refresh(index=index_name)
    builder = QueryBuilder.for_index(connected, index_name)
    result = search(connected, index_name, docs[0]["text"], encoder=encoder, builder=builder)
    assert result.hits
    why = explain(
        connected,
        index_name,
        result.hits[0].id,
        encoder.encode_queries([docs[0]["text"]]),
        builder=builder,
    )
    assert why.score == pytest.approx(result.hits[0].score, rel=1e-5)
    queries = {"q0": docs[0]["text"]}
    scored = evaluate(
        connected, index_name, queries, {"q0": {result.hits[0].id: 1}}, encoder=encoder
    )
    assert scored.metrics["mrr@10"] == pytest.approx(1.0)
