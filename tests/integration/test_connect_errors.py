"""Connection failures: mapped to our errors, and never carrying a secret in the message.
Loopback only: a port nothing listens on."""

from __future__ import annotations

import socket

import pytest

from splade_es.connect import ConnectionConfig, connect
from splade_es.exceptions import AuthenticationError, ConnectionFailedError

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("engine", ["auto", "elasticsearch", "opensearch"])
def test_unreachable_cluster_is_a_connection_error_without_secrets(engine):
    port = closed_port()
    config = ConnectionConfig(
        hosts=(f"http://127.0.0.1:{port}",),
        username="elastic",
        password="hunter2",
        engine=engine,
        request_timeout=2,
    )
    with pytest.raises(ConnectionFailedError) as caught:
        connect(config)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value)


def test_credentials_in_the_url_are_not_echoed():
    port = closed_port()
    config = ConnectionConfig(
        hosts=(f"http://elastic:hunter2@127.0.0.1:{port}",), request_timeout=2
    )
    with pytest.raises(ConnectionFailedError) as caught:
        connect(config)
    assert "hunter2" not in str(caught.value)


def test_rejected_credentials_are_an_authentication_error():
    # A tiny loopback server that answers every request with 401, as a secured cluster does.
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (
                b'{"error":{"type":"security_exception","reason":"unable to authenticate"},'
                b'"status":401}'
            )
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = ConnectionConfig(
            hosts=(f"http://127.0.0.1:{server.server_port}",), api_key="s3cr3t", request_timeout=2
        )
        with pytest.raises(AuthenticationError, match="401") as caught:
            connect(config)
        assert "s3cr3t" not in str(caught.value)
    finally:
        server.shutdown()
