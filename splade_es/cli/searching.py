"""``splade-es search`` and ``splade-es evaluate``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from ..connect import connect
from ..documents import parse_fields
from .app import (
    connection_config,
    connection_options,
    err_console,
    fail_cleanly,
    main,
    model_option,
    print_table,
    progress_display,
)


def query_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by search and evaluate: model, field, pruning and hybrid."""
    options = [
        click.option("--index", required=True),
        model_option(describe="The checkpoint the index was built with."),
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
    from ..encoder import SpladeEncoder
    from ..engines import Hybrid
    from ..query import QueryBuilder, QueryPruning
    from ..search import create_hybrid_pipeline

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
        if opts["create_pipeline"]:
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
@fail_cleanly
def search(**opts: Any) -> None:
    """Search an index with a SPLADE query (exact dot-product scoring)."""
    from ..search import contributions, search, token_namer

    filters = [_parse_filter(f) for f in opts["filters"]]
    cluster, encoder, builder, hybrid = _query_setup(opts, opts["bm25_weight"])
    result = search(
        cluster.client,
        opts["index"],
        opts["text"],
        encoder=encoder,
        builder=builder,
        k=opts["k"],
        filters=filters,
        hybrid=hybrid,
    )
    token_of = token_namer(builder, encoder.vocab)
    rows = []
    for hit in result.hits:
        doc_vector = hit.source.get(opts["sparse_field"])
        matched = (
            contributions(result.features, doc_vector, token_of=token_of)
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
    print_table(table)
    note = f"{result.prune.kept} query tokens"
    if result.prune.pruned:
        note += (
            f" ({result.prune.dropped} pruned, {100 * result.prune.kept_weight:.1f}% weight kept)"
        )
    err_console.print(f"{note}; encode {result.encode_ms:.1f} ms, search {result.search_ms:.1f} ms")


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
@query_options
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--qrels", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--mode", type=click.Choice(["splade", "bm25", "hybrid"]), default="splade", show_default=True
)
@click.option("--hybrid-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--k", default=100, show_default=True, type=click.IntRange(1))
@fail_cleanly
def evaluate(**opts: Any) -> None:
    """Run queries through the cluster: nDCG@10, MRR@10, Recall@100 and latency."""
    from ..beir import read_qrels, read_queries
    from ..evaluate import evaluate as run_evaluation

    queries, qrels = read_queries(opts["queries"]), read_qrels(opts["qrels"])
    mode = opts["mode"]
    if mode == "bm25":
        cluster, encoder, builder, hybrid = connect(connection_config(opts)), None, None, None
    else:
        weight = opts["hybrid_weight"] if mode == "hybrid" else None
        cluster, encoder, builder, hybrid = _query_setup(opts, weight)
    judged = sum(1 for qid in qrels if qid in queries)
    with progress_display(opts["as_json"]) as progress:
        task = progress.add_task(f"{mode} queries", total=judged, unit="queries")
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
    print_table(table)
