"""The ``splade-es`` command: a thin shell over the library API.

Each command parses options, calls one library function and prints the result. Errors from
the library (``SpladeEsError``) become a one-line message and exit status 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from . import __version__
from .connect import ConnectionConfig, connect
from .documents import document_id, document_text, parse_fields, read_jsonl
from .exceptions import SpladeEsError

err_console = Console(stderr=True)


def _fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpladeEsError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(2)

    return wrapper


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by every command that talks to a cluster. Secrets come from the
    environment or the command line and are never echoed."""
    options = [
        click.option(
            "--url",
            envvar="SPLADE_ES_URL",
            help="Cluster URL(s), comma-separated. [env: SPLADE_ES_URL]",
        ),
        click.option(
            "--cloud-id",
            envvar="SPLADE_ES_CLOUD_ID",
            help="Elastic Cloud id. [env: SPLADE_ES_CLOUD_ID]",
        ),
        click.option(
            "--api-key",
            envvar="SPLADE_ES_API_KEY",
            help="API key (encoded). [env: SPLADE_ES_API_KEY]",
        ),
        click.option(
            "--user", envvar="SPLADE_ES_USER", help="Basic-auth user. [env: SPLADE_ES_USER]"
        ),
        click.option(
            "--password",
            envvar="SPLADE_ES_PASSWORD",
            help="Basic-auth password; prefer the env var. [env: SPLADE_ES_PASSWORD]",
        ),
        click.option(
            "--ca-certs",
            envvar="SPLADE_ES_CA_CERTS",
            type=click.Path(exists=True, dir_okay=False),
            help="CA bundle to verify the cluster's certificate. [env: SPLADE_ES_CA_CERTS]",
        ),
        click.option(
            "--no-verify-certs",
            is_flag=True,
            default=False,
            help="Do not verify TLS certificates (local testing only; prints a warning).",
        ),
        click.option(
            "--engine",
            type=click.Choice(["auto", "elasticsearch", "opensearch"]),
            default="auto",
            show_default=True,
            help="Engine dialect; auto detects it from the cluster.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def connection_config(opts: dict[str, Any]) -> ConnectionConfig:
    """ConnectionConfig from the shared options (removes them from ``opts``)."""
    url, cloud_id = opts.pop("url"), opts.pop("cloud_id")
    no_verify = opts.pop("no_verify_certs")
    if no_verify:
        err_console.print("[yellow]warning:[/] TLS certificate verification is disabled")
    common = dict(
        cloud_id=cloud_id,
        api_key=opts.pop("api_key"),
        username=opts.pop("user"),
        password=opts.pop("password"),
        ca_certs=opts.pop("ca_certs"),
        verify_certs=not no_verify,
        engine=opts.pop("engine"),
    )
    return ConnectionConfig.from_urls(url or "", **common)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="splade-es")
def main() -> None:
    """SPLADE learned-sparse retrieval for Elasticsearch and OpenSearch.

    text -> encoder -> sparse vectors -> engine dialect -> cluster
    """


# --------------------------------------------------------------------------- encode
@main.command()
@click.option(
    "--model",
    "-m",
    required=True,
    envvar="SPLADE_ES_MODEL",
    help="Hugging Face id or local folder of a SPLADE checkpoint. [env: SPLADE_ES_MODEL]",
)
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSONL file of documents.",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSONL file to write ('-' for stdout): one {id, vector, truncated} object a line.",
)
@click.option(
    "--text-fields", default="title,text", show_default=True, help="Fields joined into the text."
)
@click.option("--id-field", default="_id", show_default=True)
@click.option(
    "--vector-field", default="splade", show_default=True, help="Output field for the vector."
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
)
@click.option("--max-length", type=click.IntRange(2), help="Truncate texts to this many tokens.")
@click.option("--top-k", type=click.IntRange(1), help="Keep the K largest weights per document.")
@click.option("--min-weight", type=click.FloatRange(0), help="Drop weights below this value.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_fail_cleanly
def encode(**opts: Any) -> None:
    """Encode a JSONL file of documents into SPLADE {token: weight} vectors."""
    from .encoder import SpladeEncoder

    fields = parse_fields(opts["text_fields"])
    encoder = SpladeEncoder.from_pretrained(
        opts["model"], device=opts["device"], dtype=opts["dtype"], max_length=opts["max_length"]
    )
    with open(opts["input_path"], "rb") as handle:
        total = sum(1 for line in handle if line.strip())
    ids: deque[str] = deque()

    def texts() -> Iterator[str]:
        for line_no, doc in read_jsonl(opts["input_path"]):
            ids.append(document_id(doc, opts["id_field"], line_no))
            yield document_text(doc, fields, line_no)

    stats = {"documents": 0, "truncated": 0, "active": 0}
    started = time.perf_counter()
    with (
        click.open_file(opts["output_path"], "w", encoding="utf-8") as out,
        _progress(opts["quiet"] or opts["output_path"] == "-") as progress,
    ):
        task = progress.add_task("encoding", total=total)
        for window in encoder.iter_encode(texts(), batch_size=opts["batch_size"]):
            window = window.prune(top_k=opts["top_k"], min_weight=opts["min_weight"])
            for i in range(len(window)):
                record = {
                    opts["id_field"]: ids.popleft(),
                    opts["vector_field"]: window.to_dict(i),
                }
                if window.truncated is not None and window.truncated[i]:
                    record["truncated"] = True
                    stats["truncated"] += 1
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            stats["documents"] += len(window)
            stats["active"] += int(window.nnz_per_row.sum())
            progress.advance(task, len(window))
    elapsed = time.perf_counter() - started
    table = Table(title=f"encoded with {opts['model']}", show_header=False)
    table.add_row("documents", f"{stats['documents']:,}")
    table.add_row(
        "truncated documents", f"{stats['truncated']:,} (max {encoder.max_length} tokens)"
    )
    mean_active = stats["active"] / stats["documents"] if stats["documents"] else 0.0
    table.add_row("mean active dims", f"{mean_active:.1f}")
    table.add_row("throughput", f"{stats['documents'] / elapsed:.1f} docs/s on {encoder.device}")
    err_console.print(table)


class RateColumn(ProgressColumn):
    """Documents per second, averaged by rich over the last few updates."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} docs/s" if speed else "-- docs/s", style="cyan")


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    )


@main.command("create-index")
@connection_options
@click.option("--index", required=True)
@click.option(
    "--field-type",
    type=click.Choice(["rank_features", "sparse_vector"]),
    default="rank_features",
    show_default=True,
)
@click.option("--sparse-field", default="splade", show_default=True)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True)
@click.option("--replicas", type=click.IntRange(0), default=1, show_default=True)
@click.option("--print-body", is_flag=True, help="Print the index body that was sent.")
@_fail_cleanly
def create_index(**opts: Any) -> None:
    """Create an index for SPLADE vectors from the templates in mappings/."""
    from .engines import dialect_for
    from .search import create_index as create

    cluster = connect(connection_config(opts))
    dialect = dialect_for(cluster.engine, cluster.version)
    body = create(
        cluster.client,
        opts["index"],
        field_type=opts["field_type"],
        sparse_field=opts["sparse_field"],
        shards=opts["shards"],
        replicas=opts["replicas"],
        dialect=dialect,
    )
    err_console.print(
        f"created [bold]{opts['index']}[/] on {cluster.description}: "
        f"{opts['field_type']} field {opts['sparse_field']!r} "
        f"(feature keys: {dialect.key_scheme(opts['field_type'])} scheme)",
        highlight=False,
    )
    if opts["print_body"]:
        click.echo(json.dumps(body, indent=2))


@main.command()
@connection_options
@click.option("--index", required=True)
@click.option(
    "--model",
    "-m",
    required=True,
    envvar="SPLADE_ES_MODEL",
    help="Hugging Face id or local folder of a SPLADE checkpoint. [env: SPLADE_ES_MODEL]",
)
@click.option(
    "--input", "input_path", required=True, type=click.Path(exists=True), help="File or folder."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "parquet", "beir"]),
    help="Input format (default: from the file name; a folder is BEIR).",
)
@click.option(
    "--id-field",
    default="_id",
    show_default=True,
    help="Field holding the document id; '' for a content hash of the document.",
)
@click.option("--text-fields", default="title,text", show_default=True)
@click.option("--keep-fields", help="Fields stored next to the vector (default: all).")
@click.option("--sparse-field", default="splade", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--bulk-docs", default=500, show_default=True, type=click.IntRange(1))
@click.option(
    "--bulk-bytes", default=8.0, show_default=True, type=click.FloatRange(0.01), help="MB"
)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(1), help="Bulk senders."
)
@click.option("--max-retries", default=8, show_default=True, type=click.IntRange(0))
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Resume file.")
@click.option("--dead-letter", type=click.Path(dir_okay=False), help="JSONL of refused records.")
@click.option("--shard", default="0/1", show_default=True, help="i/N: this worker's share.")
@click.option("--create", is_flag=True, help="Create the index from mappings/ if absent.")
@click.option(
    "--field-type",
    type=click.Choice(["rank_features", "sparse_vector"]),
    default="rank_features",
    show_default=True,
    help="With --create.",
)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@_fail_cleanly
def ingest(**opts: Any) -> None:
    """Read, encode and bulk-index documents (resumable, lossless).

    Exit status: 0 when every record was indexed, 1 when some went to the dead-letter file,
    2 on errors that stopped the job.
    """
    from .encoder import SpladeEncoder
    from .ingest import IngestConfig, RetryPolicy, ingest_file, parse_shard

    config = IngestConfig(
        index=opts["index"],
        id_field=opts["id_field"] or None,
        text_fields=parse_fields(opts["text_fields"]),
        keep_fields=parse_fields(opts["keep_fields"]) if opts["keep_fields"] else None,
        sparse_field=opts["sparse_field"],
        batch_size=opts["batch_size"],
        bulk_docs=opts["bulk_docs"],
        bulk_bytes=int(opts["bulk_bytes"] * 1024 * 1024),
        workers=opts["workers"],
        checkpoint=opts["checkpoint"],
        dead_letter=opts["dead_letter"],
        shard=parse_shard(opts["shard"]),
        retry=RetryPolicy(max_retries=opts["max_retries"]),
        create=opts["create"],
        field_type=opts["field_type"],
    )
    cluster = connect(connection_config(opts))
    encoder = SpladeEncoder.from_pretrained(
        opts["model"], device=opts["device"], dtype=opts["dtype"]
    )
    total = _count_records(opts["input_path"], opts["fmt"])
    with _progress(opts["quiet"] or opts["as_json"]) as progress:
        tasks = {
            stage: progress.add_task(stage, total=total)
            for stage in ("read", "encoded", "indexed", "failed")
        }
        report = ingest_file(
            cluster.client,
            opts["input_path"],
            fmt=opts["fmt"],
            encoder=encoder,
            config=config,
            progress=lambda stage, n: progress.advance(tasks[stage], n),
        )
    if opts["as_json"]:
        click.echo(json.dumps(report.to_json()))
    else:
        table = Table(
            title=f"ingested into {report.index} on {cluster.description}", show_header=False
        )
        table.add_row("read", f"{report.read:,}")
        table.add_row("indexed", f"{report.indexed:,}")
        table.add_row("dead-lettered", f"{report.dead_lettered:,}")
        table.add_row("items retried", f"{report.retried_items:,}")
        if report.resumed_from:
            table.add_row(
                "resumed after input position",
                f"{report.resumed_from:,} ({report.skipped_done:,} records done before)",
            )
            table.add_row("indexed over all runs", f"{report.total_indexed:,}")
        if report.other_shards:
            table.add_row("records of other shards", f"{report.other_shards:,}")
        table.add_row("throughput", f"{report.docs_per_second:,.1f} docs/s on {encoder.device}")
        err_console.print(table)
    if report.dead_lettered:
        where = opts["dead_letter"] or "nowhere (no --dead-letter file given)"
        err_console.print(
            f"[yellow]{report.dead_lettered:,} record(s) were not indexed; see {where}[/]",
            highlight=False,
        )
        sys.exit(1)


def _count_records(path: str, fmt: str | None) -> int | None:
    """Records in a JSONL/CSV input, for the progress bars (None: unknown)."""
    from pathlib import Path

    from .ingest.sources import guess_format

    source = Path(path)
    kind = fmt or guess_format(source)
    if kind == "beir":
        source = source / "corpus.jsonl" if source.is_dir() else source
    if kind not in ("jsonl", "beir", "csv"):
        return None
    with open(source, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if kind == "csv" else lines


def query_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by search and evaluate: model, field, pruning and hybrid."""
    options = [
        click.option("--index", required=True),
        click.option(
            "--model",
            "-m",
            required=True,
            envvar="SPLADE_ES_MODEL",
            help="The checkpoint the index was built with. [env: SPLADE_ES_MODEL]",
        ),
        click.option("--sparse-field", default="splade", show_default=True),
        click.option(
            "--text-fields",
            default="title,text",
            show_default=True,
            help="BM25 fields of hybrid / bm25 queries.",
        ),
        click.option("--query-top-k", type=click.IntRange(1), help="Keep the K heaviest tokens."),
        click.option("--query-min-weight", type=click.FloatRange(0), help="Drop lighter tokens."),
        click.option(
            "--query-mass",
            type=click.FloatRange(0, 1, min_open=True),
            help="Keep the heaviest tokens holding this fraction of the query weight.",
        ),
        click.option(
            "--hybrid-method",
            type=click.Choice(["sum", "linear", "rrf"]),
            default="sum",
            show_default=True,
            help="How BM25 and SPLADE are combined (see docs).",
        ),
        click.option(
            "--create-pipeline/--no-create-pipeline",
            default=True,
            show_default=True,
            help="OpenSearch linear/rrf hybrids: create the search pipeline if needed.",
        ),
        click.option("--device", default="auto", show_default=True),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _query_setup(opts: dict[str, Any], bm25_weight: float | None) -> tuple[Any, Any, Any, Any]:
    """(cluster, encoder, builder, hybrid) from the shared query options."""
    from .encoder import SpladeEncoder
    from .engines import Hybrid
    from .query import QueryBuilder, QueryPruning
    from .search import create_hybrid_pipeline

    cluster = connect(connection_config(opts))
    pruning = QueryPruning(
        top_k=opts["query_top_k"], min_weight=opts["query_min_weight"], mass=opts["query_mass"]
    )
    builder = QueryBuilder.for_index(
        cluster.client, opts["index"], field=opts["sparse_field"], pruning=pruning
    )
    hybrid = None
    if bm25_weight is not None:
        hybrid = Hybrid(
            bm25_weight=bm25_weight,
            method=opts["hybrid_method"],
            text_fields=parse_fields(opts["text_fields"]),
        )
        builder.dialect.check_hybrid(hybrid)
        if hybrid.method != "sum" and cluster.engine == "opensearch" and opts["create_pipeline"]:
            create_hybrid_pipeline(cluster.client, hybrid, dialect=builder.dialect)
    encoder = SpladeEncoder.from_pretrained(opts["model"], device=opts["device"])
    return cluster, encoder, builder, hybrid


@main.command()
@connection_options
@query_options
@click.option("--k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--hybrid", "bm25_weight", type=click.FloatRange(0, 1), help="Weight of BM25 (0..1).")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    help="A query clause as JSON, applied as a filter (repeatable).",
)
@click.argument("text")
@_fail_cleanly
def search(**opts: Any) -> None:
    """Search an index with a SPLADE query (exact dot-product scoring)."""
    from .search import contributions, search_vector

    filters = [_parse_filter(f) for f in opts["filters"]]
    cluster, encoder, builder, hybrid = _query_setup(opts, opts["bm25_weight"])
    started = time.perf_counter()
    vector = encoder.encode_queries([opts["text"]])
    encode_ms = (time.perf_counter() - started) * 1000
    result = search_vector(
        cluster.client,
        opts["index"],
        vector,
        builder=builder,
        text=opts["text"],
        k=opts["k"],
        filters=filters,
        hybrid=hybrid,
        encode_ms=encode_ms,
    )
    token_of = builder.codec(vector.vocab).token if builder.scheme == "id" else None
    rows = []
    for hit in result.hits:
        doc_vector = hit.source.get(opts["sparse_field"])
        matched = (
            contributions(
                result.features, doc_vector, **({"token_of": token_of} if token_of else {})
            )
            if isinstance(doc_vector, dict)
            else ()
        )
        rows.append((hit, matched))
    if opts["as_json"]:
        out = {
            "hits": [
                {
                    "id": hit.id,
                    "score": hit.score,
                    "title": hit.source.get("title"),
                    "top_tokens": [
                        {"token": c.token, "contribution": round(c.contribution, 6)}
                        for c in matched[:5]
                    ],
                }
                for hit, matched in rows
            ],
            "query_tokens": result.prune.kept,
            "pruned_tokens": result.prune.dropped,
            "encode_ms": round(result.encode_ms, 3),
            "search_ms": round(result.search_ms, 3),
        }
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    table = Table(title=f"{opts['index']}: {opts['text']!r}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    table.add_column("title / text")
    table.add_column("top matching tokens")
    for rank, (hit, matched) in enumerate(rows, 1):
        snippet = str(hit.source.get("title") or hit.source.get("text") or "")[:60]
        tokens = ", ".join(f"{c.token} {c.contribution:.2f}" for c in matched[:4])
        table.add_row(str(rank), hit.id, f"{hit.score:.4f}", snippet, tokens)
    Console().print(table)
    note = f"{result.prune.kept} query tokens"
    if result.prune.pruned:
        note += (
            f" ({result.prune.dropped} pruned, {100 * result.prune.kept_weight:.1f}% weight kept)"
        )
    err_console.print(
        f"{note}; encode {result.encode_ms:.1f} ms, search {result.search_ms:.1f} ms",
        highlight=False,
    )


def _parse_filter(text: str) -> dict:
    try:
        clause = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc.msg}", param_hint="--filter") from None
    if not isinstance(clause, dict):
        raise click.BadParameter(
            "a filter is a JSON object (a query clause)", param_hint="--filter"
        )
    return clause


@main.command()
@connection_options
@click.option("--source", required=True, help="The BM25 index to migrate.")
@click.option("--target", required=True, help="The index to build (created if absent).")
@click.option("--alias", required=True, help="The alias applications search through.")
@click.option("--model", "-m", envvar="SPLADE_ES_MODEL", help="[env: SPLADE_ES_MODEL]")
@click.option("--text-fields", default="title,text", show_default=True)
@click.option("--sparse-field", default="splade", show_default=True)
@click.option(
    "--field-type",
    type=click.Choice(["rank_features", "sparse_vector"]),
    default="rank_features",
    show_default=True,
)
@click.option("--slices", default=1, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1))
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Migration state file.")
@click.option("--dead-letter", type=click.Path(dir_okay=False))
@click.option("--gate-queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--gate-qrels", type=click.Path(exists=True, dir_okay=False))
@click.option("--min-ndcg-gain", type=float, help="Gate: nDCG@10 gain over BM25 (needs qrels).")
@click.option("--min-overlap", type=click.FloatRange(0, 1), help="Gate: overlap@10 with BM25.")
@click.option("--hybrid-weight", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--switch", "mode", flag_value="switch", help="Switch the alias if the gate passes.")
@click.option(
    "--dry-run", "mode", flag_value="dry-run", default=True, help="Do not switch (default)."
)
@click.option("--rollback", "mode", flag_value="rollback", help="Point the alias back at --source.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Markdown report; a PNG chart is written next to it.",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_fail_cleanly
def migrate(**opts: Any) -> None:
    """Move a BM25 index to SPLADE behind an alias, with a relevance gate before the switch.

    Exit status: 0 when done (switched, or a dry run whose checks passed), 1 when the gate or
    the verification failed, 2 on errors.
    """
    from .migrate import Gate, MigrationConfig, report_json, rollback
    from .migrate import migrate as run_migration
    from .report import gate_table, summary_lines, write_chart, write_markdown

    cluster = connect(connection_config(opts))
    if opts["mode"] == "rollback":
        now = rollback(cluster.client, opts["alias"], opts["source"])
        err_console.print(f"alias {opts['alias']} -> {', '.join(now)}", highlight=False)
        return
    if not opts["model"]:
        raise click.UsageError("--model is required (or SPLADE_ES_MODEL)")
    gate = None
    if opts["gate_queries"]:
        from .beir import read_qrels, read_queries

        gate = Gate(
            queries=read_queries(opts["gate_queries"]),
            qrels=read_qrels(opts["gate_qrels"]) if opts["gate_qrels"] else None,
            min_ndcg_gain=opts["min_ndcg_gain"],
            min_overlap=opts["min_overlap"],
            hybrid_weight=opts["hybrid_weight"],
        )
    config = MigrationConfig(
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
        dead_letter=opts["dead_letter"],
        gate=gate,
        switch=opts["mode"] == "switch",
    )
    from .encoder import SpladeEncoder

    encoder = SpladeEncoder.from_pretrained(opts["model"], device=opts["device"])
    quiet = opts["quiet"] or opts["as_json"]
    total = int(cluster.client.count(index=opts["source"])["count"])
    with _progress(quiet) as progress:
        tasks = {
            stage: progress.add_task(f"copy: {stage}", total=total)
            for stage in ("read", "encoded", "indexed", "failed")
        }
        report = run_migration(
            cluster.client,
            config,
            encoder=encoder,
            progress=lambda stage, n: progress.advance(tasks[stage], n),
            on_step=None if quiet else lambda m: progress.console.print(f"[dim]{m}[/]"),
        )
    if opts["report_path"]:
        chart = write_chart(report, Path(opts["report_path"]).with_suffix(".png"))
        write_markdown(report, opts["report_path"], chart=chart.name if chart else None)
    if opts["as_json"]:
        click.echo(json.dumps(report_json(report)))
    else:
        if report.gate:
            Console().print(gate_table(report))
        for line in summary_lines(report):
            err_console.print(line, highlight=False)
    failed = not report.verification.ok or (report.gate is not None and not report.gate.passed)
    if failed:
        sys.exit(1)


@main.command()
@connection_options
@query_options
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--qrels", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--mode", type=click.Choice(["splade", "bm25", "hybrid"]), default="splade", show_default=True
)
@click.option("--hybrid-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--k", default=100, show_default=True, type=click.IntRange(1))
@_fail_cleanly
def evaluate(**opts: Any) -> None:
    """Run queries through the cluster: nDCG@10, MRR@10, Recall@100 and latency."""
    from .beir import read_qrels, read_queries
    from .evaluate import evaluate as run_evaluation

    queries, qrels = read_queries(opts["queries"]), read_qrels(opts["qrels"])
    mode = opts["mode"]
    if mode == "bm25":
        cluster, encoder, builder, hybrid = connect(connection_config(opts)), None, None, None
    else:
        weight = opts["hybrid_weight"] if mode == "hybrid" else None
        cluster, encoder, builder, hybrid = _query_setup(opts, weight)
    judged = sum(1 for qid in qrels if qid in queries)
    with _progress(opts["as_json"]) as progress:
        task = progress.add_task(f"{mode} queries", total=judged)
        report = run_evaluation(
            cluster.client,
            opts["index"],
            queries,
            qrels,
            encoder=encoder,
            mode=mode,
            k=opts["k"],
            hybrid=hybrid,
            builder=builder,
            field=opts["sparse_field"],
            text_fields=parse_fields(opts["text_fields"]),
            progress=lambda n: progress.update(task, completed=n),
        )
    if opts["as_json"]:
        click.echo(json.dumps(report.to_json()))
        return
    table = Table(title=f"{opts['index']} ({mode}, {report.queries} queries)", show_header=False)
    for name, value in report.metrics.items():
        table.add_row(name, f"{value:.4f}")
    for stage, latency in report.latency_ms.items():
        table.add_row(f"{stage} latency p50 / p95", f"{latency.p50:.1f} / {latency.p95:.1f} ms")
    if report.pruned_queries:
        table.add_row("queries pruned", str(report.pruned_queries))
    Console().print(table)


if __name__ == "__main__":
    main()
