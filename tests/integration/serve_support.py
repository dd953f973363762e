"""Loopback helpers for the ``splade-es serve`` tests: the proxy running on a real socket
(uvicorn in a thread), and small HTTP servers to put behind it (a recording stub, and a
gate in front of the test cluster that requires a credential and can be switched off)."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from splade_es import QueryBuilder, create_index
from splade_es.connect import ConnectionConfig
from splade_es.serve import ServeConfig, create_app
from splade_es.serve.app import SERVER_OPTIONS
from tests.integration.corpus import bulk_index, document_text, make_documents


def index_corpus(cluster: Any, index_name: str, encoder: Any, n_docs: int) -> str:
    """``n_docs`` test documents with their vectors in a fresh index; returns its name."""
    docs = make_documents(n_docs)
    vectors = encoder.encode_documents([document_text(d) for d in docs])
    create_index(cluster.client, index_name, replicas=0)
    builder = QueryBuilder.for_index(cluster.client, index_name)
    bulk_index(cluster.client, index_name, docs, vectors, builder.codec(vectors.vocab))
    return index_name


def post_json(app: Any, path: str, payload: Any) -> tuple[int, Any]:
    """POST ``payload`` as JSON to the running proxy; status and the decoded answer."""
    headers = {"Content-Type": "application/json"}
    status, _, body = raw_request(
        app.state.url, "POST", path, json.dumps(payload).encode(), headers
    )
    return status, json.loads(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_proxy(upstream: str, encoder: Any, **options: Any) -> Iterator[Any]:
    """``splade-es serve`` in front of ``upstream`` on a free loopback port; yields the app
    (``app.state.url`` is where it listens)."""
    connection = options.pop("connection", None) or ConnectionConfig(hosts=(upstream,))
    app = create_app(ServeConfig(connection=connection, **options), encoder=encoder)
    port = free_port()
    server = uvicorn.Server(
        # The server options `splade-es serve` runs with (h11 among them), so the suite
        # tests the proxy as users run it.
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **SERVER_OPTIONS)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.01)
    app.state.url = f"http://127.0.0.1:{port}"
    try:
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class Recorded:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


Handler = Callable[[Recorded], tuple[int, list[tuple[str, str]], bytes]]
_PLAIN = re.compile(r"application/vnd\.elasticsearch\+(json|x-ndjson); ?compatible-with=\d+")


@dataclass
class StubServer:
    """An HTTP/1.1 server on loopback that records each raw request and answers with
    ``handler``. ``port`` may be fixed to restart it where it was."""

    handler: Handler
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubServer:
        stub = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                stub._connections.add(self.connection)

            def finish(self) -> None:
                stub._connections.discard(self.connection)
                super().finish()

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, self.path, list(self.headers.items()), body)
                stub.requests.append(recorded)
                status, headers, payload = stub.handler(recorded)
                self.send_response_only(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), RequestHandler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections, as a dying node does."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def forward_to(upstream: str, *, require: str | None = None, plain_json: bool = False) -> Handler:
    """A handler that relays to ``upstream``; with ``require``, only requests whose
    ``Authorization`` is exactly that (like a cluster with security on) get through.
    ``plain_json`` lets the official Elasticsearch clients talk to an OpenSearch cluster: it
    reads their versioned media types as plain JSON, as Elasticsearch does (OpenSearch and the
    emulator refuse them), and answers with the ``X-Elastic-Product: Elasticsearch`` header
    their product check requires (a real OpenSearch does not send it)."""
    target = urlsplit(upstream)

    def handle(request: Recorded) -> tuple[int, list[tuple[str, str]], bytes]:
        auth = next((v for k, v in request.headers if k.lower() == "authorization"), None)
        if require is not None and auth != require:
            body = (
                b'{"error":{"root_cause":[{"type":"security_exception","reason":"missing '
                b'authentication credentials"}],"type":"security_exception","reason":'
                b'"missing authentication credentials"},"status":401}'
            )
            return 401, [("Content-Type", "application/json")], body
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            headers = {
                k: v
                for k, v in request.headers
                if k.lower() not in ("host", "content-length", "connection", "authorization")
            }
            if plain_json:
                headers = {k: _PLAIN.sub(r"application/\1", v) for k, v in headers.items()}
            conn.request(request.method, request.target, body=request.body or None, headers=headers)
            response = conn.getresponse()
            out = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            if plain_json and not any(k.lower() == "x-elastic-product" for k, _ in out):
                out.append(("X-Elastic-Product", "Elasticsearch"))
            return response.status, out, response.read()
        finally:
            conn.close()

    return handle


def raw_request(
    url: str, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request with http.client: status, headers as received, body bytes."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, target, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()
