"""The relevance workbench page in ``splade-es serve``:

    GET  /_splade/ui                 the page (``static/``: plain HTML, CSS, JS; nothing
                                     fetched from elsewhere); ``?index=NAME&q=TEXT&config=...``
    GET  /_splade/ui/assets/{name}   its script and style sheet
    POST /_splade/ui/settings        the index, configurations and judgments file in use
    POST /_splade/ui/search          {index, q, configs} -> the columns, the query's judgments
                                     and nDCG@10 per column
    POST /_splade/ui/judge           {q, id, relevance (1, 0 or null), runs} -> the query's
                                     judgments and nDCG@10 per column, recomputed

The JSON endpoints encode queries (model compute): they answer through ``ApiRoutes.answer``,
so with API keys (``serve --api-key-file``; required on a non-loopback listen) they need
``Authorization: Bearer <key>`` like ``/_splade/embed/*``. The searches carry the caller's
cluster credentials as the proxy forwards them, never serve's own (``compare --ui`` excepted:
``WorkbenchSettings.own_credentials``). They take only JSON bodies (a form
post from another site cannot reach them without a CORS preflight serve does not answer),
and refuse (403) a request another site's page sent (an ``Origin`` whose host and port are not
the ``Host`` header's, or ``Sec-Fetch-Site: cross-site``); with ``own_credentials`` also one
whose ``Host`` is not a loopback name (a DNS name rebound to 127.0.0.1: ``cross_site``).
Judgments go to the one qrels file of the settings (``Judgments``); no request names a file,
and the answers name the file only (not its folder).

Settings: ``app.state.workbench`` (``compare --ui`` sets it), else the environment:
``SPLADE_ES_UI_INDEX``, ``SPLADE_ES_UI_CONFIGS`` (specs separated by spaces, default
``bm25 splade``), ``SPLADE_ES_UI_QRELS`` and ``SPLADE_ES_UI_QUERIES`` (no qrels: judging off).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import defaults
from ..exceptions import InputError
from .compare import column_json, query_measures, rank_changes
from .configurations import Configuration, parse_configurations
from .judgments import Judgments
from .serve_search import ServeSearcher

if TYPE_CHECKING:
    from ..serve.routes import ApiRoutes

DEFAULT_CONFIGS = ("bm25", "splade")
ASSETS = {"workbench.js": "text/javascript", "workbench.css": "text/css"}
# Defence in depth on top of escaping: no inline script, nothing from another origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
NDCG = "ndcg@10"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class WorkbenchSettings:
    configurations: tuple[Configuration, ...]
    index: str | None = None
    judgments: Judgments | None = None  # None: judging is off
    shown: int = defaults.TOP_K
    # Search with serve's own cluster credentials (``compare --ui`` only: the user's process
    # on loopback); otherwise with the caller's, as the proxy forwards them.
    own_credentials: bool = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> WorkbenchSettings:
        specs = (environ.get("SPLADE_ES_UI_CONFIGS") or " ".join(DEFAULT_CONFIGS)).split()
        qrels = environ.get("SPLADE_ES_UI_QRELS")
        return cls(
            configurations=parse_configurations(specs),
            index=environ.get("SPLADE_ES_UI_INDEX") or None,
            judgments=Judgments(qrels, environ.get("SPLADE_ES_UI_QUERIES")) if qrels else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "configs": [c.spec for c in self.configurations],
            "qrels": self.judgments.path.name if self.judgments else None,
            "k": self.shown,
        }


def static_text(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


class Workbench:
    """The page's routes over serve's ``ApiRoutes`` (its API keys, deadline, errors)."""

    def __init__(self, api: ApiRoutes) -> None:
        from ..serve.hybrid import HybridRunner

        self.api = api
        self.hybrids = HybridRunner(api.service)  # who fuses the page's hybrids
        self._settings: WorkbenchSettings | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/_splade/ui", self.page, methods=["GET"]),
            Route("/_splade/ui/assets/{name}", self.asset, methods=["GET"]),
            Route("/_splade/ui/settings", self.settings_route, methods=["POST"]),
            Route("/_splade/ui/search", self.search, methods=["POST"]),
            Route("/_splade/ui/judge", self.judge, methods=["POST"]),
        ]

    def settings(self, request: Request) -> WorkbenchSettings:
        given = getattr(request.app.state, "workbench", None)
        if isinstance(given, WorkbenchSettings):
            return given
        if self._settings is None:
            self._settings = WorkbenchSettings.from_environment()
        return self._settings

    # ------------------------------------------------------------------ static
    async def page(self, request: Request) -> Response:
        return Response(static_text("workbench.html"), media_type="text/html", headers=PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:  # a fixed list: no path from the request reaches the disk
            return Response("not found", 404, media_type="text/plain")
        return Response(static_text(name), media_type=ASSETS[name], headers=PAGE_HEADERS)

    # ------------------------------------------------------------------ JSON
    async def settings_route(self, request: Request) -> Response:
        async def work(request: Request) -> Any:
            await self.body(request)
            return self.settings(request).to_json()

        return await self.answer("ui_settings", request, work)

    async def search(self, request: Request) -> Response:
        return await self.answer("ui_search", request, self.searched)

    async def judge(self, request: Request) -> Response:
        return await self.answer("ui_judge", request, self.judged)

    async def answer(
        self, route: str, request: Request, work: Callable[[Request], Awaitable[Any]]
    ) -> Response:
        """``ApiRoutes.answer``, after refusing (403) what another site's page sent."""
        given = getattr(request.app.state, "workbench", None)
        own = isinstance(given, WorkbenchSettings) and given.own_credentials
        reason = cross_site(request.headers, own_credentials=own)
        if reason is None:
            return await self.api.answer(route, request, work)
        from ..serve.errors import error_body
        from ..serve.exchange import recorded

        body = error_body(403, "security_exception", reason)
        refused = Response(body, 403, media_type="application/json")
        return recorded(self.api.service.metrics, route, time.perf_counter(), request, refused)

    async def body(self, request: Request) -> dict[str, Any]:
        """The JSON object of a request that says it is JSON (no cross-site form posts)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise InputError("send the request as Content-Type: application/json")
        from ..serve.exchange import json_object

        return await json_object(request, self.api.config)

    async def searched(self, request: Request) -> dict[str, Any]:
        spec = await self.body(request)
        settings = self.settings(request)
        text = text_of(spec)
        index = string_of(spec, "index", settings.index)
        configs = spec.get("configs") or [c.spec for c in settings.configurations]
        if not isinstance(configs, list) or not all(isinstance(c, str) for c in configs):
            raise InputError("[configs] must be a list of configuration specs")
        configurations = parse_configurations(configs)
        # Serve's key, when it has keys, is not the cluster's business (as /_splade/query).
        authorization = None if self.api.keys else request.headers.get("authorization")
        searcher = ServeSearcher(
            self.api.service,
            self.hybrids,
            shown=settings.shown,
            own_credentials=settings.own_credentials,
        )
        columns = await asyncio.gather(
            *(searcher.column(c, c.index_or(index), text, authorization) for c in configurations)
        )
        baseline = columns[0].ranking
        out = [
            column_json(c, rank_changes(baseline, c.ranking) if n else None)
            for n, c in enumerate(columns)
        ]
        judged = self.judged_of(settings, text)
        return {
            **judged,
            "index": index,
            "columns": out,
            "ndcg": ndcg_of({c["label"]: c["hits"] for c in out}, judged["judgments"]),
        }

    async def judged(self, request: Request) -> dict[str, Any]:
        spec = await self.body(request)
        settings = self.settings(request)
        if settings.judgments is None:
            raise InputError(
                "judging is off: give splade-es compare --ui --qrels FILE (or set "
                "SPLADE_ES_UI_QRELS for splade-es serve)"
            )
        relevance = spec.get("relevance")
        if relevance is not None and (type(relevance) is not int):  # bool is an int too
            raise InputError("[relevance] must be an integer or null")
        doc_id = string_of(spec, "id", None)
        query_id, judgments = settings.judgments.judge(text_of(spec), doc_id, relevance)
        runs = spec.get("runs") or {}
        if not isinstance(runs, dict):
            raise InputError("[runs] must map column labels to lists of hits")
        return {
            "query_id": query_id,
            "judgments": judgments,
            "qrels": settings.judgments.path.name,
            "ndcg": ndcg_of(runs, judgments),
        }

    def judged_of(self, settings: WorkbenchSettings, text: str) -> dict[str, Any]:
        store = settings.judgments
        if store is None:
            return {"query_id": None, "judgments": {}, "qrels": None}
        query_id = store.query_id(text)
        return {"query_id": query_id, "judgments": store.of(query_id), "qrels": store.path.name}


def cross_site(headers: Mapping[str, str], *, own_credentials: bool) -> str | None:
    """Why a request to the JSON endpoints is refused as another site's (None: it is not).

    A page of another origin (or a DNS name rebound to serve's address) that posts here sends
    its own ``Origin``, or the browser says ``Sec-Fetch-Site: cross-site``. With serve's own
    cluster credentials (``compare --ui``) the ``Host`` must also be a loopback name, so that
    a rebound name cannot reach them even without those headers.

    >>> cross_site({"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"},
    ...            own_credentials=True) is None
    True
    >>> cross_site({"host": "127.0.0.1:8080", "origin": "http://evil.example:8080"},
    ...            own_credentials=False).startswith("a request from another site")
    True
    >>> cross_site({"host": "evil.example:8080"}, own_credentials=True).startswith("the work")
    True
    """
    host = headers.get("host", "")
    origin = headers.get("origin")
    if origin is not None:
        parts = origin_parts(origin)
        scheme = parts[0] if parts else "http"
        if parts is None or parts[1:] != authority_parts(host, scheme):
            return (
                f"a request from another site (Origin {origin[:100]} is not this server's "
                f"address, {host[:100]}): refused"
            )
    if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return "a request from another site (Sec-Fetch-Site: cross-site): refused"
    if own_credentials:
        found = authority_parts(host, "http")
        if found is None or found[0] not in LOOPBACK_HOSTS:
            return (
                "the workbench of compare --ui answers only at 127.0.0.1, localhost or [::1] "
                f"(this request's Host is {host[:100]!r}): refused"
            )
    return None


def origin_parts(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an ``Origin`` header; None when it is no http(s) origin
    (``null`` among them)."""
    scheme, _, rest = origin.strip().partition("://")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        return None
    found = authority_parts(rest.rstrip("/"), scheme)
    return (scheme, *found) if found else None


def authority_parts(authority: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host[:port]`` (lower case; the scheme's port when none is
    given); None when it is not one.

    >>> authority_parts("[::1]:8080", "http"), authority_parts("LocalHost", "https")
    (('::1', 8080), ('localhost', 443))
    """
    if not authority or any(c in authority for c in "@/?#\\ "):
        return None
    try:
        parts = urlsplit(f"{scheme}://{authority}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port if port is not None else DEFAULT_PORTS[scheme]


def ndcg_of(
    runs: Mapping[str, Sequence[Any]], judgments: Mapping[str, int]
) -> dict[str, float | None]:
    """nDCG@10 per column of its hits (``{"id", "score"}``, in the order shown), as
    ``evaluate`` computes it; None while the query has no judgments."""
    if not judgments:
        return {label: None for label in runs}
    return {
        str(label): query_measures(run_of(hits), judgments)[NDCG] for label, hits in runs.items()
    }


def run_of(hits: Any) -> dict[str, float]:
    """``{doc id: score}`` of a column's hits as the page sends them back."""
    if not isinstance(hits, list):
        raise InputError("[runs] must map column labels to lists of hits")
    run: dict[str, float] = {}
    for hit in hits:
        if not isinstance(hit, dict) or not isinstance(hit.get("id"), str):
            raise InputError("each hit of [runs] is an object with a string [id]")
        score = hit.get("score")
        run[hit["id"]] = float(score) if isinstance(score, int | float) else 0.0
    return run


def text_of(spec: Mapping[str, Any]) -> str:
    text = spec.get("q")
    if not isinstance(text, str) or not text.strip():
        raise InputError("[q] must be a non-empty query text")
    return text


def string_of(spec: Mapping[str, Any], name: str, default: str | None) -> str:
    value = spec.get(name) or default
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"[{name}] must be a non-empty string")
    return value
