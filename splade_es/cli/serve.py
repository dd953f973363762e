"""``splade-es serve``: the query-translation service and search proxy (``splade_es.serve``)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from .. import defaults
from ..documents import parse_fields
from ..exceptions import ConfigurationError
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
    window_policy_of,
)

if TYPE_CHECKING:
    from ..serve import ServeConfig
    from ..serve.enrich import EnrichConfig


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:9280`` / ``[::1]:9280`` / ``:9280`` -> (host, port), once it is checked
    that this machine can listen there: uvicorn would log a failure to bind and exit with
    status 1, which means "done, some records not indexed" here."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError.bad_value("listen", value, "must be HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        raise ConfigurationError.bad_value(
            "listen", value, f"must be free to listen on ({exc.strerror or exc})"
        ) from exc
    return host, int(port)


def default_threads(enriching: bool) -> int:
    """Every core when documents are encoded (measured: 0.69x of ``ingest``'s documents/s
    with one of two cores, 0.93x with both, benchmarks/enrich.py); otherwise one core is left
    to the event loop, which keeps a lone query's latency low under load."""
    cores = os.cpu_count() or 2
    return cores if enriching else max(1, cores - 1)


@main.command()
@connection_options
@model_option()
@click.option(
    "--listen",
    default=defaults.LISTEN,
    show_default=True,
    envvar="SPLADE_ES_LISTEN",
    help="HOST:PORT to serve on. [env: SPLADE_ES_LISTEN]",
)
@click.option(
    "--max-batch",
    default=defaults.BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1),
    help="Texts per encoded batch; 1 turns micro-batching off.",
)
@click.option(
    "--max-wait-ms",
    default=defaults.MAX_WAIT_MS,
    show_default=True,
    type=click.FloatRange(0),
    help="How long a batch may wait for more texts under load.",
)
@click.option(
    "--cache-size",
    default=defaults.QUERY_CACHE_SIZE,
    show_default=True,
    type=click.IntRange(0),
    help="Query vectors kept in the LRU cache (0: none).",
)
@click.option(
    "--max-body-mb",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Larger request bodies are refused with 413.",
)
@click.option(
    "--max-texts",
    default=1024,
    show_default=True,
    type=click.IntRange(1),
    help="Texts one request may have encoded: splade clauses of a search or msearch body, "
    "texts of /_splade/encode, inputs of /embed_sparse; more are refused with 400.",
)
@click.option(
    "--max-text-chars",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(1),
    help="Characters of those texts together, per request; more are refused with 400.",
)
@click.option(
    "--max-json-depth",
    default=200,
    show_default=True,
    type=click.IntRange(1),
    help="JSON nesting the proxy parses (bodies with a splade clause, /_splade/*); deeper "
    "bodies are refused with 400 parsing_exception.",
)
@click.option(
    "--max-request-seconds",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="The proxy's time for one request (reading it, encoding, the cluster's answer); "
    "past it, 504 timeout_exception. Writes under --enrich are not cut once sent.",
)
@click.option(
    "--max-client-requests",
    default=defaults.MAX_CLIENT_REQUESTS,
    show_default=True,
    type=click.IntRange(0),
    help="Requests of one client address in flight at once; one more is answered 429 "
    "es_rejected_execution_exception. Clients behind one NAT or load balancer share an "
    "address: raise it there. 0: no limit.",
)
@click.option(
    "--bulk-batch",
    default=0,
    type=click.IntRange(0),
    help="Documents and long query texts per model call; a query waits for at most one such "
    "call (more: document throughput; fewer: query latency under document load) "
    "[default: 2 on a CPU, 32 on a GPU].",
)
@device_option()
@long_document_options()
@click.option(
    "--threads",
    default=0,
    type=click.IntRange(0),
    help="torch threads for encoding one text [default: CPU cores - 1, at least 1, so the "
    "event loop keeps a core; with --enrich every core: document encoding is the bulk of the "
    "work].",
)
@click.option(
    "--batch-threads",
    default=0,
    type=click.IntRange(0),
    help="torch threads for encoding several texts at once (a micro-batch of queries, "
    "documents) [default: --threads when given, else every CPU core].",
)
@click.option(
    "--facts-ttl",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds an index's field type and clause limit are cached.",
)
@click.option(
    "--enrich",
    "enrich_patterns",
    multiple=True,
    metavar="PATTERN[:FIELDS[:SPARSE_FIELD]]",
    help="Add SPLADE vectors to documents written to indices or aliases matching PATTERN "
    "(docs*, news-*:headline,body:vec); repeatable. _bulk, _doc, _create and _update.",
)
@click.option(
    "--text-fields",
    type=FIELDS,
    default=",".join(defaults.TEXT_FIELDS),
    show_default=True,
    help="Text fields encoded for --enrich patterns that name none (as in ingest).",
)
@click.option(
    "--sparse-field",
    default=defaults.VECTOR_FIELD,
    show_default=True,
    help="The vector field for --enrich patterns that name none.",
)
@click.option(
    "--on-encode-error",
    default="reject",
    show_default=True,
    type=click.Choice(["reject", "passthrough"]),
    help="A document that cannot be encoded (no text, a text field that is not text): reject "
    "it with a per-item 400, or index it without a vector.",
)
@click.option(
    "--enrich-queue",
    default=defaults.ENRICH_QUEUE_DOCS,
    show_default=True,
    type=click.IntRange(1),
    help="Documents that may wait to be encoded (--enrich writes and /_splade/embed/document "
    "requests share the queue); past that, they are answered 429.",
)
@click.option(
    "--enrich-batch",
    default=defaults.ENRICH_BATCH_DOCS,
    show_default=True,
    type=click.IntRange(1),
    help="Documents of concurrent requests (--enrich writes, /_splade/embed/document) "
    "encoded in one model call.",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    envvar="SPLADE_ES_API_KEY_FILE",
    help="Only requests with Authorization: Bearer <key>, a key of this file (one per line; "
    "blank and # lines left out), may use the endpoints that encode (/_splade/embed/*, "
    "/_splade/encode, /_splade/query, /embed_sparse): 401 without a key, 403 with a wrong "
    "one. Health, metrics and the proxy are not affected. [env: SPLADE_ES_API_KEY_FILE]",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Listen on an address other than loopback without --api-key-file: anyone who "
    "reaches the port may use the model.",
)
@click.option(
    "--ui-index",
    envvar="SPLADE_ES_UI_INDEX",
    help="The relevance workbench page (/_splade/ui): the index it searches by default.",
)
@click.option(
    "--ui-config",
    "ui_configs",
    multiple=True,
    help="The page's configurations, one per option (compare's specs: bm25, splade, "
    "hybrid:rrf, ...). [default: bm25 and splade; env: SPLADE_ES_UI_CONFIGS]",
)
@click.option(
    "--ui-qrels",
    type=click.Path(dir_okay=False),
    envvar="SPLADE_ES_UI_QRELS",
    help="The qrels file (BEIR TSV) the page's judgments are saved to; without it judging is off.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@fail_cleanly
def serve(**opts: Any) -> None:
    """Serve SPLADE query translation in front of a cluster, and the model to the cluster.

    Apps point their Elasticsearch/OpenSearch client at --listen instead of the cluster and
    write {"splade": {"<field>": "text"}} wherever a query may stand; everything else is
    forwarded unchanged. With --enrich, documents written to matching indices get their SPLADE
    vector on the way in.

    The engines themselves can call it as their sparse encoder (OpenSearch ml-commons remote
    models, Elasticsearch inference endpoints; see splade-es register): POST
    /_splade/embed/document and /_splade/embed/query with {"inputs": [text, ...]} answer one
    {feature: weight} object per text, the vectors ingest writes and splade clauses search
    with. Also: POST /_splade/query, /_splade/encode, /embed_sparse (TEI), GET
    /_splade/health, /_splade/metrics.

    An address other than loopback in --listen needs --api-key-file (or
    --allow-unauthenticated).
    """
    uvicorn, create_app, server_options = _serve_modules()
    host, port = parse_listen(opts.pop("listen"))
    enrich = _enrich_config(opts) if opts["enrich_patterns"] else None
    level = opts.pop("log_level")
    ui = {name: opts.pop(name) for name in ("ui_index", "ui_configs", "ui_qrels")}
    config = _serve_config(opts, enrich, host)
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(config)  # checks the checkpoint: a wrong --model is the only line printed
    app.state.workbench = _workbench_settings(ui)
    keys = config.api_keys
    access = f"{len(keys)} API key(s) accepted" if keys else "no API key required"
    err_console.print(
        f"splade-es serve on http://{host}:{port} -> {config.connection.redacted_hosts} ({access})",
        highlight=False,
        markup=False,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=level,
        timeout_graceful_shutdown=30,
        lifespan="on",
        **server_options,  # h11, no access log of uvicorn's (ours leaves out credentials)
    )


def _workbench_settings(ui: dict[str, Any]) -> Any:
    """The workbench page's settings from --ui-index, --ui-config and --ui-qrels (each
    falling back to its SPLADE_ES_UI_* variable); a bad configuration spec stops serve at
    start, as one line."""
    import os

    from ..workbench.ui import WorkbenchSettings

    environ = dict(os.environ)
    if ui["ui_configs"]:
        environ["SPLADE_ES_UI_CONFIGS"] = " ".join(ui["ui_configs"])
    for name, variable in (("ui_index", "SPLADE_ES_UI_INDEX"), ("ui_qrels", "SPLADE_ES_UI_QRELS")):
        if ui[name]:
            environ[variable] = ui[name]
    return WorkbenchSettings.from_environment(environ)


def _long_documents_help(command: click.Command) -> None:
    """serve's --long-documents help: the shared option's, with what the modes mean here."""
    for param in command.params:
        if param.name == "long_documents" and isinstance(param, click.Option):
            param.help = (
                "Text past one window, for the documents of indices with one vector per "
                "document (--enrich writes, /_splade/embed/document): truncate (dropped, "
                "counted) or maxpool (every window encoded, the elementwise max). passages "
                "is refused: they follow the index's layout, and an index whose sparse field "
                "holds passages (create-index --passages) always gets them, cut by --window, "
                '--overlap and --max-windows (so does /_splade/embed/document with "passages": '
                "true)."
            )


_long_documents_help(serve)


def _serve_modules() -> tuple[ModuleType, Callable[[ServeConfig], Any], dict[str, Any]]:
    """uvicorn, ``create_app`` and the server options, or one line naming the extra to
    install when the serve dependencies are missing."""
    try:
        import uvicorn

        from ..serve import create_app
        from ..serve.app import SERVER_OPTIONS
        from ..serve.enrich import EnrichConfig  # noqa: F401  (its imports are the extra's too)
    except ImportError as exc:
        raise ConfigurationError(
            f"serve needs the serve extra: pip install 'splade-es[serve]' ({exc.name} missing)"
        ) from None
    return uvicorn, create_app, SERVER_OPTIONS


def _enrich_config(opts: dict[str, Any]) -> EnrichConfig:
    """The ``--enrich`` rules and their queue limits."""
    from ..serve.enrich import EnrichConfig, parse_rule

    text_fields = parse_fields(opts["text_fields"])
    return EnrichConfig(
        rules=tuple(
            parse_rule(spec, text_fields=text_fields, sparse_field=opts["sparse_field"])
            for spec in opts["enrich_patterns"]
        ),
        on_encode_error=opts["on_encode_error"],
        max_queued_documents=opts["enrich_queue"],
        max_batch_documents=opts["enrich_batch"],
    )


def _serve_config(opts: dict[str, Any], enrich: EnrichConfig | None, host: str) -> ServeConfig:
    """ServeConfig from the command's options (0 means "not set" for the optional limits);
    ``host``: where it listens (beyond loopback only with API keys, or when allowed)."""
    from ..api_keys import ApiKeys
    from ..serve import ServeConfig

    key_file = opts["api_key_file"]
    return ServeConfig(
        api_keys=ApiKeys.load(key_file) if key_file else None,
        listen_host=host,
        allow_unauthenticated=opts["allow_unauthenticated"],
        max_queued_documents=opts["enrich_queue"],
        max_batch_documents=opts["enrich_batch"],
        connection=connection_config(opts),
        model=opts["model"],
        trust_remote_code=opts["trust_remote_code"],
        device=opts["device"],
        long_documents=window_policy_of(opts),
        max_batch=opts["max_batch"],
        max_wait_ms=opts["max_wait_ms"],
        cache_size=opts["cache_size"],
        max_body_bytes=opts["max_body_mb"] * 1024 * 1024,
        facts_ttl=opts["facts_ttl"],
        max_texts=opts["max_texts"],
        max_text_chars=opts["max_text_chars"],
        max_json_depth=opts["max_json_depth"],
        max_request_seconds=opts["max_request_seconds"],
        max_client_requests=opts["max_client_requests"] or None,
        bulk_batch=opts["bulk_batch"] or None,
        threads=opts["threads"] or default_threads(enrich is not None),
        batch_threads=opts["batch_threads"] or opts["threads"] or (os.cpu_count() or 1),
        enrich=enrich,
    )
