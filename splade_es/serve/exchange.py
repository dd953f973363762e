"""One HTTP exchange of ``splade-es serve``, apart from what it means: reading a request's body
(bounded, inflated), its headers and target, its deadline, and writing an answer (JSON, or the
cluster's answer as it came), with the access log and the request metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import rewrite
from .metrics import Metrics
from .service import HttpError, RequestTimeout, ServeConfig
from .upstream import Headers, UpstreamResponse, forwardable

if sys.version_info >= (3, 11):
    from asyncio import timeout_at
else:  # Python 3.10: aiohttp's own backport (installed with aiohttp there), the same API
    from async_timeout import timeout_at  # type: ignore[import-not-found, unused-ignore]

access_log = logging.getLogger("splade_es.serve.access")


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


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status, media_type="application/json")


def recorded(
    metrics: Metrics, route: str, started: float, request: Request, response: Response
) -> Response:
    """``response``, counted and timed under ``route`` and written to the access log."""
    elapsed = time.perf_counter() - started
    metrics.requests.labels(route, f"{response.status_code // 100}xx").inc()
    metrics.request_seconds.labels(route).observe(elapsed)
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


# ---------------------------------------------------------------------- the deadline
def deadline_after(seconds: float) -> float:
    """The event loop's time ``seconds`` from now (``within``'s deadline)."""
    return asyncio.get_running_loop().time() + seconds


@contextlib.asynccontextmanager
async def within(deadline: float, seconds: float) -> AsyncIterator[None]:
    """Run the block until ``deadline`` (the event loop's clock); past it, ``RequestTimeout``
    naming the limit (``seconds``, ``--max-request-seconds``)."""
    timeout = timeout_at(deadline)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not _expired(timeout):
            raise
        raise RequestTimeout(
            f"splade-es serve did not finish this request within {seconds:g} s, its limit "
            "(--max-request-seconds)"
        ) from None


def _expired(timeout: Any) -> bool:
    # asyncio's Timeout.expired is a method; async_timeout 4's (Python 3.10) a property.
    expired = timeout.expired
    return bool(expired() if callable(expired) else expired)


# ---------------------------------------------------------------------- the request
@dataclass(frozen=True)
class Outgoing:
    """A request as the proxy sends it on: ``target`` is the raw path (a document id may hold
    an encoded "/") and query string as they came; ``headers`` the forwardable ones."""

    method: str
    path: str  # decoded: what routing by API looks at
    raw_path: str
    target: str
    headers: Headers
    body: bytes


def outgoing(request: Request, body: bytes) -> Outgoing:
    raw_path = request.scope["raw_path"].decode("latin-1")
    target = raw_path
    if request.scope["query_string"]:
        target += "?" + request.scope["query_string"].decode("latin-1")
    headers = forwardable(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
    )
    return Outgoing(request.method, request.url.path, raw_path, target, headers, body)


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


def plain_body(out: Outgoing, limit: int) -> bytes:
    """``out``'s body as the proxy reads it: inflated when it has a Content-Encoding."""
    encoding = header(out.headers, "content-encoding")
    return decompress(out.body, encoding, limit) if encoding else out.body


def header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def without(headers: Headers, name: str) -> Headers:
    return [(k, v) for k, v in headers if k.lower() != name]


async def json_object(request: Request, config: ServeConfig) -> dict[str, Any]:
    """The request's body, a JSON object (``HttpError`` 400 for anything else)."""
    raw = await read_body(request, config.max_body_bytes)
    body = rewrite.parse_json_body(raw, max_depth=config.max_json_depth)
    if not isinstance(body, dict):
        raise HttpError(400, "parse_exception", "request body: expected a JSON object")
    return body
