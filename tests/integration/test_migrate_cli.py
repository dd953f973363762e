"""``splade-es migrate`` as a user runs it: a missing source index is named as such."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from splade_es import Hybrid, SpladeEncoder, search
from splade_es.cli import main
from splade_es.evaluate import score_run
from tests.integration.test_doctor import credentials

pytestmark = pytest.mark.integration


def test_a_missing_source_is_named_before_anything_counts_it(cluster, tiny_bert_dir):
    source = f"splade-es-test-missing-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        main,
        [
            "migrate",
            "--url",
            cluster.url,
            "--source",
            source,
            "--target",
            f"{source}-splade",
            "--alias",
            f"{source}-alias",
            "--model",
            str(tiny_bert_dir),
        ],
        env=credentials(),
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.stderr
    assert lines == [f"error: source index {source!r} does not exist"]
    assert not cluster.client.indices.exists(index=f"{source}-splade")


def test_the_gate_fuses_an_rrf_hybrid_in_the_client_on_any_cluster(
    cluster, index_name, search_model_dir, tmp_path
):
    """``--hybrid-method rrf --fusion client``: the gate's hybrid row is fused by splade-es
    (one _msearch), so it runs where the engine has no fusion (the emulator, a node without
    neural-search) and its RR@10 is that of the client-fused ranking."""
    import json

    from tests.integration.corpus import make_documents
    from tests.integration.test_migrate import SOURCE_BODY, create_bm25_index

    docs = make_documents(40, seed=8)
    # One shard: RRF gives equal scores to many documents, and across shards the engine's
    # order of equal scores can change between two requests, and with it the fused order.
    one_shard = {**SOURCE_BODY, "settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    cluster.client.indices.create(index=index_name, body=one_shard)
    alias, target = create_bm25_index(cluster.client, index_name, docs, created=True)
    queries = tmp_path / "queries.jsonl"
    qrels = tmp_path / "qrels.tsv"
    judged = range(0, 40, 5)
    queries.write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": docs[i]["title"]}) + "\n" for i in judged)
    )
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{docs[i]['id']}\t1\n" for i in judged)
    )
    args = ["migrate", "--url", cluster.url, "--source", index_name, "--target", target]
    args += ["--alias", alias, "--model", search_model_dir, "--gate-queries", queries]
    args += ["--gate-qrels", qrels, "--min-ndcg-gain", "-1", "--hybrid-method", "rrf"]
    args += ["--fusion", "client", "--json", "--dead-letter", tmp_path / "dead.jsonl"]
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], env=credentials())
        assert result.exit_code == 0, result.output
        rows = {row["label"]: row for row in json.loads(result.stdout)["gate"]["rows"]}
        hybrid = rows["hybrid rrf 0.5 BM25 (new)"]
        # The same measures as search(fusion="client")'s hits give, scored as the gate scores
        # (ir-measures orders equal scores by document id, as trec_eval does).
        encoder = SpladeEncoder.from_pretrained(str(search_model_dir))
        hybrid_spec = Hybrid(bm25_weight=0.5, text_fields=("title", "text"), method="rrf")
        run = {}
        for i in judged:
            found = search(
                cluster.client,
                target,
                docs[i]["title"],
                encoder=encoder,
                k=100,
                hybrid=hybrid_spec,
                fusion="client",
            )
            assert found.fusion == "client" and found.hits
            run[f"q{i}"] = {hit.id: hit.score for hit in found.hits}
        expected = score_run(run, {f"q{i}": {docs[i]["id"]: 1} for i in judged})
        for name in ("ndcg@10", "mrr@10", "recall@100"):
            assert hybrid["metrics"][name] == pytest.approx(expected[name], abs=1e-9), name
        assert expected["mrr@10"] > 0
    finally:
        cluster.client.indices.delete(index=target, ignore_unavailable=True)
