"""The model taken when none is named (README "Which model"): SPLADE_ES_MODEL, then
../shared/models/splade-tiny from the working directory, then the user cache folder, then
rasyosef/splade-tiny through the Hugging Face cache; one line naming all of them when none is
there. Nothing here reaches the Hub: the HF cache is a temporary folder laid out as
huggingface_hub lays it out, and HF_HUB_OFFLINE stays set."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from splade_es.cli import main as cli
from splade_es.encoding.model_files import DEFAULT_HUB_MODEL, default_model, resolve_checkpoint
from splade_es.exceptions import ModelLoadError
from tests.conftest import REPO_ROOT, real_model_path

SAMPLE = str(REPO_ROOT / "examples" / "sample.jsonl")


def _copy_model(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
    return target


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A working directory with nothing beside it, an empty user cache and an empty HF cache."""
    from huggingface_hub import constants

    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO_ROOT / "examples")
    monkeypatch.chdir(work)
    monkeypatch.delenv("SPLADE_ES_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {
        "work": work,
        "shared": tmp_path / "shared" / "models" / "splade-tiny",
        "user": tmp_path / "cache" / "splade-es" / "models" / "splade-tiny",
        "hf": tmp_path / "hf",
    }


def _hub_cache(hf: Path, model: Path) -> Path:
    """``DEFAULT_HUB_MODEL`` in the HF cache, where ``snapshot_download`` finds it offline."""
    repo = hf / ("models--" + DEFAULT_HUB_MODEL.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return _copy_model(model, repo / "snapshots" / commit)


def test_the_order_env_then_shared_then_user_cache_then_hub_cache(
    places, search_model_dir, monkeypatch
):
    snapshot = _hub_cache(places["hf"], search_model_dir)
    assert default_model() == DEFAULT_HUB_MODEL
    assert resolve_checkpoint(None) == snapshot

    _copy_model(search_model_dir, places["user"])
    assert default_model() == str(places["user"])

    _copy_model(search_model_dir, places["shared"])
    assert default_model() == os.path.abspath(
        places["work"] / ".." / "shared" / "models" / "splade-tiny"
    )

    monkeypatch.setenv("SPLADE_ES_MODEL", "naver/splade-v3")
    assert default_model() == "naver/splade-v3"


def test_a_folder_without_a_checkpoint_is_passed_over(places, search_model_dir):
    places["shared"].mkdir(parents=True)  # an empty folder: not a model
    _copy_model(search_model_dir, places["user"])
    assert default_model() == str(places["user"])


def test_none_found_is_one_line_naming_what_was_tried(places):
    with pytest.raises(ModelLoadError) as caught:
        default_model()
    message = str(caught.value)
    assert "\n" not in message
    for tried in (
        "SPLADE_ES_MODEL",
        "../shared/models/splade-tiny",
        str(places["user"]),
        DEFAULT_HUB_MODEL,
        "HF_HUB_OFFLINE",
        "--model FOLDER",
    ):
        assert tried in message


def test_without_download_the_hub_is_not_asked(places, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def snapshot_download(name, *, revision=None, local_files_only=False):
        asked.append(local_files_only)
        raise OSError("not in the cache")

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    with pytest.raises(ModelLoadError, match="not downloaded by this command"):
        default_model(download=False)
    assert asked == [True]
    with pytest.raises(ModelLoadError, match="the Hub did not answer"):
        default_model()
    assert asked == [True, True, False]


def test_encode_without_model_uses_the_default_and_says_which(places, search_model_dir):
    _hub_cache(places["hf"], search_model_dir)
    done = CliRunner().invoke(
        cli, ["encode", "--input", "examples/sample.jsonl", "--output", "out.jsonl"]
    )
    assert done.exit_code == 0, done.output
    assert DEFAULT_HUB_MODEL in done.output
    assert len((places["work"] / "out.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("command", ["encode", "ingest", "serve"])
def test_commands_that_encode_stop_with_one_line_when_no_model_is_found(places, command):
    args = {
        "encode": ["encode", "--input", "examples/sample.jsonl", "--output", "out.jsonl"],
        "ingest": ["ingest", "--url", "http://127.0.0.1:9", "--index", "docs", "--input", SAMPLE],
        "serve": ["serve", "--url", "http://127.0.0.1:9"],
    }[command]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2
    assert done.exception is None or isinstance(done.exception, SystemExit)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no model given and none found"), lines
    assert not (places["work"] / "out.jsonl").exists()


def test_search_without_model_still_runs_bm25(places):
    """search's BM25 mode needs no model: nothing on disk is not an error there (the cluster
    address is closed, so it stops later, at the connection, not at the model)."""
    done = CliRunner().invoke(
        cli, ["search", "--url", "http://127.0.0.1:9", "--index", "docs", "--mode", "bm25", "x"]
    )
    assert "no model given" not in done.output
    assert done.exit_code == 2


def _main_job_command() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*Run the main job\*\*.*?```bash\n(.*?)\n```", readme, re.DOTALL)
    assert block, "the README's main-job command"
    command = block.group(1).strip().split(" && ")[-1]
    assert command.startswith("splade-es ") and "--model" not in command and "shared" not in command
    return command


def test_the_readme_main_job_runs_from_the_local_folder_offline(places, search_model_dir):
    """The README's main command as it is written, in a fresh folder whose ../shared holds the
    checkpoint (the real one when this machine has it), offline, SPLADE_ES_MODEL unset; the
    user cache and the HF cache are empty, so ../shared is the only model it can find."""
    real = real_model_path()
    source = real if real.is_dir() else search_model_dir
    places["shared"].parent.mkdir(parents=True)
    places["shared"].symlink_to(source.resolve())
    env = {k: v for k, v in os.environ.items() if k != "SPLADE_ES_MODEL"}
    env.update(
        XDG_CACHE_HOME=str(places["user"].parents[2]),
        HF_HUB_CACHE=str(places["hf"]),
        HF_HUB_OFFLINE="1",
        PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    preamble = 'splade-es() { "$PYTHON" -m splade_es.cli "$@"; }\n'
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", preamble + _main_job_command()],
        cwd=places["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (places["work"] / "sample.splade.jsonl").open()]
    assert [r["_id"] for r in records] == ["ex1", "ex2", "ex3", "ex4", "ex5", "ex6"]
    assert all(r["splade"] for r in records)


def test_from_pretrained_without_a_name_reads_splade_es_model(search_model_dir, monkeypatch):
    from splade_es import SpladeEncoder

    monkeypatch.setenv("SPLADE_ES_MODEL", str(search_model_dir))
    encoder = SpladeEncoder.from_pretrained()
    assert encoder.name == str(search_model_dir)


def test_a_hub_id_resolved_once_is_not_asked_for_again(places, search_model_dir, monkeypatch):
    """serve resolves the model twice (its query side, then the encoder): the second time must
    not wait on an unreachable Hub."""
    snapshot = _hub_cache(places["hf"], search_model_dir)
    assert default_model() == DEFAULT_HUB_MODEL

    def unreachable(*args, **kwargs):
        raise AssertionError("the Hub was asked again")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    assert resolve_checkpoint(DEFAULT_HUB_MODEL) == snapshot
