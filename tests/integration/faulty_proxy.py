"""A loopback HTTP proxy in front of a test cluster that misbehaves on ``_bulk`` requests,
the way a loaded cluster does:

* ``reject_every``: in every such bulk request, some items are answered 429 or 503
  (``es_rejected_execution_exception``) *without* being forwarded, so they are really not
  indexed until the client re-sends them;
* ``drop_before_every``: the connection is closed before the request is forwarded;
* ``drop_after_every``: the request is forwarded (documents indexed) and then the connection
  is closed without an answer, so the client cannot know and must re-send.

Everything else is forwarded unchanged. Counters say what was injected.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class FaultyProxy:
    def __init__(
        self,
        upstream: str,
        *,
        reject_every: int = 2,
        reject_fraction: float = 0.3,
        drop_before_every: int = 5,
        drop_after_every: int = 7,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.reject_every = reject_every
        self.reject_fraction = reject_fraction
        self.drop_before_every = drop_before_every
        self.drop_after_every = drop_after_every
        self.injected: Counter[str] = Counter()
        self._bulk_requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ plumbing
    def forward(
        self, method: str, path: str, body: bytes, headers: dict
    ) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def next_bulk_number(self) -> int:
        with self._lock:
            self._bulk_requests += 1
            return self._bulk_requests

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                if self.command == "POST" and self.path.split("?")[0].endswith("/_bulk"):
                    self._bulk(body, headers)
                    return
                status, out_headers, payload = proxy.forward(self.command, self.path, body, headers)
                self._answer(status, out_headers, payload)

            def _bulk(self, body: bytes, headers: dict) -> None:
                n = proxy.next_bulk_number()
                if proxy.drop_before_every and n % proxy.drop_before_every == 0:
                    proxy.injected["dropped_before"] += 1
                    self._drop()
                    return
                lines = [line for line in body.split(b"\n") if line.strip()]
                pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
                rejected: dict[int, int] = {}
                if proxy.reject_every and n % proxy.reject_every == 0:
                    step = max(1, round(1 / proxy.reject_fraction))
                    rejected = {i: (429 if i % 2 else 503) for i in range(0, len(pairs), step)}
                kept = [p for i, p in enumerate(pairs) if i not in rejected]
                items: list[dict] = []
                if kept:
                    forwarded = b"".join(a + b"\n" + d + b"\n" for a, d in kept)
                    status, out_headers, payload = proxy.forward(
                        "POST", self.path, forwarded, headers
                    )
                    if status != 200:
                        self._answer(status, out_headers, payload)
                        return
                    items = json.loads(payload)["items"]
                if proxy.drop_after_every and n % proxy.drop_after_every == 0:
                    proxy.injected["dropped_after"] += 1
                    self._drop()
                    return
                merged, forwarded_items = [], iter(items)
                for i, (action, _) in enumerate(pairs):
                    if i in rejected:
                        op = next(iter(json.loads(action)))
                        merged.append(
                            {
                                op: {
                                    "_id": json.loads(action)[op].get("_id"),
                                    "status": rejected[i],
                                    "error": {
                                        "type": "es_rejected_execution_exception",
                                        "reason": "injected by FaultyProxy",
                                    },
                                }
                            }
                        )
                        proxy.injected[f"rejected_{rejected[i]}"] += 1
                    else:
                        merged.append(next(forwarded_items))
                payload = json.dumps(
                    {
                        "took": 1,
                        "errors": any("error" in next(iter(m.values())) for m in merged),
                        "items": merged,
                    }
                ).encode()
                self._answer(200, {"Content-Type": "application/json"}, payload)

            def _answer(self, status: int, headers: dict, payload: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

        return Handler
