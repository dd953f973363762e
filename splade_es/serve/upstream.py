"""The one async HTTP client to the cluster (aiohttp, the transport the official async Python
clients use too).

Requests are forwarded as they came: method, raw path and query string, headers (including
``Authorization``) and body bytes. Only hop-by-hop headers (RFC 9110 7.6.1) and ``Host`` are
not forwarded. Responses come back the same way; compressed bodies stay compressed
(``auto_decompress=False``), so the bytes the app receives are the bytes the cluster sent.

The upstream is fixed by configuration: the proxy never follows a URL from a request.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from .. import defaults
from ..connect import ConnectionConfig, redact_url
from ..exceptions import (
    ClusterTimeoutError,
    ConfigurationError,
    ConnectionFailedError,
    ShuttingDownError,
)

log = logging.getLogger(__name__)

# Hop-by-hop headers describe one connection, not the message (RFC 9110 section 7.6.1);
# Host names the proxy; Content-Length is recomputed from the (possibly rewritten) body.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# aiohttp adds these when absent; a transparent proxy must not.
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

Headers = list[tuple[str, str]]


class UpstreamUnavailable(ConnectionFailedError):
    """The cluster could not be reached (answered 502)."""


class UpstreamTimeout(UpstreamUnavailable, ClusterTimeoutError):
    """The cluster did not answer in time (answered 504)."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: Headers  # end-to-end headers, without Content-Length
    body: bytes
    content_length: str | None = None  # as declared (a HEAD answer declares the GET's)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self) -> Any:
        """The body parsed as JSON (None when it is not JSON, or compressed)."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def forwardable(headers: Iterable[tuple[str, str]]) -> Headers:
    """The end-to-end headers of a request or response, in order, repeats kept."""
    dropped = set(HOP_BY_HOP)
    headers = list(headers)
    for name, value in headers:
        if name.lower() == "connection":  # headers the Connection header names are hop-by-hop
            dropped.update(token.strip().lower() for token in value.split(","))
    return [(k, v) for k, v in headers if k.lower() not in dropped]


def auth_header(config: ConnectionConfig, url_credentials: tuple[str, str] | None) -> str | None:
    """The ``Authorization`` value for the proxy's own reads (never for forwarded requests)."""
    if config.api_key:
        return f"ApiKey {config.api_key}"
    credentials = (
        (config.username, config.password) if config.username is not None else url_credentials
    )
    if credentials is None:
        return None
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    return f"Basic {token}"


class Upstream:
    """A pooled connection to one cluster URL."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        max_connections: int = defaults.MAX_CONNECTIONS,
        timeout: float | None = None,
    ) -> None:
        if config.cloud_id or len(config.hosts) != 1:
            raise ConfigurationError.bad_value(
                "hosts",
                ",".join(redact_url(h) for h in config.hosts) or f"cloud id {config.cloud_id}",
                "must be exactly one cluster URL for serve (a coordinating node or a load "
                "balancer)",
            )
        parts = urlsplit(config.hosts[0])
        url_credentials = (
            (parts.username or "", parts.password or "") if parts.username is not None else None
        )
        netloc = parts.hostname or ""
        if ":" in netloc:  # an IPv6 literal
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        self.base = f"{parts.scheme}://{netloc}"
        self.prefix = parts.path.rstrip("/")
        self.description = redact_url(config.hosts[0])
        self.own_auth = auth_header(config, url_credentials)
        self._ssl: ssl.SSLContext | bool = True
        if parts.scheme == "https":
            if not config.verify_certs:
                self._ssl = False
            elif config.ca_certs:
                self._ssl = ssl.create_default_context(cafile=config.ca_certs)
        self._timeout = aiohttp.ClientTimeout(total=timeout or config.request_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ssl=self._ssl, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy keeps no cookies between apps
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, target: str, headers: Headers, body: bytes = b""
    ) -> UpstreamResponse:
        """Send ``method target`` (raw, already percent-encoded path and query string)."""
        if self._session is None:
            # Before start() or after close(): a request that arrives while the service stops.
            raise ShuttingDownError("no connection to the cluster: the proxy is not running")
        url = URL(self.base + self.prefix + target, encoded=True)
        try:
            async with self._session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            ) as response:
                payload = await response.read()
                return UpstreamResponse(
                    response.status,
                    forwardable(_decode_headers(response.raw_headers)),
                    payload,
                    response.headers.get("Content-Length"),
                )
        # What apps are told names no address (the cluster's is the operator's business, and
        # aiohttp's messages carry host:port); the log has the whole story.
        except TimeoutError as exc:  # aiohttp's own timeouts derive from it too
            seconds = self._timeout.total
            log.warning("cluster at %s: no answer within %g s", self.description, seconds)
            raise UpstreamTimeout(
                f"the cluster behind splade-es serve gave no answer within {seconds:g} s"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            log.warning("cluster at %s: %s", self.description, str(exc) or type(exc).__name__)
            raise UpstreamUnavailable(
                f"the cluster behind splade-es serve cannot be reached ({type(exc).__name__})"
            ) from exc

    async def get_json(
        self, target: str, authorization: str | None = None
    ) -> tuple[UpstreamResponse, Any]:
        """A GET the proxy makes for itself (cluster facts, health): its own credentials, or
        the calling app's when it has none."""
        headers = [("Accept", "application/json")]
        auth = self.own_auth or authorization
        if auth:
            headers.append(("Authorization", auth))
        response = await self.request("GET", target, headers)
        return response, response.json()


def _decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """aiohttp's ``raw_headers``: names' case and order exactly as received."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def header_value(headers: Mapping[str, str] | Headers, name: str) -> str | None:
    items = headers.items() if isinstance(headers, Mapping) else headers
    name = name.lower()
    return next((v for k, v in items if k.lower() == name), None)
