"""``splade-es serve`` as a command: it starts, answers, and shuts down cleanly on SIGTERM
(graceful shutdown), without printing the credentials it was given."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.serve_support import free_port, raw_request

pytestmark = pytest.mark.integration


def test_serve_command_starts_answers_and_stops_on_sigterm(cluster, search_model_dir):
    port = free_port()
    env = {**os.environ, "SPLADE_ES_PASSWORD": "hunter2-secret"}
    command = [
        sys.executable, "-m", "splade_es.cli", "serve", "--url", cluster.url,
        "--user", "someone", "--model", str(search_model_dir),
        "--listen", f"127.0.0.1:{port}", "--max-batch", "8",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                status, _, body = raw_request(url, "GET", "/_splade/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        assert status == 200 and json.loads(body)["model_loaded"]
        status, _, body = raw_request(
            url,
            "POST",
            "/_splade/encode",
            json.dumps({"texts": ["tax law"]}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200 and json.loads(body)["vectors"][0]["tokens"]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    logs = (out + err).decode()
    # uvicorn finishes in-flight requests and the lifespan shutdown, then re-raises SIGTERM
    # so that the exit status says how the process ended.
    assert process.returncode in (0, -signal.SIGTERM), logs
    assert "Application shutdown complete" in logs
    assert "GET /_splade/health -> 200" in logs  # the access log
    assert "hunter2" not in logs
    assert "splade-es serve on http://127.0.0.1" in logs
