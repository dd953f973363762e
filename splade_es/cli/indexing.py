"""``splade-es create-index`` and ``splade-es ingest``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.progress import Progress
from rich.table import Table

from .. import defaults
from ..connect import Cluster, connect
from ..documents import parse_fields
from .app import (
    EXIT_PARTIAL,
    FIELDS,
    NEW_FILE,
    connection_config,
    connection_options,
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

MB = 1024 * 1024  # --bulk-bytes is given in MB

if TYPE_CHECKING:
    from ..encoding.encoder import SpladeEncoder
    from ..ingest import IngestConfig, IngestReport
    from ..ingest.pipeline import ProgressCallback
    from ..ingest.sources import Format


@main.command("create-index")
@connection_options
@click.option("--index", required=True)
@click.option(
    "--field-type",
    type=click.Choice(["rank_features", "sparse_vector"]),
    default=defaults.FIELD_TYPE,
    show_default=True,
)
@click.option("--sparse-field", default=defaults.VECTOR_FIELD, show_default=True)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True)
@click.option("--replicas", type=click.IntRange(0), default=1, show_default=True)
@click.option(
    "--passages",
    is_flag=True,
    help="The sparse field holds one nested object per passage (ingest --long-documents passages).",
)
@click.option("--print-body", is_flag=True, help="Print the index body that was sent.")
@fail_cleanly
def create_index(**opts: Any) -> None:
    """Create an index for SPLADE vectors from the templates in mappings/."""
    from ..engines import dialect_of
    from ..search import create_index as create

    cluster = connect(connection_config(opts))
    dialect = dialect_of(cluster)
    body = create(
        cluster.client,
        opts["index"],
        field_type=opts["field_type"],
        sparse_field=opts["sparse_field"],
        shards=opts["shards"],
        replicas=opts["replicas"],
        dialect=dialect,
        passages=opts["passages"],
    )
    err_console.print(
        f"created {opts['index']} on {cluster.description}: "
        f"{opts['field_type']} field {opts['sparse_field']!r} "
        + ("(nested passages) " if opts["passages"] else "")
        + f"(feature keys: {dialect.key_scheme(opts['field_type'])} scheme)"
    )
    if opts["print_body"]:
        click.echo(json.dumps(body, indent=2))


@main.command()
@connection_options
@click.option("--index", required=True)
@model_option()
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, allow_dash=True),
    help="File, BEIR folder, or '-' for standard input (pipes, FIFOs and /dev/stdin work "
    "too); .gz, .zst, .bz2 and .xz files are decompressed as they are read.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "parquet", "beir"]),
    help="Input format (default: from the file name, a compression suffix aside; a folder "
    "is BEIR; standard input is JSONL).",
)
@click.option(
    "--id-field",
    default=defaults.ID_FIELD,
    show_default=True,
    help="Field holding the document id; '' for a content hash of the document.",
)
@click.option(
    "--text-fields", default=",".join(defaults.TEXT_FIELDS), show_default=True, type=FIELDS
)
@click.option("--keep-fields", type=FIELDS, help="Fields stored next to the vector (default: all).")
@click.option("--sparse-field", default=defaults.VECTOR_FIELD, show_default=True)
@click.option(
    "--batch-size", default=defaults.BATCH_SIZE, show_default=True, type=click.IntRange(1)
)
@click.option("--bulk-docs", default=defaults.BULK_DOCS, show_default=True, type=click.IntRange(1))
@click.option(
    "--bulk-bytes",
    default=defaults.BULK_BYTES / MB,
    show_default=True,
    type=click.FloatRange(0.01),
    help="MB",
)
@click.option(
    "--workers",
    default=defaults.WORKERS,
    show_default=True,
    type=click.IntRange(1),
    help="Bulk senders.",
)
@click.option(
    "--max-retries", default=defaults.MAX_RETRIES, show_default=True, type=click.IntRange(0)
)
@click.option("--checkpoint", type=NEW_FILE, help="Resume file.")
@click.option(
    "--dead-letter",
    type=NEW_FILE,
    help="JSONL of refused records (default: next to --checkpoint, else "
    "<index>.dead-letter.jsonl here).",
)
@click.option("--shard", default="0/1", show_default=True, help="i/N: this worker's share.")
@click.option("--create", is_flag=True, help="Create the index from mappings/ if absent.")
@click.option(
    "--field-type",
    type=click.Choice(["rank_features", "sparse_vector"]),
    default=defaults.FIELD_TYPE,
    show_default=True,
    help="With --create.",
)
@long_document_options()
@device_option()
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@fail_cleanly
def ingest(**opts: Any) -> None:
    """Read, encode and bulk-index documents (resumable, lossless).

    Exit status: 0 when every record was indexed, 1 when some went to the dead-letter file,
    2 on errors that stopped the job.
    """
    from ..encoding.encoder import SpladeEncoder
    from ..ingest import ingest_file
    from ..ingest.checkpoint import default_dead_letter
    from ..ingest.inputs import InputFile
    from ..ingest.pipeline import check_resumable

    dead_letter = opts["dead_letter"] or str(default_dead_letter(opts["index"], opts["checkpoint"]))
    config = _ingest_config(opts, dead_letter)
    check_resumable(opts["input_path"], config)  # before the cluster and the model
    cluster = connect(connection_config(opts))
    encoder = SpladeEncoder.from_pretrained(
        opts["model"],
        device=opts["device"],
        dtype=opts["dtype"],
        trust_remote_code=opts["trust_remote_code"],
    )
    with progress_display(opts["quiet"] or opts["as_json"]) as progress:
        records_progress, input_progress = _ingest_bars(progress, opts["input_path"], opts["fmt"])
        report = ingest_file(
            cluster.client,
            opts["input_path"],
            fmt=opts["fmt"],
            encoder=encoder,
            config=config,
            progress=records_progress,
            input_progress=input_progress,
        )
    if opts["as_json"]:
        click.echo(json.dumps(report.to_json()))
    else:
        print_table(_ingest_summary(report, cluster, encoder, dead_letter), err_console)
    if not (report.read or report.skipped_done or report.other_shards):
        warn(f"{InputFile(opts['input_path']).name} holds no records: nothing was indexed")
    warn_if_truncated(report)
    if report.dead_lettered:
        warn(f"{report.dead_lettered:,} record(s) were not indexed; see {dead_letter}")
        sys.exit(EXIT_PARTIAL)


def warn_if_truncated(report: IngestReport) -> None:
    """A document that lost text is never silent: the count, at the end of every run."""
    if not report.truncated:
        return
    if report.long_documents == "truncate":
        warn(
            f"{report.truncated:,} document(s) lost their text past the model's window: "
            "--long-documents maxpool or passages encodes all of it"
        )
    else:
        warn(f"{report.truncated:,} document(s) lost their text past --max-windows")


def _ingest_config(opts: dict[str, Any], dead_letter: str) -> IngestConfig:
    """The job the command line describes."""
    from ..ingest import IngestConfig, RetryPolicy, parse_shard

    return IngestConfig(
        index=opts["index"],
        id_field=opts["id_field"] or None,
        text_fields=parse_fields(opts["text_fields"]),
        keep_fields=parse_fields(opts["keep_fields"]) if opts["keep_fields"] else None,
        sparse_field=opts["sparse_field"],
        batch_size=opts["batch_size"],
        bulk_docs=opts["bulk_docs"],
        bulk_bytes=int(opts["bulk_bytes"] * MB),
        workers=opts["workers"],
        checkpoint=opts["checkpoint"],
        dead_letter=dead_letter,
        shard=parse_shard(opts["shard"]),
        retry=RetryPolicy(max_retries=opts["max_retries"]),
        create=opts["create"],
        field_type=opts["field_type"],
        long_documents=window_policy_of(opts),
    )


def _ingest_bars(
    progress: Progress, input_path: str, fmt: Format | None
) -> tuple[ProgressCallback, Callable[[int], None]]:
    """The bars of a run and what advances them: the input by bytes read, its size on disk
    the total (none for a stream), so that nothing reads it twice to count records; and the
    records read, encoded, indexed and refused, counted as they go."""
    from ..ingest.pipeline import STAGES
    from ..ingest.sources import input_size

    size = input_size(input_path, fmt)
    input_task = progress.add_task("input", total=size, unit="bytes")
    tasks = {stage: progress.add_task(stage, total=None) for stage in STAGES}

    def advance_records(stage: str, n: int) -> None:
        progress.advance(tasks[stage], n)

    def advance_input(n: int) -> None:
        progress.advance(input_task, n)

    return advance_records, advance_input


def _ingest_summary(
    report: IngestReport, cluster: Cluster, encoder: SpladeEncoder, dead_letter: str
) -> Table:
    table = Table(title=f"ingested into {report.index} on {cluster.description}", show_header=False)
    table.add_row("read", f"{report.read:,}")
    table.add_row("indexed", f"{report.indexed:,}")
    table.add_row(
        "dead-lettered",
        f"{report.dead_lettered:,}" + (f" (in {dead_letter})" if report.dead_lettered else ""),
    )
    table.add_row("items retried", f"{report.retried_items:,}")
    if report.resumed_from:
        table.add_row(
            "resumed after input position",
            f"{report.resumed_from:,} ({report.skipped_done:,} records done before)",
        )
        table.add_row("indexed over all runs", f"{report.total_indexed:,}")
    if report.other_shards:
        table.add_row("records of other shards", f"{report.other_shards:,}")
    table.add_row("long documents", report.long_document_summary())
    table.add_row("throughput", f"{report.docs_per_second:,.1f} docs/s on {encoder.device}")
    return table
