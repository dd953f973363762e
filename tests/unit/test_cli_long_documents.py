"""splade-es encode --long-documents: maxpool vectors, the windows summary, the warning on
truncated documents (issue 24)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from splade_es import SpladeEncoder
from splade_es.cli import main
from tests.vectors import assert_same_vector

LONG = " ".join(["the search engine indexes a sparse vector for each document"] * 20)


def _write(path, texts):
    path.write_text(
        "".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    )


def test_encode_maxpool_writes_the_pooled_vectors_and_reports_windows(tiny_bert_dir, tmp_path):
    source, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    _write(source, [LONG, "sparse vectors"])
    args = ["encode", "-m", str(tiny_bert_dir), "--input", str(source), "--output", str(out)]
    result = CliRunner().invoke(
        main, [*args, "--long-documents", "maxpool", "--window", "16", "--overlap", "4", "-q"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    expected = encoder.encode_documents(
        [LONG, "sparse vectors"], long_documents="maxpool", window=16, overlap=4
    )
    for line, vector in zip(lines, expected.to_dicts(), strict=True):
        assert_same_vector(line["splade"], vector)
        assert "truncated" not in line
    assert "1 of 2 documents longer than one window" in result.output
    assert "warning" not in result.output


def test_encode_truncate_warns_with_the_count(tiny_bert_dir, tmp_path):
    source, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    _write(source, [LONG, LONG, "sparse vectors"])
    args = ["encode", "-m", str(tiny_bert_dir), "--input", str(source), "--output", str(out)]
    result = CliRunner().invoke(main, [*args, "-q"])
    assert result.exit_code == 0, result.output
    assert "warning: 2 document(s) lost text past 64 tokens" in result.output
    assert [json.loads(x).get("truncated") for x in out.read_text().splitlines()] == [
        True,
        True,
        None,
    ]


def test_encode_refuses_a_bad_window_in_one_line(tiny_bert_dir, tmp_path):
    source, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    _write(source, [LONG])
    args = ["encode", "-m", str(tiny_bert_dir), "--input", str(source), "--output", str(out)]
    result = CliRunner().invoke(main, [*args, "--long-documents", "maxpool", "--window", "999"])
    assert result.exit_code == 2
    assert "'--window': must be at most the model's max length (64), got 999" in result.output
    assert "Traceback" not in result.output
