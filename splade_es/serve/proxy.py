"""The proxy route of ``splade-es serve``: everything that is not its own API goes to the
cluster unchanged, except

* ``_search``/``_msearch`` bodies with a ``splade`` clause, which is replaced (``rewrite``);
  a ``_search`` whose query is a ``splade`` clause with ``hybrid`` runs as a hybrid, fused by
  the engine or here (``hybrid``);
* with ``--enrich``, document writes into an enriched index, sent with their vectors.

``Proxy.handle`` reads the request, picks the route (``route_name``) and sends it on
(``send``: ``write``, ``search`` or ``forward``), all but a write within the request's time
limit.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import rewrite, writes
from .errors import error_response
from .exchange import (
    Outgoing,
    RawResponse,
    deadline_after,
    header,
    outgoing,
    plain_body,
    read_body,
    recorded,
    within,
    without,
)
from .facts import changes_mappings
from .hybrid import HybridRunner
from .middleware import METHODS
from .service import HttpError, Service
from .upstream import Headers, UpstreamResponse


def route_name(wp: writes.WritePath | None, sp: rewrite.SearchPath | None) -> str:
    """The metrics label of a proxied request."""
    if wp is not None:
        return "write" + wp.api
    if sp is not None:
        return sp.api.lstrip("_")
    return "passthrough"


class Proxy:
    """The catch-all route: requests for the cluster, sent on (``route``)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = service.config
        self.hybrids = HybridRunner(service)

    def route(self) -> Route:
        return Route("/{path:path}", self.handle, methods=list(METHODS))

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        route = "passthrough"
        seconds = self.config.max_request_seconds
        until = deadline_after(seconds)
        try:
            async with within(until, seconds):
                body = await read_body(request, self.config.max_body_bytes)
            out = outgoing(request, body)
            sp = rewrite.search_path(out.path) if out.method in ("GET", "POST") and body else None
            # The raw path: a document id may hold an encoded "/" (URLs as ids).
            enriched = self.service.enricher and body
            wp = writes.write_path(out.method, out.raw_path) if enriched else None
            route = route_name(wp, sp)
            response = await self.send(out, wp, sp, until)
            if changes_mappings(out.method, out.path):
                self.service.facts.forget()
            result: Response = RawResponse(response, out.method)
        except Exception as exc:
            result = error_response(exc, self.service.metrics)
        return recorded(self.service.metrics, route, started, request, result)

    async def send(
        self,
        out: Outgoing,
        wp: writes.WritePath | None,
        sp: rewrite.SearchPath | None,
        until: float,
    ) -> UpstreamResponse:
        if wp is not None:
            # Not cut at the deadline: a write stopped half-way leaves the app not knowing
            # what was indexed. Its wait for the encoder is bounded by --enrich-queue.
            return await self.write(wp, out)
        async with within(until, self.config.max_request_seconds):
            if sp is not None:
                return await self.search(sp, out)
            return await self.forward(out.method, out.target, out.headers, out.body)

    async def forward(
        self, method: str, target: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        started = time.perf_counter()
        response = await self.service.upstream.request(method, target, headers, body)
        self.service.metrics.upstream_seconds.observe(time.perf_counter() - started)
        return response

    async def write(self, wp: writes.WritePath, out: Outgoing) -> UpstreamResponse:
        """A document write into an enriched index: sent with vectors (``enrich``)."""
        enricher = self.service.enricher
        assert enricher is not None
        require_json_body(out.headers)
        plain = plain_body(out, self.config.max_body_bytes)
        sent_headers = without(out.headers, "content-encoding")
        authorization = header(out.headers, "authorization")
        if wp.api == "_bulk":
            response = await enricher.bulk(wp, out.target, sent_headers, plain, authorization)
        elif wp.api == "_update":
            response = await enricher.update_document(
                wp, out.target, sent_headers, plain, authorization
            )
        else:
            response = await enricher.index_document(
                wp, out.method, out.target, sent_headers, plain, authorization
            )
        if response is None:  # untouched: the bytes as they came
            return await self.forward(out.method, out.target, out.headers, out.body)
        return response

    async def search(self, sp: rewrite.SearchPath, out: Outgoing) -> UpstreamResponse:
        """A search: its ``splade`` clauses replaced, if it has any."""
        plain = plain_body(out, self.config.max_body_bytes)
        authorization = header(out.headers, "authorization")
        hybrid = self.hybrid_search(sp, plain)
        if hybrid is not None:
            return await self.hybrids.search(sp, out, hybrid)
        rewritten = await self.service.rewrite_clauses(sp, plain, authorization)
        if rewritten is None:  # untouched: the bytes as they came
            return await self.forward(out.method, out.target, out.headers, out.body)
        new_body, used = rewritten
        sent_headers = without(out.headers, "content-encoding")
        response = await self.forward(out.method, out.target, sent_headers, new_body)
        if response.status == 400:
            again = await self.rewritten_again(sp, plain, used, authorization)
            if again is not None:
                response = await self.forward(out.method, out.target, sent_headers, again)
        return response

    def hybrid_search(self, sp: rewrite.SearchPath, plain: bytes) -> rewrite.HybridSearch | None:
        """The hybrid a ``_search`` body asks for with a ``splade`` clause, or None."""
        if sp.api != "_search" or not rewrite.may_have_clause(plain) or b'"hybrid"' not in plain:
            return None
        parsed = rewrite.parse_json_body(plain, max_depth=self.config.max_json_depth)
        return rewrite.hybrid_search(parsed, rewrite.find_clauses(parsed))

    async def rewritten_again(
        self,
        sp: rewrite.SearchPath,
        plain: bytes,
        used: list[tuple[str | None, str]],
        authorization: str | None,
    ) -> bytes | None:
        """After a 400: the mapping may have changed behind the proxy. The body rewritten with
        the facts it used read again, when they differ; None when they do not."""
        facts = self.service.facts
        before = [facts.forget_index(index, field) for index, field in used]
        rewritten = await self.service.rewrite_clauses(sp, plain, authorization)
        assert rewritten is not None
        after = [await facts.facts(i, f, authorization) for i, f in used]
        if any(b is None or b.signature != a.signature for b, a in zip(before, after, strict=True)):
            return rewritten[0]
        return None


def require_json_body(headers: Headers) -> None:
    """``HttpError`` 415 for a write body the proxy cannot read: SMILE, CBOR, YAML. It cannot
    add their vectors; forwarding them would index documents without one."""
    media_type = (header(headers, "content-type") or "application/json").lower()
    if "json" not in media_type:
        raise HttpError(
            415,
            "media_type_header_exception",
            f"splade-es serve --enrich reads JSON write bodies only, got {media_type!r}",
        )
