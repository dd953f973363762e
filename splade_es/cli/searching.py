"""``splade-es search``, ``splade-es explain`` and ``splade-es evaluate``.

``search`` and ``evaluate`` share one way to say what runs: ``--mode splade|bm25|hybrid`` and
``--hybrid-weight W`` (the weight of BM25). ``--hybrid W`` (the old ``search`` spelling) still
works: it means ``--mode hybrid --hybrid-weight W``.

``--fusion engine|client|auto`` (linear / rrf hybrids): the engine fuses (Elasticsearch
retrievers, OpenSearch search pipelines), the client does (one ``_msearch``, the engine's
formulas: ``splade_es.fusion``), or ``auto`` (the default): the engine where the cluster can
(version, plugin, license), the client otherwise; a note on stderr (and ``fusion`` in
``--json``) says which.

``evaluate --corpus corpus.jsonl --long-documents truncate,maxpool,passages`` needs no cluster:
it compares how long documents are encoded, in memory (``evaluate.compare_long_documents``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from .. import defaults
from ..connect import Cluster, connect
from ..documents import parse_fields
from ..exceptions import EmptyQueryError
from .app import (
    FIELDS,
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

if TYPE_CHECKING:
    from ..evaluate import EvaluationReport, ModeResult
    from ..search import FusionChoice, Hit, SearchResult, TokenContribution

MODES = ("splade", "bm25", "hybrid")


def _apply(func: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        func = option(func)
    return func


def sparse_options(func: Callable[..., Any], *, index_required: bool = True) -> Callable[..., Any]:
    """What every SPLADE query needs: index, model, field, pruning, device, output."""
    return _apply(
        func,
        [
            click.option(
                "--index",
                required=index_required,
                help=None if index_required else "The index to evaluate (or --corpus).",
            ),
            model_option(
                required=False,
                describe="The checkpoint the index was built with (not needed for --mode bm25).",
            ),
            click.option("--sparse-field", default=defaults.VECTOR_FIELD, show_default=True),
            click.option(
                "--query-top-k", type=click.IntRange(1), help="Keep the K heaviest tokens."
            ),
            click.option(
                "--query-min-weight", type=click.FloatRange(0), help="Drop lighter tokens."
            ),
            click.option(
                "--query-mass",
                type=click.FloatRange(0, 1, min_open=True),
                help="Keep the heaviest tokens holding this fraction of the query weight.",
            ),
            device_option(),
            click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
        ],
    )


def mode_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """SPLADE, BM25 or both: shared by search and evaluate."""
    return _apply(
        func,
        [
            click.option(
                "--mode",
                type=click.Choice(MODES),
                help="What ranks: SPLADE, BM25 on --text-fields, or both.  [default: splade]",
            ),
            click.option(
                "--hybrid-weight",
                type=click.FloatRange(0, 1),
                default=0.5,
                show_default=True,
                help="Weight of BM25 in --mode hybrid (sum: w * BM25 + (1 - w) * SPLADE).",
            ),
            # The old spelling of search; hidden, kept so that scripts do not break.
            click.option("--hybrid", "hybrid_alias", type=click.FloatRange(0, 1), hidden=True),
            click.option(
                "--text-fields",
                type=FIELDS,
                default=",".join(defaults.TEXT_FIELDS),
                show_default=True,
                help="BM25 fields of hybrid / bm25 queries.",
            ),
            click.option(
                "--hybrid-method",
                type=click.Choice(["sum", "linear", "rrf"]),
                default="sum",
                show_default=True,
                help="How BM25 and SPLADE are combined (see docs).",
            ),
            click.option(
                "--hybrid-normalizer",
                type=click.Choice(["min_max", "l2"]),
                default="min_max",
                show_default=True,
                help="How --hybrid-method linear normalises each side's scores.",
            ),
            click.option(
                "--create-pipeline/--no-create-pipeline",
                default=True,
                show_default=True,
                help="OpenSearch linear/rrf hybrids: create the search pipeline if needed.",
            ),
            click.option(
                "--fusion",
                type=click.Choice(["engine", "client", "auto"]),
                default="auto",
                show_default=True,
                help="Who fuses a linear/rrf hybrid: the engine, the client (one _msearch, "
                "the engine's formulas; any license, no plugin), or the engine where the "
                "cluster can and the client otherwise.",
            ),
        ],
    )


def _mode(opts: dict[str, Any]) -> tuple[str, float]:
    """(mode, BM25 weight) from --mode / --hybrid-weight and the --hybrid alias."""
    mode, weight, alias = opts["mode"], opts["hybrid_weight"], opts["hybrid_alias"]
    if alias is not None:
        if mode not in (None, "hybrid"):
            raise click.UsageError(f"--hybrid {alias:g} means --mode hybrid, not --mode {mode}")
        mode, weight = "hybrid", alias
    mode = mode or "splade"
    if mode != "bm25" and not opts["model"]:
        raise click.UsageError(
            f"--mode {mode} needs --model (or SPLADE_ES_MODEL): the checkpoint the index was "
            "built with"
        )
    return mode, weight


def _builder(cluster: Cluster, opts: dict[str, Any]) -> Any:
    from ..query import QueryBuilder, QueryPruning

    pruning = QueryPruning(
        top_k=opts["query_top_k"], min_weight=opts["query_min_weight"], mass=opts["query_mass"]
    )
    return QueryBuilder.for_index(
        cluster, opts["index"], field=opts["sparse_field"], pruning=pruning
    )


def _hybrid(
    cluster: Cluster, builder: Any, opts: dict[str, Any], weight: float
) -> tuple[Any, FusionChoice]:
    """The hybrid of --mode hybrid, and who fuses it (--fusion; the engine's pipeline made
    where the engine fuses and --create-pipeline)."""
    from ..engines import Hybrid
    from ..search import prepare_fusion

    hybrid = Hybrid(
        bm25_weight=weight,
        method=opts["hybrid_method"],
        text_fields=parse_fields(opts["text_fields"]),
        normalizer=opts["hybrid_normalizer"],
    )
    choice = prepare_fusion(
        cluster,
        hybrid,
        opts["fusion"],
        dialect=builder.dialect,
        create_pipeline=opts["create_pipeline"],
    )
    return hybrid, choice


def _encoder(opts: dict[str, Any]) -> Any:
    from ..encoding.encoder import SpladeEncoder

    return SpladeEncoder.from_pretrained(
        opts["model"], device=opts["device"], trust_remote_code=opts["trust_remote_code"]
    )


def _pruned_to_nothing(exc: EmptyQueryError, opts: dict[str, Any]) -> EmptyQueryError:
    """The library's message, plus the options that did it."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("query_top_k", "query_min_weight", "query_mass")
        if opts[name] is not None
    ]
    if not given:
        return exc
    return EmptyQueryError(f"{exc}; relax {' / '.join(given)}")


@main.command()
@connection_options
@sparse_options
@mode_options
@click.option(
    "--k",
    default=defaults.TOP_K,
    show_default=True,
    type=click.IntRange(1),
    help="Hits to show (evaluate retrieves 100 per query, for Recall@100).",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    help="A query clause as JSON, applied as a filter (repeatable).",
)
@click.argument("text")
@fail_cleanly
def search(**opts: Any) -> None:
    """Search an index with a SPLADE query (exact dot-product scoring), BM25, or both.

    Exit status 2 when the query has no tokens to search for (an empty text, or pruning
    removed them all): such a query matches nothing.
    """
    from ..search import search, token_namer

    mode, weight = _mode(opts)
    filters = [_parse_filter(f) for f in opts["filters"]]
    cluster = connect(connection_config(opts))
    if mode == "bm25":
        _print_bm25_hits(cluster, opts, filters)
        return
    builder = _builder(cluster, opts)
    hybrid, fusion = _hybrid(cluster, builder, opts, weight) if mode == "hybrid" else (None, None)
    encoder = _encoder(opts)
    try:
        result = search(
            cluster,
            opts["index"],
            opts["text"],
            encoder=encoder,
            builder=builder,
            k=opts["k"],
            filters=filters,
            hybrid=hybrid,
            fusion=fusion or "engine",
        )
    except EmptyQueryError as exc:
        raise _pruned_to_nothing(exc, opts) from exc
    rows = _matched_rows(result, opts["sparse_field"], token_namer(builder, encoder.vocab))
    if opts["as_json"]:
        click.echo(json.dumps(_hits_json(result, rows), ensure_ascii=False))
        return
    _print_hits(opts, rows)
    _print_query_note(result)


def _matched_rows(
    result: SearchResult, sparse_field: str, token_of: Callable[[str], str]
) -> list[tuple[Hit, Sequence[TokenContribution]]]:
    """Each hit with the query tokens it matched (none where its source has no vector); on a
    passages index, those of its best passage, whose dot product is the hit's score."""
    from ..search import best_passage, contributions

    rows: list[tuple[Hit, Sequence[TokenContribution]]] = []
    for hit in result.hits:
        stored = hit.source.get(sparse_field)
        matched: Sequence[TokenContribution] = ()
        if isinstance(stored, dict):
            matched = contributions(result.features, stored, token_of=token_of)
        elif isinstance(stored, list):  # passages: the best one's, as explain shows them
            _, matched = best_passage(result.features, stored, token_of=token_of)
        rows.append((hit, matched))
    return rows


def _hits_json(
    result: SearchResult, rows: list[tuple[Hit, Sequence[TokenContribution]]]
) -> dict[str, Any]:
    """``--json``'s output: the hits with their top 5 token contributions, and the query."""
    return {
        "hits": [
            {
                "id": hit.id,
                "score": hit.score,
                "title": hit.source.get("title"),
                "top_tokens": [
                    {"token": c.token, "contribution": round(c.contribution, 6)}
                    for c in matched[:5]
                ],
                **(
                    {"passages": [asdict(passage) for passage in hit.passages]}
                    if hit.passages
                    else {}
                ),
            }
            for hit, matched in rows
        ],
        "query_tokens": result.prune.kept,
        "pruned_tokens": result.prune.dropped,
        "encode_ms": round(result.encode_ms, 3),
        "search_ms": round(result.search_ms, 3),
        **({"fusion": result.fusion, "fusion_note": result.fusion_note} if result.fusion else {}),
    }


def _print_query_note(result: SearchResult) -> None:
    """One line on stderr: query tokens kept and pruned, and where the time went."""
    note = f"{result.prune.kept} query tokens"
    if result.prune.pruned:
        note += (
            f" ({result.prune.dropped} pruned, {100 * result.prune.kept_weight:.1f}% weight kept)"
        )
    if result.prune.empty:
        warn("no SPLADE query tokens left after pruning: BM25 alone ranked these hits")
    err_console.print(f"{note}; encode {result.encode_ms:.1f} ms, search {result.search_ms:.1f} ms")
    if result.fusion:
        err_console.print(f"fusion: {result.fusion_note}")


def _print_hits(opts: dict[str, Any], rows: list[tuple[Any, Any]]) -> None:
    table = Table(title=f"{opts['index']}: {opts['text']!r}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    table.add_column("title / text")
    passages = any(hit.passages for hit, _ in rows)
    if passages:  # a passages index: where the best passage lies in the text
        table.add_column("best passage (chars)")
    table.add_column("top matching tokens")
    for rank, (hit, matched) in enumerate(rows, 1):
        snippet = str(hit.source.get("title") or hit.source.get("text") or "")[:60]
        tokens = ", ".join(f"{c.token} {c.contribution:.2f}" for c in matched[:4])
        cells = [str(rank), hit.id, f"{hit.score:.4f}", snippet]
        if passages:
            best = hit.passages[0] if hit.passages else None
            cells.append(f"{best.start}-{best.end}" if best else "")
        table.add_row(*cells, tokens)
    print_table(table)


def _print_bm25_hits(cluster: Cluster, opts: dict[str, Any], filters: list[dict]) -> None:
    from ..engines import dialect_of
    from ..search import hits_of, send

    dialect = dialect_of(cluster)
    lexical = dialect.lexical_query(opts["text"], parse_fields(opts["text_fields"]))
    request = dialect.search_request(lexical, k=opts["k"], filters=filters)
    response, search_ms = send(cluster.client, opts["index"], request)
    hits = hits_of(response)
    if opts["as_json"]:
        out = {
            "hits": [
                {"id": h.id, "score": h.score, "title": h.source.get("title"), "top_tokens": []}
                for h in hits
            ],
            "search_ms": round(search_ms, 3),
        }
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    _print_hits(opts, [(hit, ()) for hit in hits])
    err_console.print(f"BM25 on {opts['text_fields']}; search {search_ms:.1f} ms")


def _parse_filter(text: str) -> dict:
    try:
        clause = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"must be JSON ({exc.msg}), got {text!r}", param_hint="'--filter'"
        ) from None
    if not isinstance(clause, dict):
        raise click.BadParameter(
            f"must be a JSON object (a query clause), got {text!r}", param_hint="'--filter'"
        )
    return clause


@main.command()
@connection_options
@sparse_options
@click.option("--id", "doc_id", required=True, help="The document to explain.")
@click.argument("text")
@fail_cleanly
def explain(**opts: Any) -> None:
    """Why document --id scores what it does for a SPLADE query: each shared token's query
    weight x stored weight; the contributions add up to the engine's _score.

    Exit status 2 when the document does not exist, has no stored vector, or the query has
    no tokens to search for.
    """
    from ..search import explain

    if not opts["model"]:
        raise click.UsageError("--model is required (or SPLADE_ES_MODEL)")
    if not opts["text"].strip():
        raise EmptyQueryError("nothing to search for: the query text is empty")
    cluster = connect(connection_config(opts))
    builder = _builder(cluster, opts)
    encoder = _encoder(opts)
    vector = encoder.encode_queries([opts["text"]])
    try:
        why = explain(cluster, opts["index"], opts["doc_id"], vector, builder=builder)
    except EmptyQueryError as exc:
        raise _pruned_to_nothing(exc, opts) from exc
    if opts["as_json"]:
        out = {
            "id": why.doc_id,
            "score": why.score,
            "engine_score": why.engine_score,
            "contributions": [
                {
                    "token": c.token,
                    "query_weight": c.query_weight,
                    "doc_weight": c.doc_weight,
                    "contribution": c.contribution,
                }
                for c in why.contributions
            ],
        }
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    table = Table(
        title=f"{opts['doc_id']} in {opts['index']}: {opts['text']!r}",
        title_justify="left",
        show_footer=True,
    )
    table.add_column("token", footer="sum")
    table.add_column("query weight", justify="right")
    table.add_column("stored weight", justify="right")
    table.add_column("contribution", justify="right", footer=f"{why.score:.4f}")
    for c in why.contributions:
        table.add_row(
            c.token, f"{c.query_weight:.4f}", f"{c.doc_weight:.4f}", f"{c.contribution:.4f}"
        )
    print_table(table)
    if why.engine_score is None:
        err_console.print("the document does not match the query (no shared token)")
    else:
        err_console.print(
            f"engine _score {why.engine_score:.4f}; {len(why.contributions)} shared tokens"
        )


def evaluation_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``sparse_options`` with ``--index`` optional: ``--corpus`` evaluates in memory."""
    return sparse_options(func, index_required=False)


@main.command()
@connection_options
@evaluation_options
@mode_options
@click.option("--queries", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--qrels", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--corpus",
    type=click.Path(exists=True, dir_okay=False),
    help="A corpus.jsonl (BEIR) to encode and score exactly in memory instead of --index: "
    "no cluster; compares the --long-documents modes.",
)
@long_document_options(several=True)
@click.option(
    "--k",
    default=defaults.EVALUATION_DEPTH,
    show_default=True,
    type=click.IntRange(1),
    help="Results retrieved per query: Recall@100 needs 100 (nDCG@10 and MRR@10 use 10).",
)
@fail_cleanly
def evaluate(**opts: Any) -> None:
    """Run judged queries through the cluster: nDCG@10, MRR@10, Recall@100 and latency.

    A query with no tokens to search for (empty, or pruned to nothing) finds nothing: it
    counts as a miss and is reported.

    With --corpus, no cluster: the corpus is encoded in memory once per --long-documents mode
    (e.g. truncate,maxpool,passages) and every judged query scored exactly against it; the
    measures, the index size and the query cost of each mode are printed side by side.
    """
    if opts["corpus"]:
        _compare_in_memory(opts)
        return
    _require_index(opts)
    _evaluate_index(opts)


def _require_index(opts: dict[str, Any]) -> None:
    """Without --corpus: an index, and no long-documents choice (the index was built with
    one already; its mapping says which)."""
    if not opts["index"]:
        raise click.UsageError("--index is required (or --corpus, to evaluate in memory)")
    modes = opts["long_documents"]
    if modes != [defaults.LONG_DOCUMENTS] or opts["window"] or opts["overlap"] is not None:
        raise click.UsageError(
            "--long-documents / --window / --overlap compare encodings of a corpus: give "
            "--corpus (an index was encoded one way already)"
        )


def _evaluate_index(opts: dict[str, Any]) -> None:
    """The judged queries through ``--index`` on the cluster."""
    from ..beir import read_qrels, read_queries
    from ..evaluate import evaluate as run_evaluation

    mode, weight = _mode(opts)
    if opts["k"] < 100:
        warn(f"--k {opts['k']}: Recall@100 is computed on {opts['k']} results per query")
    queries, qrels = read_queries(opts["queries"]), read_qrels(opts["qrels"])
    cluster = connect(connection_config(opts))
    encoder = builder = hybrid = fusion = None
    if mode != "bm25":
        builder = _builder(cluster, opts)
        if mode == "hybrid":
            hybrid, fusion = _hybrid(cluster, builder, opts, weight)
            if fusion.fusion and not opts["as_json"]:
                err_console.print(f"fusion: {fusion.note}")
        encoder = _encoder(opts)
    judged = sum(1 for qid in qrels if qid in queries)
    if not judged:
        warn(f"no query of {opts['queries']} has judgments in {opts['qrels']}")
    with progress_display(opts["as_json"]) as progress:
        task = progress.add_task(f"{mode} queries", total=judged, unit="queries")
        report = run_evaluation(
            cluster,
            opts["index"],
            queries,
            qrels,
            encoder=encoder,
            mode=mode,  # type: ignore[arg-type]
            k=opts["k"],
            hybrid=hybrid,
            builder=builder,
            field=opts["sparse_field"],
            text_fields=parse_fields(opts["text_fields"]),
            progress=lambda n: progress.update(task, completed=n),
            fusion=fusion or "engine",
        )
    if opts["as_json"]:
        click.echo(json.dumps(report.to_json()))
    else:
        _print_report(report, f"{opts['index']} ({mode}, {report.queries} queries)")
    if report.empty_queries:
        warn(
            f"{report.empty_queries} of {report.queries} queries had no tokens to search for "
            "(empty, or pruned to nothing) and count as misses"
        )


def _print_report(report: EvaluationReport, title: str) -> None:
    table = Table(title=title, show_header=False)
    for name, value in report.metrics.items():
        table.add_row(name, f"{value:.4f}")
    for stage, latency in report.latency_ms.items():
        table.add_row(f"{stage} latency p50 / p95", f"{latency.p50:.1f} / {latency.p95:.1f} ms")
    if report.pruned_queries:
        table.add_row("queries pruned", str(report.pruned_queries))
    print_table(table)


# ------------------------------------------------------------ --corpus: modes in memory
def _compare_in_memory(opts: dict[str, Any]) -> None:
    """``--corpus``: each --long-documents mode encoded in memory, scored, side by side."""
    from ..evaluate import compare_long_documents

    _check_in_memory(opts)
    modes = opts["long_documents"]
    encoder = _encoder(opts)
    policy = encoder.window_policy(window_policy_of(opts, "maxpool"))  # checked, filled in
    queries, qrels, corpus, judged = _judged_corpus(opts)
    with progress_display(opts["as_json"]) as progress:
        tasks = {
            mode: progress.add_task(f"{mode} documents", total=len(corpus), unit="docs")
            for mode in modes
        }
        results = compare_long_documents(
            encoder,
            corpus,
            queries,
            qrels,
            modes,
            window_policy_of(opts, modes[0]),
            k=opts["k"],
            progress=lambda mode, n: progress.advance(tasks[mode], n),
        )
    if opts["as_json"]:
        click.echo(json.dumps(_comparison_json(results, policy)))
        return
    title = (
        f"{opts['corpus']}: {len(corpus):,} documents, {judged} judged queries, "
        f"{encoder.name}, windows of {policy.window} tokens (overlap {policy.overlap}, at "
        f"most {policy.max_windows}), exact scores in memory"
    )
    print_table(_comparison_table(results, title))


def _judged_corpus(
    opts: dict[str, Any],
) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, str], int]:
    """(queries, qrels, corpus, judged queries) of --queries, --qrels, --corpus."""
    from ..beir import read_qrels, read_queries
    from ..evaluate import corpus_texts

    queries, qrels = read_queries(opts["queries"]), read_qrels(opts["qrels"])
    corpus, without_text = corpus_texts(opts["corpus"], parse_fields(opts["text_fields"]))
    if without_text:
        warn(
            f"{without_text} documents of {opts['corpus']} have no text in --text-fields: left out"
        )
    judged = sum(1 for qid in qrels if qid in queries)
    if not judged:
        warn(f"no query of {opts['queries']} has judgments in {opts['qrels']}")
    return queries, qrels, corpus, judged


def _check_in_memory(opts: dict[str, Any]) -> None:
    """What --corpus cannot do: BM25 (no text index), query pruning (queries score whole)."""
    if not opts["model"]:
        raise click.UsageError(
            "--corpus needs --model (or SPLADE_ES_MODEL): the checkpoint to compare"
        )
    if opts["mode"] not in (None, "splade") or opts["hybrid_alias"] is not None:
        raise click.UsageError(
            "--corpus evaluates SPLADE in memory: --mode bm25 / hybrid need --index"
        )
    pruning = [o for o in ("query_top_k", "query_min_weight", "query_mass") if opts[o] is not None]
    if pruning:
        raise click.UsageError(
            f"--corpus scores whole queries: --{pruning[0].replace('_', '-')} applies to --index"
        )
    if opts["index"]:
        warn("--corpus given: --index is not used (the corpus is evaluated in memory)")


def _comparison_json(results: Sequence[ModeResult], policy: Any) -> dict[str, Any]:
    return {
        "window": policy.window,
        "overlap": policy.overlap,
        "max_windows": policy.max_windows,
        "modes": [result.to_json() for result in results],
    }


def _comparison_table(results: Sequence[ModeResult], title: str) -> Table:
    """One row per mode: the measures, what the index holds, what a query costs."""
    table = Table(title=title, title_justify="left")
    table.add_column("long documents")
    for name in results[0].metrics if results else ():
        table.add_column(name, justify="right")
    for column in (
        "windows/doc mean (p99)",
        "truncated docs",
        "vectors",
        "non-zeros/doc",
        "postings",
        "vectors as JSON",
        "postings read/query",
        "score p50 / p95 ms",
        "encode s",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r.mode,
            *(f"{value:.4f}" for value in r.metrics.values()),
            f"{r.windows.mean:.2f} ({r.windows.percentile(99)})",
            f"{r.windows.hit_max_windows:,}",
            f"{r.size.vectors:,}",
            f"{r.size.per_document:.0f}",
            f"{r.size.postings:,}",
            f"{r.size.json_bytes / 2**20:.1f} MiB",
            f"{r.postings_per_query:,.0f}",
            f"{r.latency_ms.p50:.2f} / {r.latency_ms.p95:.2f}",
            f"{r.encode_s:.1f}",
        )
    return table
