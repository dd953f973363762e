"""``splade-es migrate``: BM25 index -> SPLADE index behind an alias, gated."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from .. import defaults
from ..connect import call, connect
from ..documents import parse_fields
from ..migrate.config import (
    COMPARE_SAMPLE,
    HYBRID_WEIGHT,
    MAX_DELTA,
    MAX_PASSES,
    WORKERS,
    Gate,
    MigrationConfig,
)
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
    parse_long_document_modes,
    print_table,
    progress_display,
    warn,
    window_policy_of,
)

if TYPE_CHECKING:
    from ..encoding.protocol import DocumentEncoder
    from ..migrate.run import MigrationReport


@main.command()
@connection_options
@click.option("--source", required=True, help="The BM25 index to migrate.")
@click.option("--target", required=True, help="The index to build (created if absent).")
@click.option("--alias", required=True, help="The alias applications search through.")
@model_option(required=False)
@click.option(
    "--text-fields", default=",".join(defaults.TEXT_FIELDS), show_default=True, type=FIELDS
)
@click.option("--sparse-field", default=defaults.VECTOR_FIELD, show_default=True)
@click.option(
    "--field-type",
    type=click.Choice(["rank_features", "sparse_vector"]),
    default=defaults.FIELD_TYPE,
    show_default=True,
)
@click.option("--slices", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--batch-size", default=defaults.BATCH_SIZE, show_default=True, type=click.IntRange(1)
)
@click.option("--workers", default=WORKERS, show_default=True, type=click.IntRange(1))
@click.option("--checkpoint", type=NEW_FILE, help="Migration state file.")
@click.option(
    "--dead-letter",
    type=NEW_FILE,
    help="JSONL of refused documents (default: next to --checkpoint, else "
    "<target>.dead-letter.jsonl here).",
)
@click.option("--gate-queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--gate-qrels", type=click.Path(exists=True, dir_okay=False))
@click.option("--min-ndcg-gain", type=float, help="Gate: nDCG@10 gain over BM25 (needs qrels).")
@click.option("--min-overlap", type=click.FloatRange(0, 1), help="Gate: overlap@10 with BM25.")
@click.option(
    "--hybrid-weight", default=HYBRID_WEIGHT, show_default=True, type=click.FloatRange(0, 1)
)
@click.option(
    "--hybrid-method",
    type=click.Choice(["sum", "linear", "rrf"]),
    default="sum",
    show_default=True,
    help="Gate: how the hybrid row combines BM25 and SPLADE (sum: one bool query).",
)
@click.option(
    "--fusion",
    type=click.Choice(["engine", "client", "auto"]),
    default="auto",
    show_default=True,
    help="Gate: who fuses a linear/rrf hybrid row: the engine, the client (one _msearch; any "
    "license, no plugin), or the engine where the cluster can and the client otherwise.",
)
@click.option(
    "--max-delta",
    default=MAX_DELTA,
    show_default=True,
    type=click.IntRange(1),
    help="Catch-up passes repeat until one finds fewer changes than this.",
)
@click.option("--max-passes", default=MAX_PASSES, show_default=True, type=click.IntRange(1))
@click.option(
    "--no-write-block",
    is_flag=True,
    help="Do not block writes to --source during the final pass and the switch (writes "
    "acknowledged in between can be missing from the target).",
)
@click.option("--switch", "mode", flag_value="switch", help="Switch the alias if the gate passes.")
@click.option(
    "--dry-run", "mode", flag_value="dry-run", default=True, help="Do not switch (default)."
)
@click.option("--rollback", "mode", flag_value="rollback", help="Point the alias back at --source.")
@click.option(
    "--report",
    "report_path",
    type=NEW_FILE,
    help="Markdown report; a PNG chart is written next to it.",
)
@long_document_options()
@click.option(
    "--compare-long-documents",
    callback=parse_long_document_modes,
    metavar="truncate,maxpool,passages",
    help="Gate: before the copy, compare these modes on --gate-qrels over a sample of the "
    "source (in memory) and report them next to --long-documents.",
)
@click.option(
    "--compare-sample",
    default=COMPARE_SAMPLE,
    show_default=True,
    type=click.IntRange(1),
    help="Documents of the source the comparison encodes (every judged one, then others).",
)
@device_option()
@click.option("--quiet", "-q", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@fail_cleanly
def migrate(**opts: Any) -> None:
    """Move a BM25 index to SPLADE behind an alias, with a relevance gate before the switch.

    Exit status: 0 when done (switched, or a dry run whose checks passed), 1 when the gate or
    the verification failed or --switch did not switch, 2 on errors.

    The application may keep writing through the alias: catch-up passes copy its writes and
    deletes, and the final pass and the switch run with writes to --source blocked (a few
    seconds; --no-write-block to skip, at the risk of missing writes made meanwhile).
    """
    from ..migrate.indices import require_source, rollback

    cluster = connect(connection_config(opts))
    if opts["mode"] == "rollback":
        now = rollback(cluster.client, opts["alias"], opts["source"])
        err_console.print(f"alias {opts['alias']} -> {', '.join(now)}")
        return
    if not opts["model"]:
        raise click.UsageError("--model is required (or SPLADE_ES_MODEL)")
    # Before the model loads and the source is counted: a missing source is named as such,
    # not as an error while counting it.
    require_source(cluster.client, opts["source"])
    config = _migration_config(opts)
    from ..encoding.encoder import SpladeEncoder

    encoder = SpladeEncoder.from_pretrained(
        opts["model"], device=opts["device"], trust_remote_code=opts["trust_remote_code"]
    )
    report = _run_with_progress(cluster.client, config, encoder, opts)
    if opts["report_path"]:
        _write_report_files(report, Path(opts["report_path"]))
    _print_report(report, as_json=opts["as_json"])
    if report.truncated:  # never silent, whatever the output format
        where = (
            "past the model's window"
            if opts["long_documents"] == "truncate"
            else ("past --max-windows")
        )
        warn(f"{report.truncated:,} document(s) lost their text {where}")
    if _failed(report, switch_asked=opts["mode"] == "switch"):
        sys.exit(EXIT_PARTIAL)


def _migration_config(opts: dict[str, Any]) -> MigrationConfig:
    """The ``MigrationConfig`` the options describe (a gate if --gate-queries is given)."""
    from ..ingest.checkpoint import default_dead_letter

    return MigrationConfig(
        source=opts["source"],
        target=opts["target"],
        alias=opts["alias"],
        text_fields=parse_fields(opts["text_fields"]),
        sparse_field=opts["sparse_field"],
        field_type=opts["field_type"],
        slices=opts["slices"],
        batch_size=opts["batch_size"],
        workers=opts["workers"],
        checkpoint=opts["checkpoint"],
        dead_letter=opts["dead_letter"]
        or str(default_dead_letter(opts["target"], opts["checkpoint"])),
        gate=_gate(opts),
        switch=opts["mode"] == "switch",
        max_delta=opts["max_delta"],
        max_passes=opts["max_passes"],
        write_block=not opts["no_write_block"],
        long_documents=window_policy_of(opts),
        compare_long_documents=tuple(opts["compare_long_documents"]),
        compare_sample=opts["compare_sample"],
    )


def _gate(opts: dict[str, Any]) -> Gate | None:
    if not opts["gate_queries"]:
        return None
    from ..beir import read_qrels, read_queries

    return Gate(
        queries=read_queries(opts["gate_queries"]),
        qrels=read_qrels(opts["gate_qrels"]) if opts["gate_qrels"] else None,
        min_ndcg_gain=opts["min_ndcg_gain"],
        min_overlap=opts["min_overlap"],
        hybrid_weight=opts["hybrid_weight"],
        hybrid_method=opts["hybrid_method"],
        fusion=opts["fusion"],
    )


def _run_with_progress(
    client: Any, config: MigrationConfig, encoder: DocumentEncoder, opts: dict[str, Any]
) -> MigrationReport:
    """``migrate`` with the copy's progress bars and each step as a dim line (none with
    --quiet or --json)."""
    from ..migrate.run import migrate as run_migration

    quiet = opts["quiet"] or opts["as_json"]
    total, already = _copy_counts(client, config.source, config.target)
    if already and not quiet:
        err_console.print(f"{already:,} of {total:,} documents already copied to {config.target}")
    with progress_display(quiet) as progress:
        # A resumed copy skips what the target holds: the bars start there, and their
        # rates count only this run's documents.
        tasks = {
            stage: progress.add_task(
                f"copy: {stage}" + (f" ({already:,} already copied)" if stage == "read" else ""),
                total=total,
                completed=0 if stage == "failed" else already,
                already=0 if stage == "failed" else already,
            )
            for stage in ("read", "encoded", "indexed", "failed")
        }
        return run_migration(
            client,
            config,
            encoder=encoder,
            progress=lambda stage, n: progress.advance(tasks[stage], n),
            on_step=None if quiet else lambda m: progress.console.print(Text(m, style="dim")),
        )


def _write_report_files(report: MigrationReport, path: Path) -> None:
    """The Markdown report, and the PNG chart next to it where matplotlib is installed."""
    from ..migrate.report import write_chart, write_markdown

    try:
        chart = write_chart(report, path.with_suffix(".png"))
    except ImportError:
        chart = None
        warn("no PNG chart: it needs matplotlib (pip install 'splade-es[report]')")
    write_markdown(report, path, chart=chart.name if chart else None)


def _print_report(report: MigrationReport, *, as_json: bool) -> None:
    from ..migrate.report import gate_table, summary_lines
    from ..migrate.run import report_json

    if as_json:
        click.echo(json.dumps(report_json(report)))
        return
    if report.gate:
        print_table(gate_table(report))
    for line in summary_lines(report):
        err_console.print(Text(line))


def _failed(report: MigrationReport, *, switch_asked: bool) -> bool:
    """Exit status 1: the verification or the gate failed, or --switch did not switch
    (e.g. documents refused during a catch-up pass)."""
    return (
        not report.verification.ok
        or (report.gate is not None and not report.gate.passed)
        or (switch_asked and not report.switched)
    )


def _copy_counts(client: Any, source: str, target: str) -> tuple[int, int]:
    """Documents in the source, and those already in the target (a resumed migration)."""
    total = int(call(lambda: client.count(index=source), f"counting {source}")["count"])
    if not call(lambda: client.indices.exists(index=target), f"checking {target}"):
        return total, 0
    call(lambda: client.indices.refresh(index=target), f"refreshing {target}")
    already = int(call(lambda: client.count(index=target), f"counting {target}")["count"])
    return total, min(already, total)
