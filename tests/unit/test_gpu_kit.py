"""The GPU kit (benchmarks/gpu.py) runs between GPU loans: its smoke mode on the CPU, with a
tiny random model and synthetic documents, must produce every section's rows."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.py"

# One row of each of these per section means the section ran to the end.
SECTION_MEASURES = {
    "encode": ("encode_docs_per_s", "speedup_vs_sentence_transformers", "tokenize_share"),
    "fidelity": ("max_abs_diff_vs_fp32", "max_abs_diff_vs_splade_es_fp32"),
    "ndcg": ("ndcg@10", "ndcg@10_minus_fp32"),
    "queries": ("query_latency_p50_ms", "query_latency_p99_ms", "batcher_queries_per_s"),
    "ingest": ("encode_only_docs_per_s", "ingest_docs_per_s", "ingest_vs_encode_only"),
}
RATES = {"docs/s", "queries/s", "ms", "x", "MiB"}


def load_kit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_kit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["gpu_kit"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu-kit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--device",
            "cpu",
            "--model",
            str(tiny_bert_dir),
            "--data",
            "synthetic",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-results.json").read_text())
    report["_markdown"] = (out / "gpu-results.md").read_text()
    return report


def test_smoke_report_names_the_machine(smoke: dict) -> None:
    assert smoke["device"].startswith("cpu")
    assert smoke["torch"] and smoke["machine"]["torch"] == smoke["torch"]
    assert smoke["profile"] == "smoke"
    assert smoke["errors"] == []
    # The smoke budget is 100 s; a measurement started before a cap may finish after it.
    assert smoke["seconds"] < 150


def test_smoke_rows_are_well_formed(smoke: dict) -> None:
    rows = smoke["rows"]
    assert isinstance(rows, list) and rows
    for row in rows:
        for key in ("measure", "model", "impl", "dtype", "value", "unit"):
            assert key in row, (key, row)
        assert math.isfinite(row["value"]), row
        if row["unit"] in RATES:
            assert row["value"] > 0, row


def test_every_section_ran(smoke: dict) -> None:
    measures = {row["measure"] for row in smoke["rows"]}
    for section, wanted in SECTION_MEASURES.items():
        missing = [m for m in wanted if m not in measures]
        assert not missing, f"section {section} lacks {missing}; skipped: {smoke['skipped']}"
    models = {row["model"] for row in smoke["rows"] if row["measure"] == "encode_docs_per_s"}
    assert "distilbert" in models  # the throughput target, measured first
    impls = {row["impl"] for row in smoke["rows"] if row["measure"] == "encode_docs_per_s"}
    assert impls == {"splade-es", "sentence-transformers"}


def test_fidelity_within_sane_bounds(smoke: dict) -> None:
    rows = smoke["rows"]
    for row in rows:
        if row["measure"] == "max_abs_diff_vs_splade_es_fp32":
            # Same formula, same precision: float rounding only.
            assert 0 <= row["value"] < 1e-3, row
        elif row["measure"] == "max_abs_diff_vs_fp32":
            # bf16 keeps 8 bits of mantissa: a few parts in a thousand of the largest weight.
            assert row["dtype"] in ("bfloat16", "float16")
            assert 0 <= row["value"] <= 0.05 * max(row["max_weight"], 1.0), row
        elif row["measure"] == "ndcg@10":
            assert 0 <= row["value"] <= 1, row
        elif row["measure"] == "tokenize_share":
            assert 0 < row["value"] < 1, row
    sweep = [r for r in rows if r["measure"] == "encode_docs_per_s"]
    assert all(r["batch_size"] in (4, 16) and r["sweep"] for r in sweep)


def test_markdown_has_the_tables(smoke: dict) -> None:
    text = smoke["_markdown"]
    for title in ("## Document encoding", "## Fidelity", "## Queries", "## Ingest", "## Targets"):
        assert title in text
    assert "| distilbert |" in text


def test_corpus_keeps_only_judgements_of_loaded_documents(tmp_path: Path) -> None:
    kit = load_kit()
    (tmp_path / "qrels").mkdir()
    docs = [{"_id": f"d{i}", "title": f"t{i}", "text": f"text {i}"} for i in range(5)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": "q1", "text": "one"}, {"_id": "q2", "text": "two"}]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td4\t1\nq2\td0\t1\n"
    )
    corpus = kit.load_corpus(str(tmp_path), max_docs=3)
    assert corpus.doc_ids == ["d0", "d1", "d2"]
    assert corpus.texts[1] == "t1 text 1"
    assert corpus.qrels == {"q1": {"d1": 1}, "q2": {"d0": 1}}
    assert kit.take(["a", "b"], 5, offset=1) == ["b", "a", "b", "a", "b"]


def test_targets_say_not_measured_without_rows() -> None:
    kit = load_kit()
    results = kit.Results()
    results.add("ingest_vs_encode_only", 0.95, "x", **kit.tag("distilbert", "splade-es", "bf16"))
    targets = kit.targets(results, gpu=True)
    assert [t["met"] for t in targets] == [None, None, None, True]
