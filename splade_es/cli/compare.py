"""``splade-es compare``: 2 to 4 configurations side by side (``splade_es.workbench``), for
one query or a queries file, with rank changes and, with ``--qrels``, the measures and
wins/ties/losses; ``--ui`` opens the same comparison as a page on 127.0.0.1."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from .. import defaults
from ..connect import connect
from .app import (
    connection_config,
    connection_options,
    device_option,
    err_console,
    fail_cleanly,
    main,
    model_option,
    print_table,
    progress_display,
    warn,
)

if TYPE_CHECKING:
    from ..workbench.compare import Comparison, QueryComparison

DEFAULT_CONFIGS = ("bm25", "splade")


@main.command()
@connection_options
@model_option(required=False, describe="The checkpoint the index was built with.")
@device_option()
@click.option("--index", required=True, help="The index (or alias) configurations search.")
@click.option(
    "--config",
    "configs",
    multiple=True,
    help="A configuration, 2 to 4 times: bm25, splade, hybrid, hybrid:rrf, "
    "hybrid:linear:0.3, with options such as splade,index=ALIAS or model=PATH,index=NAME "
    "(README: Relevance workbench).  [default: bm25 and splade]",
)
@click.option("--query", "text", help="One query text.")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False), help="queries.jsonl")
@click.option(
    "--qrels",
    type=click.Path(dir_okay=False),
    help="Judgments (BEIR TSV): the measures per configuration and per query; with --ui, "
    "where the page saves judgments (created if missing).",
)
@click.option("--k", default=defaults.TOP_K, show_default=True, type=click.IntRange(1))
@click.option(
    "--fusion",
    type=click.Choice(["engine", "client", "auto"]),
    default="auto",
    show_default=True,
    help="Who fuses linear / rrf hybrids, as search --fusion (a configuration's fusion=... wins).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--ui", is_flag=True, help="Serve the comparison as a page on 127.0.0.1.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="--ui's port (0: free).")
@fail_cleanly
def compare(**opts: Any) -> None:
    """Compare configurations side by side: each one's top hits per query with rank changes
    against the first; with --qrels, nDCG@10, RR@10 and R@100 per configuration and its
    wins/ties/losses against the first."""
    from ..workbench.configurations import parse_configurations

    configurations = parse_configurations(opts["configs"] or DEFAULT_CONFIGS)
    if opts["ui"]:
        _serve_ui(opts, configurations)
        return
    queries = _queries(opts)
    comparison = _run(opts, configurations, queries)
    if opts["as_json"]:
        click.echo(json.dumps(comparison.to_json(), ensure_ascii=False))
        return
    for query in comparison.queries:
        print_table(_query_table(query, opts["k"]))
    for note in dict.fromkeys(c.fusion_note for q in comparison.queries for c in q.columns):
        if note:
            err_console.print(f"fusion: {note}")
    if comparison.metrics:
        print_table(_metrics_table(comparison))


def _queries(opts: dict[str, Any]) -> dict[str, str]:
    from ..beir import read_queries
    from ..workbench.judgments import new_query_id

    if bool(opts["text"]) == bool(opts["queries"]):
        raise click.UsageError("give --query TEXT or --queries FILE (one of them)")
    if opts["text"]:
        # The id the page gives a typed query: its judgments (--qrels) are found.
        return {new_query_id(opts["text"].strip()): opts["text"]}
    return read_queries(opts["queries"])


def _run(opts: dict[str, Any], configurations: Any, queries: dict[str, str]) -> Comparison:
    from ..beir import read_qrels
    from ..workbench.compare import compare as run_comparison
    from ..workbench.runner import ClusterSearcher, cached_encoders

    qrels = read_qrels(opts["qrels"]) if opts["qrels"] else None
    if qrels is not None and not any(qid in qrels for qid in queries):
        warn(f"no query has judgments in {opts['qrels']}")
    depth = defaults.EVALUATION_DEPTH if qrels else opts["k"]  # Recall@100 needs 100
    searcher = ClusterSearcher(
        connect(connection_config(opts)),
        opts["index"],
        encoder_for=cached_encoders(lambda model: _load(model, opts), opts["model"]),
        shown=opts["k"],
        depth=depth,
        fusion=opts["fusion"],
    )
    with progress_display(opts["as_json"] or len(queries) == 1) as progress:
        task = progress.add_task("queries", total=len(queries), unit="queries")
        return run_comparison(
            searcher,
            configurations,
            queries,
            qrels,
            progress=lambda n: progress.update(task, completed=n),
        )


def _load(model: str, opts: dict[str, Any]) -> Any:
    from ..encoding.encoder import SpladeEncoder

    return SpladeEncoder.from_pretrained(
        model, device=opts["device"], trust_remote_code=opts["trust_remote_code"]
    )


def _query_table(query: QueryComparison, k: int) -> Table:
    """One row per rank: each configuration's hit (id, score, change against the first)."""
    from ..workbench.compare import change_text

    table = Table(title=f"{query.query_id}: {query.text!r}", title_justify="left")
    table.add_column("#", justify="right")
    changes = query.changes()
    for column in query.columns:
        scored = query.measures.get(column.label, {}).get("ndcg@10")
        table.add_column(column.label + ("" if scored is None else f"\nnDCG@10 {scored:.3f}"))
    for rank in range(k):
        cells = [str(rank + 1)]
        for column in query.columns:
            if column.error:
                cells.append(column.error if rank == 0 else "")
                continue
            if rank >= len(column.hits):
                cells.append("")
                continue
            hit = column.hits[rank]
            moved = changes.get(column.label)
            cell = f"{hit.id} {hit.score:.4f}"
            cells.append(cell + (f" ({change_text(moved[rank])})" if moved else ""))
        if any(cells[1:]):
            table.add_row(*cells)
    return table


def _metrics_table(comparison: Comparison) -> Table:
    """Per configuration: the means over the judged queries and, per measure, its queries
    won / tied / lost against the first configuration."""
    table = Table(
        title=f"{comparison.judged} judged queries; W / T / L: queries won, tied, lost "
        f"against {comparison.baseline!r}",
        title_justify="left",
    )
    table.add_column("configuration")
    names = list(next(iter(comparison.metrics.values())))
    for name in names:
        table.add_column(name, justify="right")
    for name in names:
        table.add_column(f"W / T / L\n{name}", justify="right")
    for label, values in comparison.metrics.items():
        records = comparison.records.get(label, {})
        table.add_row(
            label,
            *(f"{values[n]:.4f}" for n in names),
            *(_record_text(records.get(n)) for n in names),
        )
    return table


def _record_text(record: Any) -> str:
    if record is None:
        return "baseline"
    return f"{record.wins} / {record.ties} / {record.losses}"


def _serve_ui(opts: dict[str, Any], configurations: Any) -> None:
    """serve's app with the workbench's settings on 127.0.0.1 (loopback: no API key needed),
    until Ctrl-C; prints the page's URL."""
    from urllib.parse import urlencode

    import uvicorn

    from ..serve import ServeConfig, create_app
    from ..serve.app import SERVER_OPTIONS
    from ..workbench.judgments import Judgments
    from ..workbench.ui import WorkbenchSettings

    if opts["model"] is None:
        raise click.UsageError("--ui needs --model (or SPLADE_ES_MODEL): serve encodes queries")
    config = ServeConfig(
        connection=connection_config(opts),
        model=opts["model"],
        device=opts["device"],
        trust_remote_code=opts["trust_remote_code"],
        listen_host="127.0.0.1",
    )
    app = create_app(config)
    app.state.workbench = WorkbenchSettings(
        configurations=configurations,
        index=opts["index"],
        judgments=Judgments(opts["qrels"], opts["queries"]) if opts["qrels"] else None,
        shown=opts["k"],
        own_credentials=True,  # this user's process, on loopback, with this user's credentials
    )
    port = opts["port"] or _free_port()
    query = {"index": opts["index"], **({"q": opts["text"]} if opts["text"] else {})}
    click.echo(f"http://127.0.0.1:{port}/_splade/ui?{urlencode(query)}")
    if not opts["qrels"]:
        err_console.print("judging is off: give --qrels FILE to save judgments")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", **SERVER_OPTIONS)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
