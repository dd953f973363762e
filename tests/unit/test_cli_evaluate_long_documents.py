"""``splade-es evaluate --corpus ... --long-documents truncate,maxpool,passages``: the modes
compared in memory, side by side, without a cluster (issue 24)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from splade_es.cli import main

LONG = " ".join(
    ["tax code section depreciation deduction property cost income expense form line"] * 3
    + ["garlic powder ounce tablespoon"] * 3
)
DOCS = [
    {"_id": "long", "title": "Tax", "text": LONG},
    {"_id": "short", "title": "Garlic", "text": "garlic powder ounce"},
    {"_id": "other", "title": "", "text": "sparse search engine cluster index"},
    {"_id": "no-text", "title": "", "text": " "},
]
QUERIES = [{"_id": "q1", "text": "garlic powder"}, {"_id": "q2", "text": "search index"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\tlong\t1\nq1\tshort\t1\nq2\tother\t1\n"


@pytest.fixture
def files(tmp_path):
    paths = {name: tmp_path / name for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv")}
    paths["corpus.jsonl"].write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    paths["queries.jsonl"].write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    paths["qrels.tsv"].write_text(QRELS)
    return {name: str(path) for name, path in paths.items()}


def evaluate(model_dir, files, *extra):
    return CliRunner().invoke(
        main,
        [
            "evaluate",
            "-m",
            str(model_dir),
            "--device",
            "cpu",
            "--queries",
            files["queries.jsonl"],
            "--qrels",
            files["qrels.tsv"],
            *extra,
        ],
    )


def test_json_has_one_object_per_mode_in_order(search_model_dir, files):
    result = evaluate(
        search_model_dir,
        files,
        "--corpus",
        files["corpus.jsonl"],
        "--long-documents",
        "truncate,maxpool,passages",
        "--window",
        "16",
        "--overlap",
        "4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["window"], out["overlap"], out["max_windows"]) == (16, 4, 64)
    modes = out["modes"]
    assert [m["mode"] for m in modes] == ["truncate", "maxpool", "passages"]
    truncate, maxpool, passages = modes
    for mode in modes:
        assert mode["queries"] == 2 and mode["documents"] == 3, "the text-less one left out"
        assert 0.0 <= mode["ndcg@10"] <= 1.0 and "mrr@10" in mode and "recall@100" in mode
    assert truncate["truncated_documents"] == 1 and truncate["windows_per_document"]["mean"] == 1
    assert maxpool["truncated_documents"] == 0 and maxpool["windows_per_document"]["p99"] > 1
    assert truncate["vectors"] == maxpool["vectors"] == 3 < passages["vectors"]
    assert truncate["postings"] < maxpool["postings"] < passages["postings"]
    assert "1 documents of" in result.stderr and "no text" in result.stderr


def test_the_table_shows_the_modes_side_by_side(search_model_dir, files):
    result = evaluate(
        search_model_dir,
        files,
        "--corpus",
        files["corpus.jsonl"],
        "--long-documents",
        "passages,truncate",
        "--window",
        "16",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["passages", "truncate"]
    header = " ".join(lines)
    for column in ("ndcg@10", "non-zeros/doc", "postings read/query", "score p50 / p95 ms"):
        assert column in header
    assert "windows of 16 tokens (overlap 3" in header, "a quarter of 14 content tokens"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--index", "i", "--long-documents", "truncate,maxpool"], "give --corpus"),
        (["--index", "i", "--window", "16"], "give --corpus"),
        ([], "--index is required (or --corpus"),
        (["--corpus", "{corpus}", "--mode", "bm25"], "--mode bm25 / hybrid need --index"),
        (["--corpus", "{corpus}", "--query-top-k", "3"], "--query-top-k applies to --index"),
        (["--corpus", "{corpus}", "--long-documents", "truncate,chunks"], "chunks: choose from"),
        (["--corpus", "{corpus}", "--window", "1000"], "'--window': must be at most"),
    ],
)
def test_what_cannot_be_evaluated_is_refused_in_one_line(search_model_dir, files, extra, message):
    args = [a.replace("{corpus}", files["corpus.jsonl"]) for a in extra]
    # --url points nowhere: a refusal that came after connecting would say so instead
    result = evaluate(search_model_dir, files, "--url", "http://127.0.0.1:9", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "connecting" not in result.output and "Traceback" not in result.output
