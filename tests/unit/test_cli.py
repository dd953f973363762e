from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from splade_es import SpladeEncoder
from splade_es.cli import main
from tests.vectors import assert_same_vector

COMMANDS = [
    "encode",
    "create-index",
    "ingest",
    "search",
    "explain",
    "migrate",
    "evaluate",
    "register",
]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_real_help(runner, command):
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: main " + command in result.output or f"{command} [OPTIONS]" in result.output
    if command != "encode":
        for option in (
            "--url",
            "--api-key",
            "--user",
            "--password",
            "--ca-certs",
            "--no-verify-certs",
            "--engine",
        ):
            assert option in result.output


@pytest.mark.parametrize(
    "command", ["create-index", "ingest", "search", "explain", "migrate", "evaluate"]
)
def test_cluster_commands_fail_clearly_without_echoing_secrets(runner, command, tmp_path):
    (tmp_path / "f").write_text("{}")
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\td\t1\n")
    args = {
        "create-index": ["--index", "i"],
        "ingest": ["--index", "i", "-m", "m", "--input", str(tmp_path / "f")],
        "search": ["--index", "i", "-m", "m", "q"],
        "explain": ["--index", "i", "-m", "m", "--id", "d", "q"],
        "migrate": ["--source", "a", "--target", "b", "--alias", "c", "-m", "m"],
        "evaluate": [
            "--index",
            "i",
            "-m",
            "m",
            "--queries",
            str(tmp_path / "queries.jsonl"),
            "--qrels",
            str(tmp_path / "qrels.tsv"),
        ],
    }[command]
    # Port 1 on loopback refuses at once: the landed commands fail to connect.
    result = runner.invoke(
        main,
        [command, "--url", "https://u:hunter2@127.0.0.1:1", "--user", "u", *args],
        env={"SPLADE_ES_PASSWORD": "hunter3"},
    )
    assert result.exit_code == 2
    assert "connecting to https://***@127.0.0.1:1" in result.output
    assert "hunter2" not in result.output and "hunter3" not in result.output


def test_no_verify_certs_warns(runner):
    result = runner.invoke(
        main,
        [
            "search",
            "--url",
            "https://localhost:9200",
            "--no-verify-certs",
            "--index",
            "i",
            "-m",
            "m",
            "q",
        ],
    )
    assert "verification is disabled" in result.output


def run_encode(runner, model_dir, tmp_path, *extra):
    """``splade-es encode`` from tmp_path/in.jsonl to tmp_path/out.jsonl."""
    return runner.invoke(
        main,
        [
            "encode",
            "-m",
            str(model_dir),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "-q",
            *extra,
        ],
    )


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_encode_writes_one_vector_per_document_in_input_order(runner, tiny_bert_dir, tmp_path):
    docs = [
        {"_id": "d1", "title": "Tax code", "text": "section of the tax code"},
        {"_id": 2, "title": "", "text": "garlic powder"},
        {"_id": "d3", "text": "the search engine " * 30},
    ]
    write_jsonl(tmp_path / "in.jsonl", docs)
    result = run_encode(runner, tiny_bert_dir, tmp_path, "--max-length", "16")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["_id"] for line in lines] == ["d1", "2", "d3"]
    assert [line.get("truncated", False) for line in lines] == [False, False, True]
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), max_length=16)
    expected = encoder.encode_documents(["Tax code section of the tax code"]).to_dicts()[0]
    assert_same_vector(lines[0]["splade"], expected)
    assert "truncated documents" in result.output and "1 (past 16 tokens" in result.output
    assert "warning: 1 document(s) lost text past 16 tokens" in result.output


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2: invalid JSON"),
        (json.dumps({"title": "x", "text": "y"}), "line 2: missing id field '_id'"),
        (json.dumps({"_id": "b", "title": 5, "text": "y"}), "line 2: field 'title' is int"),
        (json.dumps({"_id": "b", "title": "", "text": ""}), "line 2: no text in field(s)"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_encode_bad_input_names_line_and_field(runner, tiny_bert_dir, tmp_path, bad_line, message):
    write_jsonl(
        tmp_path / "in.jsonl", [{"_id": "a", "text": "fine"}, bad_line, {"_id": "c", "text": "ok"}]
    )
    result = run_encode(runner, tiny_bert_dir, tmp_path)
    # Like ingest: the bad line is set aside, the others are encoded, exit status 1.
    assert result.exit_code == 1, result.output
    assert [
        json.loads(line)["_id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()
    ] == ["a", "c"]
    dead = [
        json.loads(line) for line in (tmp_path / "out.dead-letter.jsonl").read_text().splitlines()
    ]
    assert len(dead) == 1 and dead[0]["position"] == 2 and message in dead[0]["reason"]
    assert "out.dead-letter.jsonl" in result.output


def test_encode_rejects_non_utf8(runner, tiny_bert_dir, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(
        b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff"}\n'
    )
    result = run_encode(
        runner, tiny_bert_dir, tmp_path, "--dead-letter", str(tmp_path / "bad.jsonl")
    )
    assert result.exit_code == 1
    dead = json.loads((tmp_path / "bad.jsonl").read_text())
    assert "line 2: not valid UTF-8" in dead["reason"] and dead["raw"]


def test_encode_dead_letters_keep_the_id_they_read(runner, tiny_bert_dir, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"_id": "b7", "title": 3}])
    result = run_encode(runner, tiny_bert_dir, tmp_path)
    assert result.exit_code == 1
    assert json.loads((tmp_path / "out.dead-letter.jsonl").read_text())["id"] == "b7"


def test_encode_never_leaves_a_truncated_output(runner, tiny_bert_dir, tmp_path, monkeypatch):
    from splade_es import SpladeEncoder

    write_jsonl(tmp_path / "in.jsonl", [{"_id": f"d{i}", "text": "tax code"} for i in range(50)])
    (tmp_path / "out.jsonl").write_text("the previous run\n")
    real = SpladeEncoder.iter_encode

    def interrupted(self, texts, **kwargs):
        for n, window in enumerate(real(self, texts, **kwargs)):
            if n == 1:
                raise KeyboardInterrupt
            yield window

    monkeypatch.setattr(SpladeEncoder, "iter_encode", interrupted)
    result = run_encode(runner, tiny_bert_dir, tmp_path, "--batch-size", "1")
    assert result.exit_code == 130  # interrupted, not 1 ("some lines dead-lettered")
    assert (tmp_path / "out.jsonl").read_text() == "the previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_encode_warns_about_an_empty_input(runner, tiny_bert_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text("\n")
    result = run_encode(runner, tiny_bert_dir, tmp_path)
    assert result.exit_code == 0
    assert "holds no documents" in result.output
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_help_lists_the_exit_statuses(runner):
    result = runner.invoke(main, ["--help"])
    for line in ("0    done", "1    done, but", "2    stopped by an error", "130  interrupted"):
        assert line in result.output


# ---------------------------------------------------------------------- rich output is literal
ENGINE_ERROR = (
    "creating search pipeline x: no handler found for uri [/_search/pipeline/x] and method "
    "[PUT]; index [name] [bold]not[/bold] found"
)


def test_errors_are_printed_as_is_not_as_rich_markup(runner, monkeypatch):
    from splade_es.cli import indexing
    from splade_es.exceptions import ClusterError

    def refuse(config):
        raise ClusterError(ENGINE_ERROR)

    monkeypatch.setattr(indexing, "connect", refuse)
    result = runner.invoke(main, ["create-index", "--url", "http://localhost:9200", "--index", "i"])
    assert result.exit_code == 2, result.output
    assert "MarkupError" not in result.output
    # Brackets survive (markup would drop "[name]" and crash on "[/_search/...]").
    assert "error: " + ENGINE_ERROR in " ".join(result.output.split())


def test_progress_descriptions_and_tables_are_literal():
    import io

    from rich.console import Console
    from rich.table import Table

    from splade_es.cli.app import print_table, progress_display

    progress = progress_display(quiet=True)
    task_id = progress.add_task("copy [name] [/x]", total=3)
    task = progress.tasks[task_id]
    assert progress.columns[0].render(task).plain == "copy [name] [/x]"

    out = Console(file=io.StringIO(), width=80, markup=False)
    table = Table(title="[bold]idx[/]")
    table.add_column("token")
    table.add_row("[unused0]")
    print_table(table, out)
    assert "[bold]idx[/]" in out.file.getvalue() and "[unused0]" in out.file.getvalue()


def test_progress_rate_is_the_run_average_in_the_task_unit():
    from rich.progress import Progress

    from splade_es.cli.app import RateColumn

    now = [0.0]
    column = RateColumn()
    progress = Progress(column, get_time=lambda: now[0], disable=True)
    task_id = progress.add_task("evaluate", total=100, unit="queries")
    now[0] = 1.0
    progress.advance(task_id, 10)
    now[0] = 10.0
    progress.advance(task_id, 40)  # a burst, as bulk responses come
    # 50 queries in 10 s: what a summary (count / elapsed) says; rich's moving-window speed
    # would say 40 / 9 = 4.4 here.
    assert column.render(progress.tasks[task_id]).plain == "5.0 queries/s"

    resumed = progress.add_task("copy", total=100, completed=80, already=80)
    now[0] = 14.0
    progress.advance(resumed, 8)
    assert column.render(progress.tasks[resumed]).plain == "2.0 docs/s"  # 8 new in 4 s


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a:b:c:d", "--enrich expects PATTERN[:TEXT_FIELDS[:SPARSE_FIELD]], got 'a:b:c:d'"),
        ("docs:splade", "'splade' is both a text and the sparse field"),
    ],
)
def test_serve_enrich_rules_are_checked_before_anything_starts(runner, spec, message):
    result = runner.invoke(
        main, ["serve", "--url", "http://127.0.0.1:1", "--model", "m", "--enrich", spec]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_serve_help_documents_enrichment(runner):
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--enrich", "--on-encode-error", "--enrich-queue", "--text-fields"):
        assert option in result.output


def test_serve_uses_every_core_for_documents_and_leaves_one_for_queries(monkeypatch):
    from splade_es.cli import serve

    monkeypatch.setattr(serve.os, "cpu_count", lambda: 8)
    assert (serve.default_threads(True), serve.default_threads(False)) == (8, 7)
    monkeypatch.setattr(serve.os, "cpu_count", lambda: 1)
    assert (serve.default_threads(True), serve.default_threads(False)) == (1, 1)


def test_serve_batch_threads_default_to_every_core_unless_threads_is_given(runner, monkeypatch):
    import splade_es.serve
    from splade_es.cli import serve

    configs = []
    monkeypatch.setattr(serve.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(splade_es.serve, "create_app", lambda config: stand_in_app(configs, config))
    monkeypatch.setattr("uvicorn.run", lambda app, **options: None)
    base = ["serve", "--url", "http://127.0.0.1:9", "--model", "m"]
    cases = (([], (7, 8)), (["--threads", "3"], (3, 3)), (["--batch-threads", "5"], (7, 5)))
    for extra, expected in cases:
        result = runner.invoke(main, base + extra)
        assert result.exit_code == 0, result.output
        assert (configs[-1].threads, configs[-1].batch_threads) == expected


def stand_in_app(configs: list, config) -> SimpleNamespace:
    """What ``create_app`` returns, for a command test that starts nothing: the config is
    kept, and the app has a ``state`` the command can set."""
    configs.append(config)
    return SimpleNamespace(state=SimpleNamespace())


def test_serve_sets_the_workbench_page_from_its_options(runner, monkeypatch, tmp_path):
    import splade_es.serve

    apps = []

    def create_app(config):
        apps.append(SimpleNamespace(state=SimpleNamespace()))
        return apps[-1]

    monkeypatch.setattr(splade_es.serve, "create_app", create_app)
    monkeypatch.setattr("uvicorn.run", lambda app, **options: None)
    qrels = tmp_path / "judged.tsv"
    base = ["serve", "--url", "http://127.0.0.1:9", "--model", "m"]
    options = ["--ui-index", "docs", "--ui-config", "bm25", "--ui-config", "hybrid:rrf"]
    result = runner.invoke(main, [*base, *options, "--ui-qrels", str(qrels)])
    assert result.exit_code == 0, result.output
    settings = apps[-1].state.workbench
    assert settings.index == "docs" and settings.judgments.path == qrels
    assert [c.spec for c in settings.configurations] == ["bm25", "hybrid:rrf"]

    env = {"SPLADE_ES_UI_INDEX": "from-env", "SPLADE_ES_UI_CONFIGS": "splade bm25"}
    result = runner.invoke(main, base, env=env)
    assert result.exit_code == 0, result.output
    settings = apps[-1].state.workbench
    assert settings.index == "from-env" and settings.judgments is None
    assert [c.spec for c in settings.configurations] == ["splade", "bm25"]

    bad = runner.invoke(main, [*base, "--ui-config", "hybrid:sideways"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert len([line for line in bad.output.splitlines() if line.strip()]) == 1
