"""``--fusion engine|client|auto`` on ``search`` and ``evaluate``, end to end against the test
cluster with the tiny search model: the client's fusion works on every cluster (the emulator
included, which has no hybrid pipelines), ``auto`` says which fusion ran, and where the engine
fuses too (OpenSearch with neural-search), both give the same hits and scores."""

from __future__ import annotations

import json

import pytest

from splade_es import IngestConfig, SpladeEncoder, create_index, ingest
from tests.integration.corpus import make_documents
from tests.integration.test_fusion_node import assert_same_fusion

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


def cli(*args):
    from click.testing import CliRunner

    from splade_es.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def engine_fuses(cluster, method: str) -> bool:
    from splade_es.engines import dialect_for

    dialect = dialect_for(cluster.engine, cluster.version)
    return (
        cluster.engine == "opensearch"
        and cluster.has_plugin("neural")
        and method in dialect.hybrid_methods()
    )


@pytest.mark.parametrize("method", ["rrf", "linear"])
def test_search_and_evaluate_fuse_client_side(
    cluster, index_name, encoder, search_model_dir, tmp_path, method
):
    docs = make_documents(30, seed=9)
    create_index(cluster.client, index_name, replicas=0)
    ingest(
        cluster.client, docs, encoder=encoder, config=IngestConfig(index=index_name, id_field="id")
    )
    cluster.client.indices.refresh(index=index_name)
    common = ["--url", cluster.url, "--index", index_name, "-m", search_model_dir]
    hybrid = ["--mode", "hybrid", "--hybrid-method", method, "--hybrid-weight", "0.3"]
    text = docs[3]["title"]

    client = cli("search", *common, *hybrid, "--fusion", "client", "--json", text)
    assert client.exit_code == 0, client.output
    fused = json.loads(client.stdout)
    assert fused["fusion"] == "client" and fused["hits"]
    assert docs[3]["id"] in [h["id"] for h in fused["hits"]]

    auto = cli("search", *common, *hybrid, "--json", text)  # --fusion auto: the default
    assert auto.exit_code == 0, auto.output
    chosen = json.loads(auto.stdout)
    expected = "engine" if engine_fuses(cluster, method) else "client"
    assert chosen["fusion"] == expected, chosen["fusion_note"]
    assert "fusion=auto" in chosen["fusion_note"]
    # Same hits and scores whoever fused them (the engine's: one shard, the same window);
    # equal scores may come in another order (the engine breaks ties by Lucene doc number).
    worst = assert_same_fusion(
        [(h["id"], h["score"]) for h in chosen["hits"]],
        [(h["id"], h["score"]) for h in fused["hits"]],
    )
    assert worst == 0.0
    table = cli("search", *common, *hybrid, "--fusion", "client", text)
    assert table.exit_code == 0 and "fusion: " in table.output

    (tmp_path / "q.jsonl").write_text(json.dumps({"_id": "q", "text": text}) + "\n")
    (tmp_path / "qrels.tsv").write_text(f"query-id\tcorpus-id\tscore\nq\t{docs[3]['id']}\t1\n")
    files = ["--queries", tmp_path / "q.jsonl", "--qrels", tmp_path / "qrels.tsv"]
    scored = cli("evaluate", *common, *hybrid, "--fusion", "client", *files, "--json")
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.stdout)
    assert report["fusion"] == "client" and report["queries"] == 1
    assert report["recall@100"] == pytest.approx(1.0)


def test_engine_fusion_where_the_cluster_lacks_it_is_an_error(
    cluster, index_name, encoder, search_model_dir
):
    if engine_fuses(cluster, "rrf"):
        pytest.skip(f"{cluster.spec.name} fuses rrf itself")
    docs = make_documents(5, seed=2)
    create_index(cluster.client, index_name, replicas=0)
    ingest(
        cluster.client, docs, encoder=encoder, config=IngestConfig(index=index_name, id_field="id")
    )
    common = ["--url", cluster.url, "--index", index_name, "-m", search_model_dir]
    hybrid = ["--mode", "hybrid", "--hybrid-method", "rrf"]
    refused = cli("search", *common, *hybrid, "--fusion", "engine", docs[0]["title"])
    assert refused.exit_code == 2, refused.output
    works = cli("search", *common, *hybrid, "--fusion", "auto", "--json", docs[0]["title"])
    assert works.exit_code == 0, works.output
    assert json.loads(works.stdout)["fusion"] == "client"


def test_the_migration_gate_can_gate_on_a_client_fused_hybrid(
    cluster, index_name, encoder, search_model_dir
):
    from splade_es.migrate.config import Gate
    from splade_es.migrate.gate import run_gate

    docs = make_documents(30, seed=5)
    create_index(cluster.client, index_name, replicas=0)
    ingest(
        cluster.client, docs, encoder=encoder, config=IngestConfig(index=index_name, id_field="id")
    )
    queries = {f"q{i}": docs[i]["title"] for i in range(5)}
    qrels = {f"q{i}": {docs[i]["id"]: 1} for i in range(5)}
    gate = Gate(queries=queries, qrels=qrels, min_ndcg_gain=-1.0, hybrid_weight=0.4)
    result = run_gate(
        cluster.client,
        index_name,
        index_name,
        gate,
        encoder=encoder,
        text_fields=("title", "text"),
        sparse_field="splade",
        hybrid_method="rrf",
        fusion="client",
    )
    labels = [row.label for row in result.rows]
    assert labels == ["BM25 (old)", "SPLADE (new)", "hybrid rrf 0.4 BM25 (new)"]
    hybrid_row = result.rows[2]
    # Every judged document is its own query's title: both sides find it, so does the fusion.
    assert hybrid_row.metrics["ndcg@10"] > 0.5 and result.passed
