"""``splade-es compare`` against the test cluster: columns as ``search`` ranks them, the
contributions add up to SPLADE scores, rank changes against the first column, measures equal
to ``evaluate``'s, a broken column reported beside the others."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from splade_es import SpladeEncoder, evaluate, search
from splade_es.cli import main
from tests.integration.serve_support import index_corpus

pytestmark = pytest.mark.integration

N_DOCS = 30


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture
def indexed(cluster, index_name, encoder):
    return index_corpus(cluster, index_name, encoder, N_DOCS)


def compare(cluster, index, model, *args):
    result = CliRunner().invoke(
        main,
        ["compare", "--url", cluster.url, "--index", index, "-m", str(model), *map(str, args)],
    )
    return result


def documents(cluster, index):
    hits = cluster.client.search(index=index, body={"size": N_DOCS, "query": {"match_all": {}}})
    return {h["_id"]: h["_source"] for h in hits["hits"]["hits"]}


def test_one_query_bm25_against_splade(cluster, indexed, encoder, search_model_dir):
    text = documents(cluster, indexed)["doc-3"]["title"]
    out = compare(cluster, indexed, search_model_dir, "--query", text, "--k", 5, "--json")
    assert out.exit_code == 0, out.output
    answer = json.loads(out.output)
    assert answer["configurations"] == ["bm25", "splade"]
    [query] = answer["queries"]
    bm25, splade = query["columns"]
    assert not bm25["error"] and not splade["error"]
    # The SPLADE column is what search() ranks, its hits' contributions add up to the score.
    expected = search(cluster.client, indexed, text, encoder=encoder, k=5)
    assert [h["id"] for h in splade["hits"]] == [h.id for h in expected.hits]
    for hit in splade["hits"]:
        assert hit["contributions"], hit
        total = sum(c["contribution"] for c in hit["contributions"])
        assert total == pytest.approx(hit["score"], rel=1e-5)
        for c in hit["contributions"]:
            assert c["contribution"] == pytest.approx(c["query_weight"] * c["doc_weight"])
    # Rank changes: against BM25's ranking; no BM25 hit has contributions.
    baseline = [h["id"] for h in bm25["hits"]]
    for rank, hit in enumerate(splade["hits"]):
        was = baseline.index(hit["id"]) if hit["id"] in baseline else None
        assert hit["change"] == (None if was is None else was - rank)
    assert all(not h["contributions"] for h in bm25["hits"])
    assert splade["query_tokens"] and all(t["kept"] for t in splade["query_tokens"])


def test_pruned_tokens_are_listed_apart(cluster, indexed, search_model_dir):
    text = documents(cluster, indexed)["doc-5"]["text"]
    out = compare(
        cluster, indexed, search_model_dir, "--query", text, "--config", "splade",
        "--config", "splade,top_k=2,name=top2", "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    whole, pruned = json.loads(out.output)["queries"][0]["columns"]
    kept = [t for t in pruned["query_tokens"] if t["kept"]]
    assert len(kept) == 2 and len(pruned["query_tokens"]) == len(whole["query_tokens"]) > 2
    kept_tokens = {t["token"] for t in kept}
    for hit in pruned["hits"]:
        assert {c["token"] for c in hit["contributions"]} <= kept_tokens
        assert not {c["token"] for c in hit["pruned"]} & kept_tokens
        total = sum(c["contribution"] for c in hit["contributions"])
        assert total == pytest.approx(hit["score"], rel=1e-5)
    assert any(hit["pruned"] for hit in pruned["hits"])


def test_judged_queries_score_as_evaluate_scores(
    cluster, indexed, encoder, search_model_dir, tmp_path
):
    docs = documents(cluster, indexed)
    queries = {f"q{i}": docs[f"doc-{i}"]["text"] for i in range(6)}
    qrels = {f"q{i}": {f"doc-{i}": 1, f"doc-{i + 10}": 1} for i in range(6)}
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    )
    rows = [f"{q}\t{d}\t{r}" for q, ds in qrels.items() for d, r in ds.items()]
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    out = compare(
        cluster, indexed, search_model_dir,
        "--queries", tmp_path / "queries.jsonl", "--qrels", tmp_path / "qrels.tsv", "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    answer = json.loads(out.output)
    assert answer["judged_queries"] == 6
    for mode in ("bm25", "splade"):
        expected = evaluate(
            cluster.client, indexed, queries, qrels, encoder=encoder if mode != "bm25" else None,
            mode=mode,
        )  # fmt: skip
        for name, value in expected.metrics.items():
            assert answer["metrics"][mode][name] == pytest.approx(value, abs=1e-9), (mode, name)
    record = answer["records"]["splade"]["ndcg@10"]
    assert record["wins"] + record["ties"] + record["losses"] == 6
    per_query = [q["measures"] for q in answer["queries"]]
    wins = sum(q["splade"]["ndcg@10"] > q["bm25"]["ndcg@10"] + 1e-9 for q in per_query)
    assert record["wins"] == wins
    # The tables: one per query and the measures.
    table = compare(
        cluster, indexed, search_model_dir,
        "--queries", tmp_path / "queries.jsonl", "--qrels", tmp_path / "qrels.tsv",
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "6 judged queries" in table.output and "W / T / L" in table.output


def test_a_column_that_cannot_run_says_why_beside_the_others(cluster, indexed, search_model_dir):
    out = compare(
        cluster, indexed, search_model_dir, "--query", "tax", "--config", "bm25",
        "--config", "splade,index=splade-es-test-no-such-index", "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    bm25, missing = json.loads(out.output)["queries"][0]["columns"]
    assert bm25["error"] is None
    assert missing["error"] and "no-such-index" in missing["error"]
    assert missing["index"] == "splade-es-test-no-such-index"


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        (["bm25"], "compare 2 to 4 configurations"),
        (["bm25", "hybrid:nope"], "method is one of"),
        (["splade", "splade"], "is given twice"),
    ],
)
def test_bad_configurations_stop_with_one_line(
    cluster, indexed, search_model_dir, configs, message
):
    args = [a for c in configs for a in ("--config", c)]
    out = compare(cluster, indexed, search_model_dir, "--query", "tax", *args)
    assert out.exit_code == 2
    assert message in out.output


def test_hybrids_are_fused_as_search_fuses_them(cluster, indexed, encoder, search_model_dir):
    from splade_es import Hybrid

    text = documents(cluster, indexed)["doc-7"]["text"]
    out = compare(
        cluster, indexed, search_model_dir, "--query", text, "--config", "splade",
        "--config", "hybrid:rrf,fusion=client", "--config", "hybrid:linear:0.3,fusion=client",
        "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    _, rrf, linear = json.loads(out.output)["queries"][0]["columns"]
    for column, hybrid in (
        (rrf, Hybrid(method="rrf")),
        (linear, Hybrid(method="linear", bm25_weight=0.3)),
    ):
        assert column["error"] is None and "client" in column["fusion_note"]
        expected = search(
            cluster.client, indexed, text, encoder=encoder, hybrid=hybrid, fusion="client"
        )
        assert [h["id"] for h in column["hits"]] == [h.id for h in expected.hits]
        assert [h["score"] for h in column["hits"]] == pytest.approx(
            [h.score for h in expected.hits], rel=1e-6
        )


def test_compare_ui_serves_the_page_on_loopback(cluster, indexed, search_model_dir, tmp_path):
    import os
    import subprocess
    import sys
    import time
    from urllib.parse import urlsplit

    from splade_es.beir import read_qrels
    from tests.integration.serve_support import free_port, raw_request

    port = free_port()
    command = [
        sys.executable, "-m", "splade_es.cli", "compare", "--url", cluster.url,
        "--index", indexed, "-m", str(search_model_dir), "--config", "bm25", "--config",
        "splade", "--ui", "--port", str(port), "--qrels", str(tmp_path / "j.tsv"),
        "--query", "tax code",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        url = process.stdout.readline().decode().strip()
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", port, "/_splade/ui")
        assert "q=tax+code" in parts.query and f"index={indexed}" in parts.query
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if raw_request(base, "GET", "/_splade/health")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.3)
        status, _, page = raw_request(base, "GET", parts.path + "?" + parts.query)
        assert status == 200 and b'data-testid="query-input"' in page
        headers = {"Content-Type": "application/json"}
        body = json.dumps({"q": "tax code"}).encode()
        status, _, found = raw_request(base, "POST", "/_splade/ui/search", body, headers)
        assert status == 200, found
        columns = json.loads(found)["columns"]
        assert [c["label"] for c in columns] == ["bm25", "splade"] and columns[1]["hits"]
        doc = columns[1]["hits"][0]["id"]
        judge = json.dumps({"q": "tax code", "id": doc, "relevance": 1}).encode()
        status, _, judged = raw_request(base, "POST", "/_splade/ui/judge", judge, headers)
        assert status == 200, judged
        assert list(read_qrels(tmp_path / "j.tsv").values()) == [{doc: 1}]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_typed_query_finds_the_pages_judgments(cluster, indexed, search_model_dir, tmp_path):
    from splade_es.workbench.judgments import Judgments

    text = documents(cluster, indexed)["doc-3"]["title"]
    Judgments(tmp_path / "j.tsv").judge(text, "doc-3", 1)  # as the page writes it
    out = compare(
        cluster, indexed, search_model_dir, "--query", f" {text} ", "--qrels", tmp_path / "j.tsv",
        "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    answer = json.loads(out.output)
    assert answer["judged_queries"] == 1
    [query] = answer["queries"]
    assert set(query["measures"]) == {"bm25", "splade"}
    table = compare(
        cluster, indexed, search_model_dir, "--query", text, "--qrels", tmp_path / "j.tsv"
    )
    assert table.exit_code == 0 and "W / T / L" in table.output and "baseline" in table.output
