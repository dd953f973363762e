"""Issue 12: what a new user hits in the first hour, end to end against the test cluster."""

from __future__ import annotations

import json
import re

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
from splade_es.engines.base import Hybrid
from splade_es.exceptions import SpladeEsError
from splade_es.search import create_hybrid_pipeline
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


def small_index(cluster, index_name, encoder, n=20):
    docs = make_documents(n, seed=6)
    create_index(cluster.client, index_name, replicas=0)
    ingest(
        cluster.client, docs, encoder=encoder, config=IngestConfig(index=index_name, id_field="id")
    )
    cluster.client.indices.refresh(index=index_name)
    return docs


def cli(*args, env=None):
    from click.testing import CliRunner

    from splade_es.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def test_a_query_pruned_to_nothing_matches_nothing(
    cluster, index_name, encoder, search_model_dir, tmp_path
):
    docs = small_index(cluster, index_name, encoder)
    common = ["--url", cluster.url, "--index", index_name, "-m", search_model_dir]
    found = cli("search", *common, "--query-min-weight", "100", docs[0]["title"])
    assert found.exit_code == 2, found.output
    assert "pruning (minimum weight 100) removed all" in found.output
    assert "relax --query-min-weight" in found.output
    assert "score" not in found.output and "empty=" not in found.output

    (tmp_path / "q.jsonl").write_text(
        '{"_id": "q1", "text": "tax code"}\n{"_id": "q2", "text": " "}\n'
    )
    (tmp_path / "qrels.tsv").write_text(
        f"query-id\tcorpus-id\tscore\nq1\t{docs[0]['id']}\t1\nq2\t{docs[1]['id']}\t1\n"
    )
    scored = cli(
        "evaluate",
        *common,
        "--query-min-weight",
        "100",
        "--queries",
        tmp_path / "q.jsonl",
        "--qrels",
        tmp_path / "qrels.tsv",
        "--json",
    )
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.stdout)
    assert report["empty_queries"] == 2 and report["ndcg@10"] == 0.0  # misses, not match-alls


def test_cli_explain_contributions_sum_to_the_score(cluster, index_name, encoder, search_model_dir):
    docs = small_index(cluster, index_name, encoder)
    common = ["--url", cluster.url, "--index", index_name, "-m", search_model_dir]
    text = docs[3]["title"]
    found = json.loads(cli("search", *common, "--json", "--k", "3", text).stdout)
    best = found["hits"][0]
    explained = cli("explain", *common, "--id", best["id"], "--json", text)
    assert explained.exit_code == 0, explained.output
    why = json.loads(explained.stdout)
    assert why["engine_score"] == pytest.approx(best["score"], rel=1e-6)
    assert sum(c["contribution"] for c in why["contributions"]) == pytest.approx(
        best["score"], rel=1e-5
    )
    for c in why["contributions"]:
        assert c["contribution"] == pytest.approx(c["query_weight"] * c["doc_weight"])

    table = cli("explain", *common, "--id", best["id"], text)
    assert table.exit_code == 0, table.output
    for header in ("token", "query weight", "stored weight", "contribution", "sum"):
        assert header in table.output
    assert (
        f"{why['score']:.4f}" in table.output
        and f"engine _score {best['score']:.4f}" in table.output
    )
    missing = cli("explain", *common, "--id", "no-such-doc", text)
    assert missing.exit_code == 2 and "'no-such-doc' not found" in missing.output


def test_search_and_evaluate_share_their_mode_options(
    cluster, index_name, encoder, search_model_dir, tmp_path, monkeypatch
):
    docs = small_index(cluster, index_name, encoder)
    common = ["--url", cluster.url, "--index", index_name]
    model = ["-m", search_model_dir]
    text = docs[5]["title"]
    old = json.loads(cli("search", *common, *model, "--json", "--hybrid", "0.3", text).stdout)
    new = json.loads(
        cli(
            "search", *common, *model, "--json", "--mode", "hybrid", "--hybrid-weight", "0.3", text
        ).stdout
    )
    splade = json.loads(cli("search", *common, *model, "--json", text).stdout)
    assert [h["score"] for h in old["hits"]] == [h["score"] for h in new["hits"]]
    assert [h["score"] for h in new["hits"]] != [h["score"] for h in splade["hits"]]
    conflict = cli("search", *common, *model, "--hybrid", "0.3", "--mode", "bm25", text)
    assert conflict.exit_code == 2 and "--hybrid 0.3 means --mode hybrid" in conflict.output

    # BM25 needs no model, in search and evaluate alike.
    no_model = {"SPLADE_ES_MODEL": None}
    bm25 = cli("search", *common, "--mode", "bm25", "--json", text, env=no_model)
    assert bm25.exit_code == 0, bm25.output
    assert json.loads(bm25.stdout)["hits"][0]["id"] == docs[5]["id"]
    (tmp_path / "q.jsonl").write_text(json.dumps({"_id": "q", "text": text}) + "\n")
    (tmp_path / "qrels.tsv").write_text(f"query-id\tcorpus-id\tscore\nq\t{docs[5]['id']}\t1\n")
    files = ["--queries", tmp_path / "q.jsonl", "--qrels", tmp_path / "qrels.tsv"]
    scored = cli("evaluate", *common, "--mode", "bm25", *files, "--json", env=no_model)
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["mrr@10"] == pytest.approx(1.0)
    # Where no default model is on disk either (no ../shared here, empty caches).
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    nowhere = {**no_model, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    needs = cli("evaluate", *common, "--mode", "hybrid", *files, env=nowhere)
    assert needs.exit_code == 2 and "--mode hybrid needs --model" in needs.output
    hybrid = cli("evaluate", *common, *model, "--hybrid", "0.3", *files, "--json")
    assert hybrid.exit_code == 0, hybrid.output


def test_ingest_keeps_refused_records_without_being_told_where(
    cluster, index_name, search_model_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(
        '{"_id": "a", "text": "tax code"}\n{"_id": "b", "title": 5}\n{broken\n'
    )
    command = ["ingest", "--url", cluster.url, "--index", index_name, "-m", search_model_dir]
    command += ["--input", tmp_path / "in.jsonl", "--create"]
    result = cli(*command)
    assert result.exit_code == 1, result.output
    default = tmp_path / f"{index_name}.dead-letter.jsonl"
    dead = [json.loads(line) for line in default.read_text().splitlines()]
    assert [(d["position"], d["id"]) for d in dead] == [(2, "b"), (3, None)]
    assert "nowhere" not in result.output
    assert f"see {default.name}" in " ".join(result.output.split())

    # With a checkpoint, next to it.
    again = cli(*command, "--checkpoint", tmp_path / "job.ck", "--json")
    assert again.exit_code == 1
    assert json.loads(again.stdout)["dead_letter"] == str(tmp_path / "job.dead-letter.jsonl")
    assert len((tmp_path / "job.dead-letter.jsonl").read_text().splitlines()) == 2


def test_ingest_warns_about_an_empty_input(cluster, index_name, search_model_dir, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = cli(
        "ingest",
        "--url",
        cluster.url,
        "--index",
        index_name,
        "-m",
        search_model_dir,
        "--input",
        tmp_path / "empty.jsonl",
        "--create",
    )
    assert result.exit_code == 0, result.output
    assert "holds no records: nothing was indexed" in " ".join(result.output.split())


def test_engine_errors_with_brackets_reach_the_user_intact(
    cluster, index_name, encoder, search_model_dir
):
    docs = small_index(cluster, index_name, encoder)
    common = ["--url", cluster.url, "--index", index_name, "-m", search_model_dir]
    hybrid = ["--mode", "hybrid", "--hybrid-method", "rrf", "--fusion", "engine"]
    result = cli("search", *common, *hybrid, docs[0]["title"])
    if result.exit_code == 0:  # an engine with rrf hybrids (real OpenSearch 2.19+, ES trial)
        assert docs[0]["id"] in result.output
        return
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no MarkupError traceback
    message = " ".join(result.output.split())
    assert message.startswith("error: ")
    # The engine's own words, intact: "no handler found for uri [/_search/pipeline/...]" on
    # the emulator, "Invalid processor type score-ranker-processor" on the 3.3 node.
    with pytest.raises(SpladeEsError) as raised:
        create_hybrid_pipeline(cluster.client, Hybrid(method="rrf"))
    engine_words = " ".join(str(raised.value).split())
    assert engine_words in message
    if "[" in engine_words:
        assert re.search(r"\[[^\]]+\]", message)
