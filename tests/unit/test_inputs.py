"""Inputs as Unix users feed them (issue 21, section 2): standard input, /dev/stdin, FIFOs,
process substitution and compressed files, for ``encode`` and ``ingest``; each read once."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from splade_es import SpladeEncoder
from splade_es.cli import main
from splade_es.exceptions import ConfigurationError, InputStreamError
from splade_es.ingest import IngestConfig, ingest, ingest_file, read_source
from splade_es.ingest.inputs import InputFile
from splade_es.ingest.sources import count_records, guess_format
from tests.unit.test_ingest_pipeline import SlowClient
from tests.vectors import assert_same_vectors

COMPRESSORS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def jsonl(n: int, start: int = 0) -> bytes:
    return b"".join(
        json.dumps({"_id": f"d{i}", "title": f"doc {i}", "text": f"tax code section {i}"}).encode()
        + b"\n"
        for i in range(start, start + n)
    )


def csv_rows(n: int) -> bytes:
    return b"_id,title,text\n" + b"".join(
        f"d{i},doc {i},tax code section {i}\n".encode() for i in range(n)
    )


def ids(records) -> list[str]:
    return [r.doc["_id"] for r in records]


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_compressed_files_read_like_plain_ones(tmp_path, suffix, fmt):
    data = jsonl(300) if fmt == "jsonl" else csv_rows(300)
    plain = tmp_path / f"docs.{fmt}"
    plain.write_bytes(data)
    packed = tmp_path / f"docs.{fmt}{suffix}"
    packed.write_bytes(COMPRESSORS[suffix](data))
    assert guess_format(packed) == fmt
    got = list(read_source(packed))
    assert [(r.position, r.doc) for r in got] == [(r.position, r.doc) for r in read_source(plain)]
    assert len(got) == 300


def test_names_say_format_and_compression():
    assert InputFile("a/docs.jsonl.zst").stem == "docs"
    assert InputFile("docs.csv.gz").format_suffix == ".csv"
    assert InputFile("docs.gz").format_suffix == "" and guess_format("docs.gz") == "jsonl"
    assert guess_format("-") == "jsonl" and InputFile("-").stem == "stdin"
    assert InputFile("-").rereadable is False


def test_a_zstd_file_of_several_frames_reads_whole(tmp_path):
    path = tmp_path / "docs.jsonl.zst"
    compress = zstandard.ZstdCompressor().compress
    path.write_bytes(compress(jsonl(50)) + compress(jsonl(50, start=50)))
    assert ids(read_source(path)) == [f"d{i}" for i in range(100)]


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_a_truncated_compressed_file_is_an_error_after_the_records_before_it(tmp_path, suffix):
    data = jsonl(3000)
    path = tmp_path / f"docs.jsonl{suffix}"
    packed = COMPRESSORS[suffix](data)
    path.write_bytes(packed[: len(packed) * 2 // 3])
    seen = []
    with pytest.raises(InputStreamError) as caught:
        seen.extend(read_source(path))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    # Every record yielded is whole and in order; the message names the last one read.
    assert ids(seen) == [f"d{i}" for i in range(len(seen))]
    if seen:  # bz2 decompresses in blocks: its first block may be the one cut short
        assert f"after line {seen[-1].position}" in message
    assert len(seen) < 3000


def test_a_fifo_is_read_once(tmp_path):
    fifo = tmp_path / "docs.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(jsonl(40)))
    writer.start()
    assert count_records(fifo) is None  # counting would consume it
    assert ids(read_source(fifo)) == [f"d{i}" for i in range(40)]
    writer.join()


def test_counting_for_the_progress_bar_only_reads_plain_files(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl(7) + b"\n\n")
    (tmp_path / "a.csv").write_bytes(csv_rows(5))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(jsonl(7)))
    assert count_records(tmp_path / "a.jsonl") == 7
    assert count_records(tmp_path / "a.csv") == 5
    assert count_records(tmp_path / "a.jsonl.gz") is None
    assert count_records("-") is None


def test_a_beir_folder_may_hold_a_compressed_corpus(tmp_path):
    (tmp_path / "corpus.jsonl.zst").write_bytes(COMPRESSORS[".zst"](jsonl(12)))
    assert guess_format(tmp_path) == "beir"
    assert len(list(read_source(tmp_path))) == 12


def test_parquet_from_a_stream_is_refused_clearly():
    with pytest.raises(ConfigurationError, match="Parquet is read from a plain file only"):
        read_source("-", "parquet")


# ---------------------------------------------------------------------- ingest


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    return SpladeEncoder.from_pretrained(str(tiny_bert_dir))


def test_a_checkpoint_on_a_stream_is_refused_at_start(encoder, tmp_path):
    fifo = tmp_path / "docs.fifo"
    os.mkfifo(fifo)
    config = IngestConfig(index="ix", checkpoint=str(tmp_path / "job.ck"))
    with pytest.raises(ConfigurationError, match="can be read again") as caught:
        ingest_file(SlowClient(), fifo, encoder=encoder, config=config)
    assert "stream" in str(caught.value) and "--checkpoint" in str(caught.value)
    with pytest.raises(ConfigurationError, match="standard input"):
        ingest_file(SlowClient(), "-", encoder=encoder, config=config)
    assert not (tmp_path / "job.ck").exists()


def test_a_compressed_file_resumes_from_its_checkpoint(encoder, tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(30)))
    config = IngestConfig(index="ix", checkpoint=str(tmp_path / "job.ck"), bulk_docs=10)
    first = ingest_file(SlowClient(), path, encoder=encoder, config=config)
    assert first.indexed == 30
    again = ingest_file(SlowClient(), path, encoder=encoder, config=config)
    assert (again.read, again.skipped_done, again.total_indexed) == (0, 30, 30)


def test_a_truncated_input_indexes_and_counts_what_came_before(encoder, tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    packed = gzip.compress(jsonl(2000))
    path.write_bytes(packed[: len(packed) // 2])
    readable = []
    with pytest.raises(InputStreamError):
        readable.extend(read_source(path))
    client = SlowClient()
    checkpoint = tmp_path / "job.ck"
    config = IngestConfig(index="ix", bulk_docs=50, checkpoint=str(checkpoint))
    with pytest.raises(InputStreamError) as caught:
        ingest_file(client, path, encoder=encoder, config=config)
    # Everything before the break is indexed, counted in the message and checkpointed;
    # nothing after it is claimed.
    assert sorted(client.stored) == sorted(r.doc["_id"] for r in readable)
    message = str(caught.value)
    assert f"of the {len(readable):,} records read before, {len(readable):,} were indexed" in (
        message
    )
    assert json.loads(checkpoint.read_text())["watermark"] == readable[-1].position


def test_an_iterable_that_breaks_keeps_what_came_before(encoder):
    def documents():
        yield from ({"_id": f"d{i}", "text": "tax"} for i in range(5))
        raise InputStreamError("the feed broke")

    client = SlowClient()
    with pytest.raises(InputStreamError, match="5 were indexed"):
        ingest(client, documents(), encoder=encoder, config=IngestConfig(index="ix"))
    assert len(client.stored) == 5


# ---------------------------------------------------------------------- encode (CLI)


def encode_args(model_dir, output, input_path="-") -> list[str]:
    return ["encode", "-m", str(model_dir), "--input", str(input_path), "--output", str(output)]


def read_vectors(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def expected_vectors(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("expected")
    (folder / "docs.jsonl").write_bytes(jsonl(20))
    result = CliRunner().invoke(
        main, encode_args(tiny_bert_dir, folder / "out.jsonl", folder / "docs.jsonl")
    )
    assert result.exit_code == 0, result.output
    return read_vectors(folder / "out.jsonl")


def assert_same_output(got: list[dict], expected: list[dict]) -> None:
    assert [v["_id"] for v in got] == [v["_id"] for v in expected]
    assert_same_vectors([v["splade"] for v in got], [v["splade"] for v in expected])


def test_encode_reads_a_dash_as_standard_input(tiny_bert_dir, tmp_path, expected_vectors):
    result = CliRunner().invoke(
        main, encode_args(tiny_bert_dir, tmp_path / "out.jsonl"), input=jsonl(20)
    )
    assert result.exit_code == 0, result.output
    assert_same_output(read_vectors(tmp_path / "out.jsonl"), expected_vectors)


CLI = [sys.executable, "-m", "splade_es.cli"]


def run_shell(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` under bash (pipes, process substitution), the package's CLI as ``$CLI``."""
    env = {**os.environ, "CLI": " ".join(CLI)}
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "how",
    [
        "cat docs.jsonl | $CLI encode -m $MODEL --input /dev/stdin --output out.jsonl",
        "cat docs.jsonl | $CLI encode -m $MODEL --input - --output out.jsonl",
        "$CLI encode -m $MODEL --input <(cat docs.jsonl) --output out.jsonl",
        "gzip -c docs.jsonl > docs.jsonl.gz && "
        "$CLI encode -m $MODEL --input docs.jsonl.gz --output out.jsonl",
    ],
    ids=["dev-stdin", "dash", "process-substitution", "gzip-file"],
)
def test_encode_reads_pipes_and_compressed_files_whole(
    tiny_bert_dir, tmp_path, expected_vectors, how
):
    """The bug: the CLI counted the input's lines first, which consumed a pipe, and then
    encoded nothing ("holds no documents") with exit status 0."""
    (tmp_path / "docs.jsonl").write_bytes(jsonl(20))
    done = run_shell(how.replace("$MODEL", str(tiny_bert_dir)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "holds no documents" not in done.stderr
    assert_same_output(read_vectors(tmp_path / "out.jsonl"), expected_vectors)


def test_encode_reads_csv_from_a_pipe(tiny_bert_dir, tmp_path, expected_vectors):
    (tmp_path / "docs.csv").write_bytes(csv_rows(20))
    script = "cat docs.csv | $CLI encode -m MODEL --input - --format csv --output o.jsonl"
    script = script.replace("MODEL", str(tiny_bert_dir))
    done = run_shell(script, tmp_path)
    assert done.returncode == 0, done.stderr
    got = read_vectors(tmp_path / "o.jsonl")
    # The CSV's titles and texts are the JSONL's: the same documents, the same vectors.
    assert_same_output(got, expected_vectors)


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2", ".xz"])
def test_encode_writes_compressed_output(tiny_bert_dir, tmp_path, expected_vectors, suffix):
    (tmp_path / "docs.jsonl").write_bytes(jsonl(20))
    out = tmp_path / f"out.jsonl{suffix}"
    result = CliRunner().invoke(main, encode_args(tiny_bert_dir, out, tmp_path / "docs.jsonl"))
    assert result.exit_code == 0, result.output
    assert_same_output([r.doc for r in read_source(out)], expected_vectors)
    assert out.read_bytes()[:2] != b'{"'  # compressed, not plain JSON


def test_encode_of_an_empty_pipe_warns_and_exits_0(tiny_bert_dir, tmp_path):
    script = f"true | $CLI encode -m {tiny_bert_dir} --input - --output out.jsonl"
    done = run_shell(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "standard input holds no documents" in " ".join(done.stderr.split())
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_encode_of_a_truncated_gzip_stops_with_one_line(tiny_bert_dir, tmp_path):
    packed = gzip.compress(jsonl(3000))
    (tmp_path / "docs.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "out.jsonl").write_text("kept\n")
    done = run_shell(
        f"$CLI encode -m {tiny_bert_dir} --input docs.jsonl.gz --output out.jsonl -q", tmp_path
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: docs.jsonl.gz: compressed data"), lines
    assert "after line" in lines[0] and "Traceback" not in done.stderr
    assert (tmp_path / "out.jsonl").read_text() == "kept\n"  # left as it was


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ingest_cli_refuses_a_checkpoint_on_a_pipe_in_one_line(tiny_bert_dir, tmp_path):
    script = (
        f"cat docs.jsonl | $CLI ingest --url http://127.0.0.1:9 --index ix -m {tiny_bert_dir} "
        "--input - --checkpoint job.ck"
    )
    (tmp_path / "docs.jsonl").write_bytes(jsonl(3))
    done = run_shell(script, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "standard input is a stream" in lines[0], done.stderr
