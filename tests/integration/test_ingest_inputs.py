"""``splade-es ingest`` fed as Unix users feed it (issue 21, section 2), against the cluster:
a pipe, /dev/stdin, a compressed file, an empty pipe, a truncated gzip."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLI = f"{sys.executable} -m splade_es.cli"


def jsonl(n: int) -> bytes:
    return b"".join(
        json.dumps({"_id": f"d{i}", "title": f"doc {i}", "text": f"tax code section {i}"}).encode()
        + b"\n"
        for i in range(n)
    )


def ingest_in_shell(how: str, cluster, index_name: str, model_dir: Path, cwd: Path):
    """``how`` is a bash line where ``INGEST`` stands for the ingest command into the index."""
    ingest = f"{CLI} ingest --url {cluster.url} --index {index_name} -m {model_dir} --create -q"
    return subprocess.run(
        ["bash", "-c", "set -o pipefail; " + how.replace("INGEST", ingest)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )


def stored_ids(cluster, index_name: str) -> list[str]:
    cluster.client.indices.refresh(index=index_name)
    found = cluster.client.search(index=index_name, body={"size": 10000, "_source": False})
    return sorted(hit["_id"] for hit in found["hits"]["hits"])


@pytest.mark.parametrize(
    "how",
    [
        "cat docs.jsonl | INGEST --input -",
        "cat docs.jsonl | INGEST --input /dev/stdin",
        "INGEST --input <(cat docs.jsonl)",
        "gzip -c docs.jsonl > docs.jsonl.gz && INGEST --input docs.jsonl.gz",
        "gzip -c docs.jsonl | INGEST --input -",  # a compressed pipe: named by no suffix
    ],
    ids=["dash", "dev-stdin", "process-substitution", "gzip-file", "gzip-pipe-refused"],
)
def test_ingest_reads_pipes_and_compressed_files_whole(
    cluster, index_name, search_model_dir, tmp_path, how
):
    """The bug: the CLI counted the input's lines for the progress bar first, which consumed
    a pipe, then read 0 records and exited 0 ("holds no records: nothing was indexed")."""
    (tmp_path / "docs.jsonl").write_bytes(jsonl(25))
    done = ingest_in_shell(how, cluster, index_name, search_model_dir, tmp_path)
    if how.startswith("gzip -c docs.jsonl |"):
        # Standard input has no name to say it is compressed: gzip bytes are not JSON, and
        # every "line" of them is dead-lettered (exit 1), none silently dropped.
        assert done.returncode == 1, done.stderr
        assert "could not be indexed" in done.stderr or "not indexed" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert "holds no records" not in done.stderr
    assert stored_ids(cluster, index_name) == sorted(f"d{i}" for i in range(25))


def test_an_empty_pipe_warns_and_exits_0(cluster, index_name, search_model_dir, tmp_path):
    done = ingest_in_shell(
        "true | INGEST --input -", cluster, index_name, search_model_dir, tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "warning: standard input holds no records: nothing was indexed" in done.stderr


def test_a_truncated_gzip_stops_after_indexing_what_came_before(
    cluster, index_name, search_model_dir, tmp_path
):
    packed = gzip.compress(jsonl(3000))
    (tmp_path / "docs.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    readable = []
    # The last, partial line never comes out of gzip.
    with gzip.open(tmp_path / "docs.jsonl.gz", "rb") as handle, contextlib.suppress(EOFError):
        readable.extend(json.loads(line)["_id"] for line in handle)
    done = ingest_in_shell(
        "INGEST --input docs.jsonl.gz --checkpoint job.ck",
        cluster,
        index_name,
        search_model_dir,
        tmp_path,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"docs.jsonl.gz: compressed data failed after line {len(readable)}" in errors[0]
    assert f"{len(readable):,} were indexed" in errors[0]
    assert stored_ids(cluster, index_name) == sorted(readable)
    checkpoint = json.loads((tmp_path / "job.ck").read_text())
    assert (checkpoint["watermark"], checkpoint["indexed"]) == (len(readable), len(readable))
