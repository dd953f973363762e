"""serve's per-client limit (issue 28): one client address cannot hold more than
``max_client_requests`` requests in flight; others, health and metrics are unaffected."""

from __future__ import annotations

import asyncio
import json

import pytest

from splade_es.connect import ConnectionConfig
from splade_es.exceptions import ConfigurationError
from splade_es.serve.app import ClientConcurrency
from splade_es.serve.service import ServeConfig


class HeldApp:
    """An ASGI app whose requests wait until ``release`` is set, then answer 200."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def call(app, client: str, path: str = "/docs/_search") -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "client": (client, 50000),
        "headers": [],
    }
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_one_client_over_its_limit_gets_429_while_others_pass():
    async def scenario():
        inner = HeldApp()
        app = ClientConcurrency(inner, limit=2)
        held = [asyncio.create_task(call(app, "10.0.0.1")) for _ in range(2)]
        while inner.entered < 2:
            await asyncio.sleep(0)
        refused = await call(app, "10.0.0.1")
        other = asyncio.create_task(call(app, "10.0.0.2"))
        health = asyncio.create_task(call(app, "10.0.0.1", "/_splade/health"))
        while inner.entered < 4:
            await asyncio.sleep(0)
        inner.release.set()
        done = await asyncio.gather(*held, other, health)
        after = await call(app, "10.0.0.1")  # slots are given back when requests end
        return refused, done, after, app.in_flight

    refused, done, after, in_flight = asyncio.run(scenario())
    status, body = refused
    assert status == 429
    error = json.loads(body)["error"]
    assert error["type"] == "es_rejected_execution_exception"
    assert "10.0.0.1" in error["reason"] and "--max-client-requests" in error["reason"]
    assert [s for s, _ in done] == [200, 200, 200, 200]
    assert after[0] == 200 and in_flight == {}


def test_no_limit_counts_nothing():
    async def scenario():
        inner = HeldApp()
        inner.release.set()
        app = ClientConcurrency(inner, limit=None)
        return await asyncio.gather(*(call(app, "10.0.0.1") for _ in range(50))), app.in_flight

    answers, in_flight = asyncio.run(scenario())
    assert {s for s, _ in answers} == {200} and in_flight == {}


def test_the_limit_is_checked_when_configured():
    with pytest.raises(ConfigurationError, match="max_client_requests"):
        ServeConfig(
            connection=ConnectionConfig(hosts=("http://127.0.0.1:9",)), max_client_requests=0
        )
