"""Every command x each bad value of each option that takes one: exit status 2 and exactly
one line on stderr, ``error: ...``, naming the option and the value; no traceback.

Values are checked before any cluster is contacted: the commands point at 127.0.0.1:9,
where nothing listens, so a check that came too late would show up as a connection error
instead of the expected line. ``{dir}``, ``{missing}`` and ``{busy}`` in a value stand for a
folder, a path that does not exist and a port something listens on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from splade_es.cli import main

UNREACHABLE = "http://127.0.0.1:9"
CLUSTER_COMMANDS = (
    "create-index",
    "ingest",
    "search",
    "explain",
    "evaluate",
    "migrate",
    "serve",
    "doctor",
)
MODEL_COMMANDS = ("encode", "ingest", "search", "explain", "evaluate", "migrate", "serve")
TEXT_FIELD_COMMANDS = ("encode", "ingest", "search", "evaluate", "migrate", "serve")


def base_args(command: str, paths: dict[str, str]) -> list[str]:
    """A command line that would run (up to contacting the cluster) but for the bad value."""
    model = ["-m", paths["model"]]
    return {
        "encode": ["encode", *model, "--input", paths["input"], "--output", paths["output"], "-q"],
        "create-index": ["create-index", "--index", "i"],
        "ingest": ["ingest", "--index", "i", *model, "--input", paths["input"], "-q"],
        "search": ["search", "--index", "i", *model, "q"],
        "explain": ["explain", "--index", "i", *model, "--id", "d", "q"],
        "evaluate": [
            "evaluate",
            "--index",
            "i",
            *model,
            "--queries",
            paths["queries"],
            "--qrels",
            paths["qrels"],
        ],
        "migrate": ["migrate", "--source", "a", "--target", "b", "--alias", "c", *model],
        "serve": ["serve", *model, "--listen", "127.0.0.1:19280"],
        "doctor": ["doctor"],
    }[command]


# (commands, option, bad value, words the line must hold besides the option and the value)
BAD_VALUES: list[tuple[tuple[str, ...], str, str, str]] = [
    # every command that talks to a cluster: where and how
    (CLUSTER_COMMANDS, "--url", "ftp://x", "http"),
    (CLUSTER_COMMANDS, "--url", "http://a:port", "http"),
    (CLUSTER_COMMANDS, "--url", "http://:9200", "host"),
    (CLUSTER_COMMANDS, "--cloud-id", "not-a-cloud-id", "Elastic Cloud id"),
    (CLUSTER_COMMANDS, "--ca-certs", "{missing}", "does not exist"),
    (CLUSTER_COMMANDS, "--engine", "solr", "not one of"),
    # the model and where it runs
    (("encode", "serve"), "--model", "{missing}", "no checkpoint"),
    (MODEL_COMMANDS, "--device", "xyz", "cuda:N"),
    (MODEL_COMMANDS, "--device", "cuda:99", "this machine"),
    (MODEL_COMMANDS, "--device", "meta", "cpu"),
    (("encode", "ingest"), "--dtype", "float8", "not one of"),
    (("encode",), "--max-length", "1", "range"),
    (("encode",), "--max-length", "99999", "2 to 64 for this model"),
    (("encode",), "--max-length", "many", "not a valid integer"),
    # sizes and counts
    (("encode", "ingest", "migrate"), "--batch-size", "0", "range"),
    (("encode", "ingest", "migrate"), "--batch-size", "x", "not a valid integer"),
    (("encode",), "--top-k", "0", "range"),
    (("encode",), "--min-weight", "-1", "range"),
    (("ingest",), "--bulk-docs", "0", "range"),
    (("ingest",), "--bulk-bytes", "0", "range"),
    (("ingest", "migrate"), "--workers", "0", "range"),
    (("ingest",), "--max-retries", "-1", "range"),
    (("create-index",), "--shards", "0", "range"),
    (("create-index",), "--replicas", "-1", "range"),
    (("migrate",), "--slices", "0", "range"),
    (("migrate",), "--max-delta", "0", "range"),
    (("migrate",), "--max-passes", "0", "range"),
    # fields and formats
    (TEXT_FIELD_COMMANDS, "--text-fields", ",", "no text fields"),
    (("ingest",), "--keep-fields", " ", "no text fields"),
    (("ingest",), "--format", "xml", "not one of"),
    (("create-index", "ingest", "migrate"), "--field-type", "dense", "not one of"),
    (("ingest",), "--shard", "x", "i/N"),
    (("ingest",), "--shard", "5/4", "i < N"),
    # queries: pruning, modes, weights, k, filters
    (("search", "explain", "evaluate"), "--query-top-k", "0", "range"),
    (("search", "explain", "evaluate"), "--query-min-weight", "-0.5", "range"),
    (("search", "explain", "evaluate"), "--query-mass", "0", "range"),
    (("search", "explain", "evaluate"), "--query-mass", "1.5", "range"),
    (("search", "evaluate"), "--mode", "dense", "not one of"),
    (("search", "evaluate"), "--hybrid-weight", "2", "range"),
    (("search", "evaluate"), "--hybrid", "-1", "range"),
    (("search", "evaluate"), "--hybrid-method", "max", "not one of"),
    (("search", "evaluate"), "--k", "0", "range"),
    (("search",), "--filter", "{", "JSON"),
    (("search",), "--filter", "[1]", "JSON object"),
    (("migrate",), "--min-ndcg-gain", "lots", "not a valid float"),
    (("migrate",), "--min-overlap", "2", "range"),
    (("migrate",), "--hybrid-weight", "-1", "range"),
    # paths
    (("encode", "ingest"), "--input", "{missing}", "does not exist"),
    (("encode",), "--output", "{dir}", "is a directory"),
    (("encode",), "--output", "{missing}/out.jsonl", "no folder"),
    (("encode", "ingest", "migrate"), "--dead-letter", "{missing}/dead.jsonl", "no folder"),
    (("ingest", "migrate"), "--checkpoint", "{missing}/state.json", "no folder"),
    (("migrate",), "--report", "{missing}/report.md", "no folder"),
    (("encode", "ingest", "migrate"), "--dead-letter", "{dir}", "is a directory"),
    (("ingest", "migrate"), "--checkpoint", "{dir}", "is a directory"),
    (("evaluate",), "--queries", "{missing}", "does not exist"),
    (("evaluate",), "--qrels", "{missing}", "does not exist"),
    (("migrate",), "--gate-queries", "{missing}", "does not exist"),
    (("migrate",), "--gate-qrels", "{missing}", "does not exist"),
    (("migrate",), "--report", "{dir}", "is a directory"),
    # serve
    (("serve",), "--listen", "nowhere", "HOST:PORT"),
    (("serve",), "--listen", "127.0.0.1:99999", "HOST:PORT"),
    (("serve",), "--listen", "127.0.0.1:{busy}", "free to listen on"),
    (("serve",), "--url", f"{UNREACHABLE},http://127.0.0.1:10", "exactly one"),
    (("serve",), "--max-batch", "0", "range"),
    (("serve",), "--max-wait-ms", "-1", "range"),
    (("serve",), "--cache-size", "-1", "range"),
    (("serve",), "--max-body-mb", "0", "range"),
    (("serve",), "--threads", "-1", "range"),
    (("serve",), "--batch-threads", "-1", "range"),
    (("serve",), "--facts-ttl", "-1", "range"),
    (("serve",), "--enrich", "a:b:c:d", "PATTERN"),
    (("serve",), "--on-encode-error", "ignore", "not one of"),
    (("serve",), "--enrich-queue", "0", "range"),
    (("serve",), "--enrich-batch", "0", "range"),
    (("serve",), "--log-level", "loud", "not one of"),
]  # fmt: skip

CASES = [
    pytest.param(command, option, value, words, id=f"{command} {option} {value}")
    for commands, option, value, words in BAD_VALUES
    for command in commands
]


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.fixture
def paths(tmp_path: Path, tiny_bert_dir: Path) -> dict[str, str]:
    (tmp_path / "in.jsonl").write_text(json.dumps({"_id": "1", "text": "tax code"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "tax"}) + "\n")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq\t1\t1\n")
    (tmp_path / "folder").mkdir()
    return {
        "model": str(tiny_bert_dir),
        "input": str(tmp_path / "in.jsonl"),
        "output": str(tmp_path / "out.jsonl"),
        "queries": str(tmp_path / "queries.jsonl"),
        "qrels": str(tmp_path / "qrels.tsv"),
        "dir": str(tmp_path / "folder"),
        "missing": str(tmp_path / "nothing-here"),
    }


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` must stop before it starts a server: starting one fails the test."""

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve started a server despite a bad option")

    monkeypatch.setattr("uvicorn.run", started)


def assert_one_error_line(result, *fragments: str) -> str:
    assert "Traceback" not in result.output + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


@pytest.mark.parametrize(("command", "option", "value", "words"), CASES)
def test_a_bad_option_value_is_one_line_naming_option_and_value(
    command, option, value, words, paths, busy_port, no_server
):
    for name, replacement in {**paths, "busy": str(busy_port)}.items():
        value = value.replace("{" + name + "}", replacement)
    args = base_args(command, paths)
    if command in CLUSTER_COMMANDS and option not in ("--url", "--cloud-id"):
        args += ["--url", UNREACHABLE]
    result = CliRunner().invoke(main, [*args, option, value], env={"SPLADE_ES_URL": None})
    line = assert_one_error_line(result, option, value, words)
    assert "connecting to" not in line  # the value was checked before the cluster was asked


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nosuch"], ["No such command 'nosuch'", "splade-es --help"]),
        (["search", "--url", UNREACHABLE, "q"], ["Missing option '--index'"]),
        (["encode", "--nope"], ["No such option", "--nope", "splade-es encode --help"]),
        (["search", "--index", "i", "--url", UNREACHABLE], ["Missing argument 'TEXT'"]),
        (
            ["search", "--index", "i", "--hybrid", "0.3", "--mode", "bm25", "q"],
            ["--hybrid 0.3", "--mode bm25"],
        ),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_too(args, words):
    result = CliRunner().invoke(main, args, env={"SPLADE_ES_URL": None}, prog_name="splade-es")
    assert_one_error_line(result, *words)


def test_a_cluster_that_cannot_be_reached_is_one_line(paths):
    result = CliRunner().invoke(
        main, ["search", "--url", UNREACHABLE, *base_args("search", paths)[1:]]
    )
    assert_one_error_line(result, "connecting to http://127.0.0.1:9", "Connection refused")


def test_errors_stay_on_one_line_in_a_real_process(paths):
    """Outside CliRunner: stderr of the real command, on a narrow terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLADE_ES_")}
    env["COLUMNS"] = "40"
    for args, fragment in (
        ([*base_args("ingest", paths), "--url", UNREACHABLE, "--device", "xyz"], "'--device'"),
        ([*base_args("encode", paths), "--max-length", "99999"], "'--max-length'"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "splade_es.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert fragment in done.stderr and "Traceback" not in done.stderr
