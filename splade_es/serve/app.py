"""The ASGI app of ``splade-es serve`` (Starlette): routes and wiring only.

    /_splade/health    200 when the model is loaded and the cluster answers, else 503
    /_splade/metrics   Prometheus text format
    /_splade/query     text -> the search body and URL params for an index or engine
    /_splade/encode    texts -> token/weight dicts and feature keys
    /embed_sparse      text-embeddings-inference's sparse-embedding API
    everything else    forwarded to the cluster unchanged, except ``_search``/``_msearch``
                       bodies with a ``splade`` clause, which is replaced (``rewrite``)

Errors look like the cluster's own (``{"error": {"type", "reason"}, "status"}``), so every
client raises its usual exception; ``HTTP_ERRORS`` says which status each error of
``splade_es.exceptions`` gets: 400 for a malformed clause or a bad value in a request, 413 for
a body over the limit, 429 when the encode queue is full, 502 when the cluster cannot be
reached, 504 when it does not answer in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..encoding.encoder import SpladeEncoder
from ..encoding.model_files import read_layout, require_trusted_layout, resolve_checkpoint
from ..encoding.static_query import StaticQueryEncoder
from ..exceptions import (
    AuthenticationError,
    ClusterError,
    ClusterTimeoutError,
    ConfigurationError,
    ConnectionFailedError,
    InputError,
    ModelLoadError,
    OverloadedError,
    ServiceUnavailableError,
    SpladeEsError,
    UnsupportedFeatureError,
)
from ..sparse import SparseBatch
from ..tokens import TokenCodec
from . import rewrite, writes
from .enrich import TooManyRequests
from .facts import UpstreamAnswered, changes_mappings
from .metrics import CONTENT_TYPE
from .service import (
    HttpError,
    RequestTimeout,
    ServeConfig,
    Service,
    check_texts,
    field_of,
    model_name,
    texts_of,
)
from .upstream import Headers, UpstreamResponse, UpstreamUnavailable, forwardable

log = logging.getLogger(__name__)
access_log = logging.getLogger("splade_es.serve.access")

# The one place an error becomes an HTTP answer: (status, Elasticsearch error type) for each
# class, looked up along the error's MRO, so the most specific class listed wins. An error
# that carries its own ``error_type`` (RewriteError) or ``status`` (HttpError) keeps it.
HTTP_ERRORS: dict[type[BaseException], tuple[int, str]] = {
    # The request is wrong: a malformed clause or body, a bad value, an engine feature the
    # index's engine lacks (the engine itself would refuse such a query with a 400).
    InputError: (400, "illegal_argument_exception"),
    ConfigurationError: (400, "illegal_argument_exception"),
    UnsupportedFeatureError: (400, "illegal_argument_exception"),
    rewrite.RewriteError: (400, "parsing_exception"),
    writes.WriteBodyError: (400, "illegal_argument_exception"),
    # The proxy cannot take the work now: the same request may succeed later.
    OverloadedError: (429, "es_rejected_execution_exception"),
    TooManyRequests: (429, "es_rejected_execution_exception"),
    ServiceUnavailableError: (503, "unavailable_exception"),
    # The proxy's own time limit for a request (--max-request-seconds).
    RequestTimeout: (504, "timeout_exception"),
    # The cluster behind the proxy failed it (its own answers are relayed as they came).
    ClusterTimeoutError: (504, "timeout_exception"),
    ConnectionFailedError: (502, "upstream_unavailable_exception"),
    AuthenticationError: (502, "security_exception"),  # the proxy's own credentials
    ClusterError: (502, "upstream_exception"),
    # The proxy itself is broken: its model, or a bug (details go to the log only).
    ModelLoadError: (500, "illegal_state_exception"),
    SpladeEsError: (500, "internal_error"),
    Exception: (500, "internal_error"),
}
INTERNAL_REASON = "internal error in splade-es serve"

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


def http_error(exc: BaseException) -> tuple[int, str, str]:
    """(status, error type, reason) that ``exc`` is answered with (``HTTP_ERRORS``)."""
    status, error_type = next(HTTP_ERRORS[c] for c in type(exc).__mro__ if c in HTTP_ERRORS)
    if status == 500:  # the proxy's own failure: its details (paths, code) stay in the log
        return status, error_type, INTERNAL_REASON
    if isinstance(exc, HttpError):
        status = exc.status
    return status, getattr(exc, "error_type", error_type), str(exc)


def error_body(status: int, error_type: str, reason: str) -> bytes:
    """Elasticsearch's error shape; clients turn it into their usual exceptions."""
    cause = {"type": error_type, "reason": reason}
    return json.dumps({"error": {"root_cause": [cause], **cause}, "status": status}).encode()


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status, media_type="application/json")


class RawResponse(Response):
    """A response with the upstream's headers as they came, in order with repeats (the
    server writes names in lower case, which HTTP treats as the same names)."""

    def __init__(self, upstream: UpstreamResponse, method: str = "GET") -> None:
        super().__init__(upstream.body, upstream.status)
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers]
        # A HEAD answer declares (or not) the length a GET would have; 204/304 have none.
        length = upstream.content_length if method == "HEAD" else str(len(upstream.body))
        if length is not None and upstream.status not in (204, 304):
            self.raw_headers.append((b"content-length", length.encode()))


# ---------------------------------------------------------------------- the request line
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")  # what is forwarded


class RequestLine:
    """Answers, before any route, a request the proxy never forwards: a method other than
    ``METHODS`` (CONNECT, TRACE) with 405, and a target that is not a path (absolute-form
    ``http://host/...``, authority-form ``host:443``) with 400: the upstream is ``--url``
    only, so the proxy is no forward proxy. In the cluster's error shape, not Starlette's
    plain-text 404/405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            refused: tuple[int, str] | None = None
            if method not in METHODS:
                refused = 405, f"method [{method}] is not forwarded by splade-es serve"
            elif not path.startswith("/"):
                refused = (
                    400,
                    (
                        "the request target must be a path: splade-es serve forwards to its --url "
                        "only, never to a URL it is sent"
                    ),
                )
            if refused is not None:
                status, reason = refused
                body = error_body(status, "illegal_argument_exception", reason)
                response = Response(body, status, media_type="application/json")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ClientConcurrency:
    """At most ``limit`` requests of one client address in flight; one more is answered 429
    ``es_rejected_execution_exception`` (what the engines answer when their queues are full,
    which clients back off and retry on) until one of them ends. Health and metrics are never
    counted or refused: monitoring must see a proxy that is busy with one client."""

    EXEMPT = ("/_splade/health", "/_splade/metrics")

    def __init__(self, app: ASGIApp, limit: int | None) -> None:
        self.app = app
        self.limit = limit
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit is None or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown",))[0]
        if self.in_flight.get(client, 0) >= self.limit:
            reason = (
                f"too many requests in flight from {client}: at most {self.limit} at once "
                "(splade-es serve --max-client-requests)"
            )
            body = error_body(429, "es_rejected_execution_exception", reason)
            await Response(body, 429, media_type="application/json")(scope, receive, send)
            return
        self.in_flight[client] = self.in_flight.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]  # the table holds only clients with requests now


# ---------------------------------------------------------------------- request helpers
async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, "content_too_long_exception", _too_long(int(declared), limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "content_too_long_exception", _too_long(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_long(size: int, limit: int) -> str:
    return f"request body of {size} bytes or more exceeds the proxy's limit of {limit} bytes"


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip/deflate request body, inflated (at most ``limit`` bytes)."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise HttpError(
            415, "illegal_argument_exception", f"unsupported Content-Encoding {encoding!r}"
        )
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpError(400, "parse_exception", f"request body: bad {encoding} data") from exc
    if len(out) > limit:
        raise HttpError(413, "content_too_long_exception", _too_long(len(out), limit))
    return out


def _header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _without(headers: Headers, name: str) -> Headers:
    return [(k, v) for k, v in headers if k.lower() != name]


# ---------------------------------------------------------------------- the app
def create_app(
    config: ServeConfig, *, encoder: SpladeEncoder | StaticQueryEncoder | None = None
) -> Starlette:
    """The ASGI app; ``encoder`` skips loading ``config.model`` (tests, embedding).

    Without one, the checkpoint's files are checked here (no weights are read): a wrong
    model is a ``ModelLoadError`` now, not a failed server start (the model loads when
    the app starts).
    """
    if encoder is None:
        layout = read_layout(resolve_checkpoint(config.model))
        require_trusted_layout(layout, config.model, config.trust_remote_code)
    service = Service(config, encoder)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    def answered(route: str, started: float, request: Request, response: Response) -> Response:
        elapsed = time.perf_counter() - started
        service.metrics.requests.labels(route, f"{response.status_code // 100}xx").inc()
        service.metrics.request_seconds.labels(route).observe(elapsed)
        # Method, path and status only: never headers (credentials) or query strings.
        access_log.info(
            "%s %s %s -> %d %.2fms",
            request.client.host if request.client else "-",
            request.method,
            request.url.path,
            response.status_code,
            elapsed * 1000,
        )
        return response

    def failure(exc: Exception) -> Response:
        if isinstance(exc, UpstreamAnswered):  # not an error of ours: the cluster's answer
            return RawResponse(exc.response)
        status, error_type, reason = http_error(exc)
        if isinstance(exc, ClusterError) and status >= 500:
            service.metrics.upstream_errors.inc()
        if status == 500:
            # Details to the log, not the client; the id ties the answer to the traceback.
            request_id = uuid.uuid4().hex[:16]
            log.error("internal error (request id %s)", request_id, exc_info=exc)
            reason = f"{reason} (request id {request_id}: see the proxy's log)"
        return Response(
            error_body(status, error_type, reason), status, media_type="application/json"
        )

    def deadline() -> float:
        return asyncio.get_running_loop().time() + config.max_request_seconds

    async def proxy(request: Request) -> Response:
        started = time.perf_counter()
        route = "passthrough"
        until = deadline()
        try:
            async with within(until, config.max_request_seconds):
                body = await read_body(request, config.max_body_bytes)
            method = request.method
            path = request.url.path
            target = request.scope["raw_path"].decode("latin-1")
            if request.scope["query_string"]:
                target += "?" + request.scope["query_string"].decode("latin-1")
            headers = forwardable(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
            )
            sp = rewrite.search_path(path) if method in ("GET", "POST") and body else None
            # The raw path: a document id may hold an encoded "/" (URLs as ids).
            raw_path = request.scope["raw_path"].decode("latin-1")
            wp = writes.write_path(method, raw_path) if service.enricher and body else None
            if wp is not None:
                # Not cut at the deadline: a write stopped half-way leaves the app not knowing
                # what was indexed. Its wait for the encoder is bounded by --enrich-queue.
                route = "write" + wp.api
                response = await write(wp, method, target, headers, body)
            else:
                async with within(until, config.max_request_seconds):
                    if sp is not None:
                        route = sp.api.lstrip("_")
                        response = await search(sp, method, target, headers, body)
                    else:
                        response = await forward(method, target, headers, body)
            if changes_mappings(method, path):
                service.facts.forget()
            result: Response = RawResponse(response, method)
        except Exception as exc:
            result = failure(exc)
        return answered(route, started, request, result)

    async def forward(method: str, target: str, headers: Headers, body: bytes) -> UpstreamResponse:
        started = time.perf_counter()
        response = await service.upstream.request(method, target, headers, body)
        service.metrics.upstream_seconds.observe(time.perf_counter() - started)
        return response

    async def write(
        wp: writes.WritePath, method: str, target: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        """A document write into an enriched index: sent with vectors (``enrich``)."""
        enricher = service.enricher
        assert enricher is not None
        media_type = (_header(headers, "content-type") or "application/json").lower()
        if "json" not in media_type:
            # SMILE, CBOR, YAML: the proxy cannot read the documents, so it cannot add their
            # vectors; forwarding them would index documents without one.
            raise HttpError(
                415,
                "media_type_header_exception",
                f"splade-es serve --enrich reads JSON write bodies only, got {media_type!r}",
            )
        encoding = _header(headers, "content-encoding")
        plain = decompress(body, encoding, config.max_body_bytes) if encoding else body
        sent_headers = _without(headers, "content-encoding")
        authorization = _header(headers, "authorization")
        if wp.api == "_bulk":
            response = await enricher.bulk(wp, target, sent_headers, plain, authorization)
        elif wp.api == "_update":
            response = await enricher.update_document(
                wp, target, sent_headers, plain, authorization
            )
        else:
            response = await enricher.index_document(
                wp, method, target, sent_headers, plain, authorization
            )
        if response is None:
            return await forward(method, target, headers, body)  # untouched, bytes as they came
        return response

    async def search(
        sp: rewrite.SearchPath, method: str, target: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        encoding = _header(headers, "content-encoding")
        plain = decompress(body, encoding, config.max_body_bytes) if encoding else body
        authorization = _header(headers, "authorization")
        rewritten = await service.rewrite_clauses(sp, plain, authorization)
        if rewritten is None:
            return await forward(method, target, headers, body)  # untouched, bytes as they came
        new_body, used = rewritten
        sent_headers = _without(headers, "content-encoding")
        response = await forward(method, target, sent_headers, new_body)
        if response.status == 400:
            # The mapping may have changed behind the proxy: re-read the facts this body
            # used, and try once more if they differ.
            before = [service.facts.forget_index(index, field) for index, field in used]
            rewritten = await service.rewrite_clauses(sp, plain, authorization)
            assert rewritten is not None
            after = [await service.facts.facts(i, f, authorization) for i, f in used]
            if any(
                b is None or b.signature != a.signature for b, a in zip(before, after, strict=True)
            ):
                response = await forward(method, target, sent_headers, rewritten[0])
        return response

    async def health(request: Request) -> Response:
        started = time.perf_counter()
        model_loaded = service.encoder is not None and service.batcher is not None
        cluster: dict[str, Any] = {}  # no address: health is open to every client
        try:
            answer, _ = await service.upstream.get_json("/")
            cluster.update(reachable=answer.status < 500, status=answer.status)
        except UpstreamUnavailable as exc:
            cluster.update(reachable=False, reason=str(exc))
        ok = model_loaded and cluster["reachable"]
        body = {
            "status": "ok" if ok else "unavailable",
            "model": model_name(service.encoder.name) if service.encoder else None,
            "model_loaded": model_loaded,
            "cluster": cluster,
        }
        return answered("health", started, request, _json(body, 200 if ok else 503))

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    async def query(request: Request) -> Response:
        started = time.perf_counter()
        try:
            async with within(deadline(), config.max_request_seconds):
                spec = await _json_object(request, config)
                result = await service.translation(spec, request.headers.get("authorization"))
            response = _json(result)
        except Exception as exc:
            response = failure(exc)
        return answered("query", started, request, response)

    async def encode(request: Request) -> Response:
        started = time.perf_counter()
        try:
            async with within(deadline(), config.max_request_seconds):
                response = await encoded(request)
        except Exception as exc:
            response = failure(exc)
        return answered("encode", started, request, response)

    async def encoded(request: Request) -> Response:
        spec = await _json_object(request, config)
        texts = texts_of(field_of(spec, "texts", list))
        check_texts(texts, config)
        kind = field_of(spec, "kind", str, "query")
        scheme = field_of(spec, "key_scheme", str, "token")
        if kind not in ("query", "document"):
            raise HttpError(400, "illegal_argument_exception", "[kind] is query or document")
        if kind == "query":
            vectors = await service.query_vectors(texts)
            batch = SparseBatch.concat(vectors)
        else:
            assert service.batcher is not None and service.encoder is not None
            document_encoder = await service.document_encoder()
            batch = await service.batcher.run_pieces(
                lambda piece: service.encode_documents(document_encoder, piece), texts
            )
        codec = TokenCodec(batch.vocab, scheme=scheme)  # type: ignore[arg-type]
        vectors_out = [
            {"tokens": batch.to_dict(i), "features": codec.encode(batch, i)}
            for i in range(len(batch))
        ]
        name = model_name(service.encoder.name)
        return _json({"model": name, "kind": kind, "vectors": vectors_out})

    async def embed_sparse(request: Request) -> Response:
        """text-embeddings-inference's ``POST /embed_sparse``: ``{"inputs": str | [str]}`` ->
        ``[[{"index": id, "value": weight}]]``; errors as TEI gives them (422 + error_type)."""
        started = time.perf_counter()
        try:
            async with within(deadline(), config.max_request_seconds):
                spec = await _json_object(request, config)
                inputs = spec.get("inputs")
                texts = texts_of([inputs] if isinstance(inputs, str) else inputs, name="inputs")
                check_texts(texts, config, "inputs")
                vectors = await service.query_vectors(texts)
            out = [
                [{"index": int(i), "value": float(w)} for i, w in zip(*v.row(0), strict=True)]
                for v in vectors
            ]
            response = _json(out)
        except HttpError as exc:
            response = _json({"error": exc.reason, "error_type": "Validation"}, 422)
        except Exception as exc:
            response = failure(exc)
        return answered("embed_sparse", started, request, response)

    routes = [
        Route("/_splade/health", health, methods=["GET"]),
        Route("/_splade/metrics", metrics, methods=["GET"]),
        Route("/_splade/query", query, methods=["POST"]),
        Route("/_splade/encode", encode, methods=["POST"]),
        Route("/embed_sparse", embed_sparse, methods=["POST"]),
        Route("/{path:path}", proxy, methods=list(METHODS)),
    ]
    middleware = [
        Middleware(RequestLine),
        Middleware(ClientConcurrency, limit=config.max_client_requests),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.service = service
    return app


@contextlib.asynccontextmanager
async def within(deadline: float, seconds: float) -> AsyncIterator[None]:
    """Run the block until ``deadline`` (the event loop's clock); past it, ``RequestTimeout``
    naming the limit (``seconds``, ``--max-request-seconds``)."""
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise
        raise RequestTimeout(
            f"splade-es serve did not finish this request within {seconds:g} s, its limit "
            "(--max-request-seconds)"
        ) from None


# ---------------------------------------------------------------------- JSON input helpers
async def _json_object(request: Request, config: ServeConfig) -> dict[str, Any]:
    raw = await read_body(request, config.max_body_bytes)
    body = rewrite.parse_json_body(raw, max_depth=config.max_json_depth)
    if not isinstance(body, dict):
        raise HttpError(400, "parse_exception", "request body: expected a JSON object")
    return body
