"""``splade-es encode``: documents -> SPLADE vectors in a JSONL file (no cluster).

Like ``ingest``, a bad input line does not stop the run: it goes to the dead-letter file and
the exit status is 1. The output appears only when the run completes (written to a temporary
file, then renamed), so an error or Ctrl-C never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from rich.progress import Progress
from rich.table import Table

from .. import defaults
from ..documents import parse_fields
from ..encoding.windows import WindowStats
from ..exceptions import ConfigurationError
from ..ingest.inputs import InputFile, compression_of, open_output_text
from .app import (
    EXIT_PARTIAL,
    FIELDS,
    NEW_FILE,
    device_option,
    err_console,
    fail_cleanly,
    long_document_options,
    main,
    model_option,
    print_table,
    progress_display,
    warn,
    window_policy_of,
)

if TYPE_CHECKING:
    from ..encoding.encoder import SpladeEncoder
    from ..ingest.checkpoint import DeadLetters
    from ..ingest.sources import Format, Prepared
    from ..sparse import SparseBatch

_MODE_NOTES = {
    "siamese": "siamese (queries and documents both go through the model)",
    "inference-free": "inference-free (documents by the model; queries by a token weight table)",
}


@main.command()
@model_option()
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="JSONL or CSV file of documents, or '-' for standard input (pipes, FIFOs and "
    "/dev/stdin work too); .gz, .zst, .bz2 and .xz files are decompressed as they are read.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="Input format (default: from the file name, a compression suffix aside; standard "
    "input is JSONL).",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSONL file to write ('-' for stdout; .gz, .zst, .bz2, .xz compress it), one "
    "document a line: "
    '{"_id": id, "splade": {token: weight}} (named by --id-field and --vector-field), '
    'plus "truncated": true when the text was cut at --max-length.',
)
@click.option(
    "--text-fields",
    default=",".join(defaults.TEXT_FIELDS),
    show_default=True,
    type=FIELDS,
    help="Fields joined into the text.",
)
@click.option("--id-field", default=defaults.ID_FIELD, show_default=True)
@click.option(
    "--vector-field",
    default=defaults.VECTOR_FIELD,
    show_default=True,
    help="Output field for the vector.",
)
@click.option(
    "--dead-letter",
    type=NEW_FILE,
    help="JSONL of the lines that could not be encoded (default: next to --output, "
    "<output>.dead-letter.jsonl; <input>.dead-letter.jsonl here for stdout).",
)
@click.option(
    "--batch-size", default=defaults.BATCH_SIZE, show_default=True, type=click.IntRange(1)
)
@device_option()
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
)
@click.option("--max-length", type=click.IntRange(2), help="Truncate texts to this many tokens.")
@long_document_options()
@click.option("--top-k", type=click.IntRange(1), help="Keep the K largest weights per document.")
@click.option("--min-weight", type=click.FloatRange(0), help="Drop weights below this value.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@fail_cleanly
def encode(**opts: Any) -> None:
    """Encode documents (JSONL or CSV: a file, compressed or not, or standard input) into
    SPLADE {token: weight} vectors.

    Exit status: 0 when every line was encoded, 1 when some went to the dead-letter file,
    2 on errors that stopped the run (the output file is then left as it was).
    """
    from ..encoding.encoder import SpladeEncoder
    from ..ingest.checkpoint import DeadLetters, default_dead_letter

    source = InputFile(opts["input_path"])
    to_stdout = opts["output_path"] == "-"
    dead_path = Path(
        opts["dead_letter"]
        or default_dead_letter(source.stem, None if to_stdout else opts["output_path"])
    )
    policy = window_policy_of(opts)
    if policy.mode == "passages":
        raise ConfigurationError.bad_value(
            "long_documents", "passages", "encode writes one vector per document: use maxpool"
        )
    encoder = SpladeEncoder.from_pretrained(
        opts["model"],
        device=opts["device"],
        dtype=opts["dtype"],
        max_length=opts["max_length"],
        trust_remote_code=opts["trust_remote_code"],
        long_documents=policy.mode,
        window=policy.window,
        overlap=policy.overlap,
        max_windows=policy.max_windows,
    )
    dead_path.unlink(missing_ok=True)  # a new run: no stale entries of an earlier one
    dead = DeadLetters(dead_path)
    stats = EncodeStats()
    started = time.perf_counter()
    with progress_display(opts["quiet"] or to_stdout) as progress:
        advance_input, advance_documents = _encode_bars(progress, source, opts["fmt"])
        windows = _encoded_windows(opts, encoder, dead, consumed=advance_input)
        lines = _vector_lines(windows, opts, stats, advance_documents)
        if to_stdout:
            sys.stdout.writelines(lines)
        else:
            with _replaced_when_done(Path(opts["output_path"])) as out:
                out.writelines(lines)
    elapsed = time.perf_counter() - started
    print_table(_encode_summary(opts["model"], encoder, stats, elapsed, dead), err_console)
    if stats.truncated:
        warn(f"{stats.truncated:,} document(s) lost text past {_cut_where(encoder)}")
    if not (stats.documents or dead.count):
        warn(f"{source.name} holds no documents: nothing was encoded")
    if dead.count:
        warn(f"{dead.count:,} line(s) could not be encoded; see {dead_path}")
        sys.exit(EXIT_PARTIAL)


@dataclass
class EncodeStats:
    """What the summary reports: documents written, how many were truncated, and the
    active (non-zero) dimensions over all of them."""

    documents: int = 0
    truncated: int = 0
    active: int = 0
    windows: WindowStats = field(default_factory=WindowStats)


def _encode_bars(
    progress: Progress, source: InputFile, fmt: Format | None
) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """The bars of a run and what advances them: the input by bytes read, its size on disk
    the total (none for a stream), so that nothing reads it twice to count lines; and the
    documents encoded."""
    from ..ingest.sources import input_size

    input_task = progress.add_task("input", total=input_size(source.path, fmt), unit="bytes")
    encoded_task = progress.add_task("encoded", total=None)
    return partial(progress.advance, input_task), partial(progress.advance, encoded_task)


def _encoded_windows(
    opts: dict[str, Any],
    encoder: SpladeEncoder,
    dead: DeadLetters,
    *,
    consumed: Callable[[int], None],
) -> Iterator[tuple[list[Prepared], SparseBatch]]:
    """The input read once, by the rule ``ingest`` reads documents by (the same ids, texts
    and dead letters), and encoded window by window."""
    from ..ingest.sources import prepare, read_source
    from ..ingest.stages import encoded_windows, prepared_records, refused_entry

    records = read_source(opts["input_path"], opts["fmt"], consumed=consumed)
    rule = partial(
        prepare,
        id_field=opts["id_field"] or None,
        text_fields=parse_fields(opts["text_fields"]),
        sparse_field=opts["vector_field"],
    )
    prepared = prepared_records(records, rule, lambda r, exc: dead.write([refused_entry(r, exc)]))
    return encoded_windows(prepared, encoder, batch_size=opts["batch_size"], empty="error")


def _vector_lines(
    windows: Iterable[tuple[list[Prepared], SparseBatch]],
    opts: dict[str, Any],
    stats: EncodeStats,
    encoded: Callable[[int], None],
) -> Iterator[str]:
    """One JSON line a document: its id, its vector (pruned as asked) and whether its text
    was truncated; ``stats`` and ``encoded`` are told each window."""
    id_key = opts["id_field"] or defaults.ID_FIELD
    for records, window in windows:
        window = window.prune(top_k=opts["top_k"], min_weight=opts["min_weight"])
        for i, record in enumerate(records):
            line: dict[str, Any] = {id_key: record.doc_id, opts["vector_field"]: window.to_dict(i)}
            if window.truncated is not None and window.truncated[i]:
                line["truncated"] = True
                stats.truncated += 1
            yield json.dumps(line, ensure_ascii=False) + "\n"
        stats.documents += len(window)
        stats.active += int(window.nnz_per_row.sum())
        if window.windows is not None and window.truncated is not None:
            stats.windows.add(window.windows, window.truncated)
        encoded(len(window))


def _encode_summary(
    model: str, encoder: SpladeEncoder, stats: EncodeStats, elapsed: float, dead: DeadLetters
) -> Table:
    table = Table(title=f"encoded with {model}", show_header=False)
    table.add_row("mode", _MODE_NOTES[encoder.mode])
    if not encoder.fast_tokenizer:
        table.add_row(
            "tokenizer",
            f"slow ({type(encoder.tokenizer).__name__}, Python): texts are tokenized whole, "
            "slower than a fast (Rust) tokenizer",
        )
    table.add_row("documents", f"{stats.documents:,}")
    table.add_row("truncated documents", f"{stats.truncated:,} (past {_cut_where(encoder)})")
    if stats.windows.documents:
        table.add_row("long documents", stats.windows.summary())
    mean_active = stats.active / stats.documents if stats.documents else 0.0
    table.add_row("mean active dims", f"{mean_active:.1f}")
    table.add_row("throughput", f"{stats.documents / elapsed:.1f} docs/s on {encoder.device}")
    if dead.count:
        table.add_row("dead-lettered", f"{dead.count:,} (in {dead.path})")
    return table


def _cut_where(encoder: SpladeEncoder) -> str:
    """Where a document's text is cut, in the words of the encoder's long_documents mode."""
    policy = encoder.window_policy()
    if policy.windowed:
        return f"{policy.max_windows} windows of {policy.window} tokens (--max-windows)"
    return f"{encoder.max_length} tokens (--long-documents maxpool reads all of it)"


@contextlib.contextmanager
def _replaced_when_done(path: Path) -> Iterator[IO[str]]:
    """A temporary file next to ``path`` (compressed as its name says) that replaces it only
    when the block completes; on any error or interrupt it is removed and ``path`` stays as
    it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open_output_text(tmp, compression_of(path)) as handle:
            yield handle
        with open(tmp, "rb") as written:  # durable before it takes the name
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
