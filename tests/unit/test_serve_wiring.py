"""serve's wiring, stage by stage: the app ``create_app`` composes (routes in order, middleware,
lifespan), the API routes and the proxy route against a fake encoder and a fake upstream, and
the small stages they are made of (``route_name``, ``refused_request_line``, ``within``,
``error_response``, ``prepared_service``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from splade_es.connect import ConnectionConfig
from splade_es.exceptions import ConnectionFailedError, ModelLoadError
from splade_es.serve import create_app, lifecycle, rewrite, writes
from splade_es.serve.errors import error_response
from splade_es.serve.exchange import RequestTimeout, within
from splade_es.serve.facts import UpstreamAnswered
from splade_es.serve.metrics import Metrics
from splade_es.serve.middleware import refused_request_line
from splade_es.serve.proxy import Proxy, route_name
from splade_es.serve.service import ServeConfig, Service
from splade_es.serve.upstream import UpstreamResponse, UpstreamUnavailable
from splade_es.sparse import SparseBatch, Vocabulary

VOCAB = Vocabulary(["[PAD]", "tax", "code", "section"], special_ids={0})


class FakeEncoder:
    """An ``Encoder``: each known word of a query weighs its position in VOCAB."""

    name = "fake/encoder"
    vocab = VOCAB

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode_queries(self, texts: Sequence[str], **options: Any) -> SparseBatch:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            ids = sorted({VOCAB.index(w) for w in text.split() if w in VOCAB})
            rows.append((np.asarray(ids, np.int64), np.asarray(ids, np.float32)))
        return SparseBatch.from_rows(rows, vocab=VOCAB, truncated=np.zeros(len(texts), bool))


class FakeUpstream:
    """What the routes ask of ``Upstream``: requests recorded, answers given."""

    def __init__(self, status: int = 200, body: bytes = b'{"ok":true}') -> None:
        self.sent: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        self.answer = UpstreamResponse(status, [("content-type", "application/json")], body)
        self.reachable = True

    async def request(self, method: str, target: str, headers: Any, body: bytes = b"") -> Any:
        self.sent.append((method, target, list(headers), body))
        return self.answer

    async def get_json(self, target: str) -> Any:
        if not self.reachable:
            raise UpstreamUnavailable("cluster at http://127.0.0.1:9 is not reachable")
        return UpstreamResponse(200, [], b"{}"), {}


def config(**options: Any) -> ServeConfig:
    return ServeConfig(connection=ConnectionConfig(hosts=("http://127.0.0.1:9",)), **options)


@pytest.fixture
def app_and_upstream():
    encoder = FakeEncoder()
    app = create_app(config(), encoder=encoder)
    upstream = FakeUpstream()
    service = app.state.service
    service.upstream.request = upstream.request
    service.upstream.get_json = upstream.get_json
    with TestClient(app) as client:
        yield client, upstream, encoder


# ---------------------------------------------------------------------- the composed app
def test_create_app_routes_the_api_first_and_everything_else_to_the_proxy():
    app = create_app(config(), encoder=FakeEncoder())
    paths = [route.path for route in app.routes]
    assert paths == [
        "/_splade/health",
        "/_splade/metrics",
        "/_splade/query",
        "/_splade/encode",
        "/_splade/embed/{kind}",
        "/embed_sparse",
        "/_splade/ui",  # the relevance workbench (splade_es.workbench.ui)
        "/_splade/ui/assets/{name}",
        "/_splade/ui/settings",
        "/_splade/ui/search",
        "/_splade/ui/judge",
        "/{path:path}",
    ]
    assert [m.cls.__name__ for m in app.user_middleware] == ["RequestLine", "ClientConcurrency"]
    assert app.user_middleware[1].kwargs == {"limit": 256}
    assert isinstance(app.state.service, Service)


def test_the_lifespan_starts_and_stops_the_service(app_and_upstream):
    client, _, _ = app_and_upstream
    service = client.app.state.service
    assert service.batcher is not None  # started with the app
    answer = client.get("/_splade/health")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ok",
        "model": "fake/encoder",
        "model_loaded": True,
        "cluster": {"reachable": True, "status": 200},
    }


def test_health_is_503_when_the_cluster_does_not_answer(app_and_upstream):
    client, upstream, _ = app_and_upstream
    upstream.reachable = False
    answer = client.get("/_splade/health")
    assert answer.status_code == 503
    assert answer.json()["cluster"]["reachable"] is False
    assert "not reachable" in answer.json()["cluster"]["reason"]


def test_encode_answers_the_encoders_vectors(app_and_upstream):
    client, _, encoder = app_and_upstream
    answer = client.post("/_splade/encode", json={"texts": ["tax code", "section"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["kind"]) == ("fake/encoder", "query")
    assert [v["tokens"] for v in body["vectors"]] == [{"tax": 1.0, "code": 2.0}, {"section": 3.0}]
    assert sorted(t for call in encoder.calls for t in call) == ["section", "tax code"]


def test_encode_refuses_an_unknown_kind_in_the_clusters_error_shape(app_and_upstream):
    client, _, _ = app_and_upstream
    answer = client.post("/_splade/encode", json={"texts": ["tax"], "kind": "passage"})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "illegal_argument_exception"
    assert "[kind]" in answer.json()["error"]["reason"]


def test_embed_sparse_answers_as_tei_does(app_and_upstream):
    client, _, _ = app_and_upstream
    answer = client.post("/embed_sparse", json={"inputs": "tax code"})
    assert answer.status_code == 200
    assert answer.json() == [[{"index": 1, "value": 1.0}, {"index": 2, "value": 2.0}]]
    bad = client.post("/embed_sparse", json={"inputs": []})
    assert bad.status_code == 422
    assert bad.json()["error_type"] == "Validation" and "[inputs]" in bad.json()["error"]


def test_query_translates_for_a_named_engine(app_and_upstream):
    client, _, _ = app_and_upstream
    spec = {"text": "tax code", "engine": "opensearch", "version": "2.11.0", "field": "vec"}
    answer = client.post("/_splade/query", json=spec)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert (out["engine"], out["field_type"]) == ("opensearch", "rank_features")
    assert "vec.tax" in json.dumps(out["body"])
    assert out["body"]["size"] == 10  # the default k


def test_the_proxy_forwards_target_body_and_headers_as_they_came(app_and_upstream):
    client, upstream, _ = app_and_upstream
    answer = client.put(
        "/docs/_doc/a%2Fb?refresh=true", content=b'{"x": 1}', headers={"X-Opaque-Id": "7"}
    )
    assert answer.status_code == 200 and answer.content == b'{"ok":true}'
    [(method, target, headers, body)] = upstream.sent
    assert (method, target, body) == ("PUT", "/docs/_doc/a%2Fb?refresh=true", b'{"x": 1}')
    assert ("x-opaque-id", "7") in headers
    metrics = client.get("/_splade/metrics").text
    assert 'route="passthrough",status="2xx"' in metrics


def test_the_proxy_rewrites_a_splade_clause_before_forwarding(app_and_upstream):
    client, upstream, _ = app_and_upstream
    service = client.app.state.service
    builder = service.engine_builder("opensearch", "2.11.0", "vec", "rank_features", None)

    async def builder_for(index: str | None, field: str, authorization: str | None) -> Any:
        return builder

    service.facts.builder = builder_for
    search = {"query": {"splade": {"vec": "tax code"}}}
    answer = client.post("/docs/_search", json=search)
    assert answer.status_code == 200, answer.text
    [(method, target, _, body)] = upstream.sent
    assert (method, target) == ("POST", "/docs/_search")
    assert b"splade" not in body.replace(b"vec", b"") and b"vec.tax" in body
    assert 'route="search",status="2xx"' in client.get("/_splade/metrics").text


def test_request_lines_the_proxy_refuses_before_any_route(app_and_upstream):
    client, upstream, _ = app_and_upstream
    answer = client.request("TRACE", "/docs")
    assert answer.status_code == 405
    assert answer.json()["error"]["type"] == "illegal_argument_exception"
    assert upstream.sent == []


# ---------------------------------------------------------------------- the stages
def test_route_name():
    assert route_name(None, None) == "passthrough"
    assert route_name(None, rewrite.search_path("/docs/_msearch")) == "msearch"
    assert route_name(writes.write_path("POST", "/docs/_bulk"), None) == "write_bulk"
    # A write wins over a search path (only writes go through the enricher).
    both = (writes.write_path("POST", "/docs/_bulk"), rewrite.search_path("/docs/_search"))
    assert route_name(*both) == "write_bulk"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/docs/_search", None),
        ("OPTIONS", "/", None),
        ("CONNECT", "/", 405),
        ("TRACE", "/docs", 405),
        ("GET", "http://elsewhere/", 400),
        ("GET", "elsewhere:443", 400),
    ],
)
def test_refused_request_line(method, path, status):
    refused = refused_request_line(method, path)
    assert (refused and refused[0]) == status


def test_within_turns_its_own_deadline_into_a_request_timeout():
    async def run(seconds: float, inner: float) -> None:
        loop = asyncio.get_running_loop()
        async with within(loop.time() + seconds, seconds):
            await asyncio.sleep(inner)

    with pytest.raises(RequestTimeout, match=r"within 0\.01 s"):
        asyncio.run(run(0.01, 1))
    asyncio.run(run(1, 0))  # in time: nothing

    async def inner_timeout() -> None:
        loop = asyncio.get_running_loop()
        async with within(loop.time() + 5, 5):
            raise TimeoutError("the block's own")

    with pytest.raises(TimeoutError, match="the block's own") as raised:
        asyncio.run(inner_timeout())
    assert not isinstance(raised.value, RequestTimeout)


def test_error_response_relays_the_clusters_answer_and_hides_internal_errors(caplog):
    metrics = Metrics()
    relayed = error_response(UpstreamAnswered(UpstreamResponse(404, [], b"{}")), metrics)
    assert (relayed.status_code, relayed.body) == (404, b"{}")
    unreachable = error_response(ConnectionFailedError("no route to host"), metrics)
    assert unreachable.status_code == 502
    assert b"upstream_errors_total 1.0" in metrics.exposition().replace(b"splade_", b"")
    with caplog.at_level(logging.ERROR, logger="splade_es.serve.app"):
        internal = error_response(RuntimeError("/secret/path"), metrics)
    body = json.loads(internal.body)
    assert internal.status_code == 500 and "/secret/path" not in internal.body.decode()
    request_id = body["error"]["reason"].split("request id ")[1][:16]
    [record] = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.name == "splade_es.serve.app"


def test_prepared_service_checks_the_model_once_and_hands_over_its_layout(monkeypatch, tmp_path):
    reads: list[str] = []
    layout = SimpleNamespace(mlm_dir=tmp_path, query_files=None)

    def read_checkpoint(model: str) -> Any:
        reads.append(model)
        return layout

    monkeypatch.setattr(lifecycle, "read_checkpoint", read_checkpoint)
    service = lifecycle.prepared_service(config(model="some/model"))
    assert reads == ["some/model"] and service.layout is layout
    assert service.checkpoint_layout() is layout and reads == ["some/model"]
    # With an encoder, nothing is read.
    given = lifecycle.prepared_service(config(model="some/model"), FakeEncoder())
    assert reads == ["some/model"] and given.layout is None


def test_prepared_service_refuses_untrusted_code_before_start(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "mine.Config"}}))
    layout = SimpleNamespace(mlm_dir=tmp_path, query_files=None)
    monkeypatch.setattr(lifecycle, "read_checkpoint", lambda model: layout)
    with pytest.raises(ModelLoadError, match="trust"):
        lifecycle.prepared_service(config(model="m"))
    assert lifecycle.prepared_service(config(model="m", trust_remote_code=True)).layout is layout


def test_the_proxy_retries_a_search_once_when_its_facts_changed():
    """A 400 may mean the mapping changed behind the proxy: the facts the body used are read
    again, and the search is sent again only when they differ."""
    metrics = Metrics()
    upstream = FakeUpstream(status=400)
    signatures = iter(["after"])

    class Facts:
        def forget_index(self, index: str | None, field: str) -> Any:
            return SimpleNamespace(signature="before")

        async def facts(self, index: str | None, field: str, authorization: str | None) -> Any:
            return SimpleNamespace(signature=next(signatures, "before"))

    rewrites: list[bytes] = []

    async def rewrite_clauses(sp: Any, body: bytes, authorization: str | None) -> Any:
        rewrites.append(body)
        return b'{"rewritten": %d}' % len(rewrites), [("docs", "vec")]

    service = SimpleNamespace(
        config=config(),
        metrics=metrics,
        upstream=upstream,
        facts=Facts(),
        enricher=None,
        rewrite_clauses=rewrite_clauses,
    )
    proxy = Proxy(service)  # type: ignore[arg-type]
    out = SimpleNamespace(
        method="POST", target="/docs/_search", headers=[], body=b'{"splade": 1}', path=""
    )
    sp = rewrite.search_path("/docs/_search")
    answer = asyncio.run(proxy.search(sp, out))  # type: ignore[arg-type]
    assert answer.status == 400
    assert [body for _, _, _, body in upstream.sent] == [b'{"rewritten": 1}', b'{"rewritten": 2}']
    # Facts unchanged: no second send.
    upstream.sent.clear()
    asyncio.run(proxy.search(sp, out))  # type: ignore[arg-type]
    assert len(upstream.sent) == 1
