"""The README's examples run as written against the test cluster.

Every ```python block runs (except those marked ``<!-- not run ... -->``), and every ```bash
block marked ``<!-- run by tests/integration/test_readme.py -->`` (the Quickstart), each in a
fresh folder that has the repository's ``examples/``. The cluster comes from SPLADE_ES_URL and
the model from SPLADE_ES_MODEL, which the examples read; the real checkpoint when it is there,
else a tiny random one. Index names (``docs...``) are made unique per block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, real_model_path

pytestmark = pytest.mark.integration

RUN_MARK = "<!-- run by tests/integration/test_readme.py -->"
SKIP_MARK = "<!-- not run"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, str, str]]:
    """(language, code, id) of the blocks the tests run."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        language, code = match.group(1), match.group(2)
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        line = text[: match.start()].count("\n") + 1
        if language == "python" and not before.startswith(SKIP_MARK):
            blocks.append((language, code, f"python-line-{line}"))
        elif language == "bash" and before == RUN_MARK:
            blocks.append((language, code, f"bash-line-{line}"))
    return blocks


BLOCKS = readme_blocks()


def test_the_readme_has_runnable_examples():
    assert {lang for lang, _, _ in BLOCKS} == {"python", "bash"}
    assert len(BLOCKS) >= 3


@pytest.fixture
def model_dir(search_model_dir) -> Path:
    real = real_model_path()
    return real if real.is_dir() else search_model_dir


@pytest.mark.parametrize(("language", "code"), [b[:2] for b in BLOCKS], ids=[b[2] for b in BLOCKS])
def test_readme_example_runs_as_written(cluster, model_dir, tmp_path, language, code):
    if "migrate" in code and "--switch" in code and cluster.spec.is_emulator:
        # The marker way (emulator_lacks) cannot select one parametrized block.
        pytest.skip(
            "the osmem emulator lacks the add-index-block API that migrate --switch uses "
            "(PUT /<index>/_block/write); runs on real engines"
        )
    prefix = f"readme-{uuid.uuid4().hex[:10]}"
    # Index names only: "docs..." strings in Python, docs... words in bash.
    name = r"(?<=[\"'])docs\b" if language == "python" else r"(?<=[\s=])docs\b"
    code = re.sub(name, prefix, code)
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    env = {
        **os.environ,
        "SPLADE_ES_URL": cluster.url,
        "SPLADE_ES_MODEL": str(model_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "PYTHON": sys.executable,
    }
    if language == "python":
        command = [sys.executable, "-c", code]
    else:
        # The installed commands, from this interpreter (whatever is on PATH).
        preamble = (
            'splade-es() { "$PYTHON" -m splade_es.cli "$@"; }\npython() { "$PYTHON" "$@"; }\n'
        )
        command = ["bash", "-euo", "pipefail", "-c", preamble + code]
    try:
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        for suffix in ("", "-bm25", "-splade", "-piped"):
            cluster.client.indices.delete(index=prefix + suffix, ignore_unavailable=True)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if "explain(" in code:
        # The example's last line: the hit's score, the contributions' sum, the engine's score.
        score, total, engine = map(float, done.stdout.strip().splitlines()[-1].split())
        assert total == pytest.approx(score, rel=1e-5) and engine == pytest.approx(score, rel=1e-6)
    if language == "bash" and "--input -" in code:  # Inputs: the sample through a pipe
        assert re.search(r"indexed\W+6\b", done.stderr), done.stderr  # the sample's 6
        assert (tmp_path / "sample.splade.jsonl.zst").stat().st_size > 0
    elif language == "bash":
        assert "ex1" in done.stdout  # the search table
        assert "nDCG" in done.stdout or "ndcg@10" in done.stdout
        assert "(switched)" in done.stderr
