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
from .connect import ConnectionConfig
from .documents import document_id, document_text, parse_fields, read_jsonl
from .exceptions import NotImplementedYetError, SpladeEsError

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


# ------------------------------------------------------------ commands yet to land
def _not_yet(command: str, issue: str) -> None:
    raise NotImplementedYetError(f"'splade-es {command}' is not implemented yet ({issue})")


@main.command("create-index")
@connection_options
@click.option("--index", required=True)
@click.option(
    "--field-type",
    type=click.Choice(["rank_features", "sparse_vector"]),
    default="rank_features",
    show_default=True,
)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True)
@click.option("--replicas", type=click.IntRange(0), default=1, show_default=True)
@_fail_cleanly
def create_index(**opts: Any) -> None:
    """Create an index for SPLADE vectors from the templates in mappings/."""
    connection_config(opts)
    _not_yet("create-index", "engine dialects and mappings")


@main.command()
@connection_options
@click.option("--index", required=True)
@click.option("--model", "-m", required=True, envvar="SPLADE_ES_MODEL")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True))
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "beir"]), default="jsonl"
)
@click.option("--checkpoint", type=click.Path(dir_okay=False))
@click.option("--dead-letter", type=click.Path(dir_okay=False))
@_fail_cleanly
def ingest(**opts: Any) -> None:
    """Read, encode and bulk-index documents (resumable, lossless)."""
    connection_config(opts)
    _not_yet("ingest", "bulk ingestion")


@main.command()
@connection_options
@click.option("--index", required=True)
@click.option("--model", "-m", required=True, envvar="SPLADE_ES_MODEL")
@click.option("--k", default=10, show_default=True, type=click.IntRange(1))
@click.option("--hybrid", type=click.FloatRange(0, 1), help="Weight of BM25 in a hybrid query.")
@click.option("--json", "as_json", is_flag=True)
@click.argument("text")
@_fail_cleanly
def search(**opts: Any) -> None:
    """Search an index with a SPLADE query (exact dot-product scoring)."""
    connection_config(opts)
    _not_yet("search", "query builder")


@main.command()
@connection_options
@click.option("--source", required=True)
@click.option("--target", required=True)
@click.option("--alias", required=True)
@click.option("--model", "-m", required=True, envvar="SPLADE_ES_MODEL")
@click.option("--dry-run", is_flag=True)
@_fail_cleanly
def migrate(**opts: Any) -> None:
    """Move a BM25 index to SPLADE behind an alias, with a relevance gate before the switch."""
    connection_config(opts)
    _not_yet("migrate", "BM25 -> SPLADE migration")


@main.command()
@connection_options
@click.option("--index", required=True)
@click.option("--model", "-m", required=True, envvar="SPLADE_ES_MODEL")
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--qrels", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--mode", type=click.Choice(["splade", "bm25", "hybrid"]), default="splade", show_default=True
)
@click.option("--k", default=100, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
@_fail_cleanly
def evaluate(**opts: Any) -> None:
    """Run queries through the cluster: nDCG@10, MRR@10, Recall@100 and latency."""
    connection_config(opts)
    _not_yet("evaluate", "query builder and evaluation")
