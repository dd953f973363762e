"""What ``splade-es serve`` answers before any route: requests it never forwards
(``RequestLine``) and one client's requests over its share (``ClientConcurrency``)."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_body
from .service import ServeConfig

METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")  # what is forwarded
# The header of a 429 that ml-commons' remote connectors retry (client_config.max_retry_times).
THROTTLED = {"x-amzn-ErrorType": "ThrottlingException"}


def middleware_stack(config: ServeConfig) -> list[Middleware]:
    """The middleware of the app, outermost first."""
    return [
        Middleware(RequestLine),
        Middleware(ClientConcurrency, limit=config.max_client_requests),
    ]


def refused_request_line(method: str, path: str) -> tuple[int, str] | None:
    """(status, reason) for a request line the proxy refuses; None for one it serves."""
    if method not in METHODS:
        return 405, f"method [{method}] is not forwarded by splade-es serve"
    if not path.startswith("/"):
        return (
            400,
            (
                "the request target must be a path: splade-es serve forwards to its --url "
                "only, never to a URL it is sent"
            ),
        )
    return None


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
            refused = refused_request_line(scope["method"], scope["path"])
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
    # The engines' encoder: its 429 says "throttled" the way ml-commons retries on.
    ENGINE_PATHS = "/_splade/embed/"

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
            headers = THROTTLED if scope["path"].startswith(self.ENGINE_PATHS) else None
            response = Response(body, 429, headers=headers, media_type="application/json")
            await response(scope, receive, send)
            return
        self.in_flight[client] = self.in_flight.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]  # the table holds only clients with requests now
