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


def test_a_resumed_migration_shows_what_was_already_copied(cluster, index_name, search_model_dir):
    from click.testing import CliRunner

    from splade_es.cli import main
    from tests.integration.test_migrate import create_bm25_index

    docs = make_documents(12, seed=8)
    alias, target = create_bm25_index(cluster.client, index_name, docs)
    command = [
        "migrate",
        "--url",
        cluster.url,
        "--source",
        index_name,
        "--target",
        target,
        "--alias",
        alias,
        "-m",
        str(search_model_dir),
    ]
    runner = CliRunner()
    try:
        first = runner.invoke(main, [*command, "--quiet"])
        assert first.exit_code == 0, first.output
        again = runner.invoke(main, command)
        assert again.exit_code == 0, again.output
    finally:
        cluster.client.indices.delete(index=target, ignore_unavailable=True)
    assert "12 of 12 documents already copied" in again.output
    read_bar = next(line for line in again.output.splitlines() if line.startswith("copy: read"))
    assert "(12 already copied)" in read_bar and "12/12" in read_bar
