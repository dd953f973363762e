"""The ASGI app of ``splade-es serve`` (Starlette): wiring only. ``create_app`` composes

    the service       the model, batchers, upstream, facts (``lifecycle``, ``service``)
    the middleware    requests refused before any route (``middleware``)
    the API routes    /_splade/* and /embed_sparse (``routes``)
    the proxy route   everything else, to the cluster (``proxy``)
    the lifespan      the service started and stopped with the app (``lifecycle``)

The endpoints:

    /_splade/health    200 when the model is loaded and the cluster answers, else 503
    /_splade/metrics   Prometheus text format
    /_splade/query     text -> the search body and URL params for an index or engine
    /_splade/encode    texts -> token/weight dicts and feature keys
    /_splade/embed/document|query   the encoder the engines call (ml-commons remote models,
                       the Elasticsearch inference API): one {feature: weight} per input
    /embed_sparse      text-embeddings-inference's sparse-embedding API
    everything else    forwarded to the cluster unchanged, except ``_search``/``_msearch``
                       bodies with a ``splade`` clause, which is replaced (``rewrite``)

The endpoints that spend the model (/_splade/query, encode, embed/*, /embed_sparse) take
``Authorization: Bearer <key>`` when serve has API keys (``splade_es.api_keys``).

Errors look like the cluster's own (``{"error": {"type", "reason"}, "status"}``), so every
client raises its usual exception; ``HTTP_ERRORS`` (``errors``) says which status each error
of ``splade_es.exceptions`` gets.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette

from ..encoding.protocol import Encoder
from .errors import HTTP_ERRORS, INTERNAL_REASON, error_body, http_error
from .exchange import RawResponse, decompress, read_body, within
from .lifecycle import prepared_service, service_lifespan
from .middleware import METHODS, ClientConcurrency, RequestLine, middleware_stack
from .proxy import Proxy
from .routes import ApiRoutes
from .service import ServeConfig

# How uvicorn runs the app (``splade-es serve`` and the tests). h11, not httptools: httptools
# drops the body of a request that offers an upgrade (``Connection: Upgrade, HTTP2-Settings``,
# ``Upgrade: h2c``, what Java's HttpClient sends by default; uvicorn issue #2722), so a search
# reached the cluster without its query. h11 reads the body and ignores the offer
# (benchmarks/serve.py measures both parsers' passthrough latency).
SERVER_OPTIONS: dict[str, Any] = {
    "http": "h11",
    "access_log": False,  # ours leaves out query strings and headers
    "server_header": False,
    "date_header": False,
}


class _NoUpgradeWarning(logging.Filter):
    """uvicorn warns "Unsupported upgrade request." for each h2c offer: the offer is declined
    by answering in HTTP/1.1 as RFC 9113 allows, nothing to warn about."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Unsupported upgrade request."


logging.getLogger("uvicorn.error").addFilter(_NoUpgradeWarning())


def create_app(config: ServeConfig, *, encoder: Encoder | None = None) -> Starlette:
    """The ASGI app; ``encoder`` skips loading ``config.model`` (tests, embedding).

    Without one, the checkpoint's files are checked here (no weights are read): a wrong
    model is a ``ModelLoadError`` now, not a failed server start (the model loads when
    the app starts).
    """
    service = prepared_service(config, encoder)
    app = Starlette(
        # The proxy's catch-all route comes last: the API's own paths win.
        routes=[*ApiRoutes(service).routes(), Proxy(service).route()],
        lifespan=service_lifespan(service),
        middleware=middleware_stack(config),
    )
    app.state.service = service
    return app


__all__ = [
    "HTTP_ERRORS",
    "INTERNAL_REASON",
    "METHODS",
    "SERVER_OPTIONS",
    "ClientConcurrency",
    "RawResponse",
    "RequestLine",
    "create_app",
    "decompress",
    "error_body",
    "http_error",
    "read_body",
    "within",
]
