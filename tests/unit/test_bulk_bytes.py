"""Bulk actions are serialized once: the bytes ``make_action`` computes are the bytes each
client sends, on the first try and on every retry (elasticsearch-py and opensearch-py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import elasticsearch
import opensearchpy
import pytest
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elastic_transport._node._base import NodeApiResponse  # no public name for it

from splade_es.ingest import bulk
from splade_es.ingest.bulk import (
    RetryPolicy,
    bulk_body,
    make_action,
    ndjson_body,
    request_body,
    send_bulk,
)

NO_WAIT = RetryPolicy(max_retries=3, initial_backoff=0.0, max_backoff=0.0, jitter=0.0)


class BulkEndpoint:
    """The ``_bulk`` endpoint of a fake cluster: records each request body as sent (bytes),
    and answers each item with the status its attempt's script gives its id (default 201)."""

    def __init__(self, script: list[dict[str, int]]) -> None:
        self.script = list(script)
        self.bodies: list[bytes] = []

    def answer(self, body: bytes) -> dict[str, Any]:
        self.bodies.append(body)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        statuses = self.script.pop(0) if self.script else {}
        items = []
        for action in lines[::2]:
            doc_id = action["index"]["_id"]
            status = statuses.get(doc_id, 201)
            item: dict[str, Any] = {"_id": doc_id, "status": status}
            if status >= 300:
                item["error"] = {"type": "es_rejected_execution_exception", "reason": "busy"}
            items.append({"index": item})
        return {"errors": any(s >= 300 for s in statuses.values()), "items": items}


def elasticsearch_client(endpoint: BulkEndpoint) -> elasticsearch.Elasticsearch:
    class Node(BaseNode):
        def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
            assert target.startswith("/_bulk"), target
            data = json.dumps(endpoint.answer(body)).encode()
            response_headers = HttpHeaders(
                {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}
            )
            meta = ApiResponseMeta(200, "1.1", response_headers, 0.0, self.config)
            return NodeApiResponse(meta, data)

    return elasticsearch.Elasticsearch("http://fake:9200", node_class=Node)


def opensearch_client(endpoint: BulkEndpoint) -> opensearchpy.OpenSearch:
    class Connection(opensearchpy.Connection):
        def perform_request(
            self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None
        ):
            assert url.startswith("/_bulk"), url
            sent = body if isinstance(body, bytes) else body.encode()
            return 200, {"content-type": "application/json"}, json.dumps(endpoint.answer(sent))

    return opensearchpy.OpenSearch([{"host": "fake", "port": 9200}], connection_class=Connection)


CLIENTS: dict[str, Callable[[BulkEndpoint], Any]] = {
    "elasticsearch": elasticsearch_client,
    "opensearch": opensearch_client,
}


def actions():
    docs = {"a": "tax", "b": 'café ☕ "quoted"', "c": "code"}
    return [
        make_action(i, doc_id, {"text": text, "splade": {"tax": 1.5, "##é": 0.25}})
        for i, (doc_id, text) in enumerate(docs.items(), start=1)
    ]


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_the_bytes_computed_once_are_the_bytes_sent_and_resent(kind):
    endpoint = BulkEndpoint([{"b": 429, "c": 503}, {"c": 429}, {}])
    client = CLIENTS[kind](endpoint)
    sent = actions()
    outcome = send_bulk(client, "ix", sent, policy=NO_WAIT, sleep=lambda s: None)
    assert sorted(a.doc_id for a in outcome.indexed) == ["a", "b", "c"]
    assert outcome.retried_items == 3
    a, b, c = sent
    line = {x.doc_id: b'{"index":{"_index":"ix","_id":"%s"}}\n' % x.doc_id.encode() for x in sent}
    assert endpoint.bodies == [
        line["a"]
        + a.encoded
        + b"\n"
        + line["b"]
        + b.encoded
        + b"\n"
        + line["c"]
        + c.encoded
        + b"\n",
        line["b"] + b.encoded + b"\n" + line["c"] + c.encoded + b"\n",
        line["c"] + c.encoded + b"\n",
    ]
    # The bytes sent are the documents: the same JSON the dict form would have been.
    lines = [json.loads(x) for x in endpoint.bodies[0].splitlines()]
    assert lines == bulk_body("ix", sent)


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_no_source_is_serialized_again_on_send_or_retry(kind, monkeypatch):
    sent = actions()
    sources = {id(a.source) for a in sent} | {id(a.source["splade"]) for a in sent}
    serialized_again = []
    real_dumps = json.dumps

    def counting_dumps(value: Any, *args: Any, **kwargs: Any) -> str:
        if id(value) in sources:
            serialized_again.append(value)
        return real_dumps(value, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", counting_dumps)
    endpoint = BulkEndpoint([{"a": 429, "b": 429, "c": 429}, {"a": 503}, {}])
    outcome = send_bulk(CLIENTS[kind](endpoint), "ix", sent, policy=NO_WAIT, sleep=lambda s: None)
    assert len(outcome.indexed) == 3 and len(endpoint.bodies) == 3
    assert serialized_again == []


def test_make_action_serializes_the_source_once(monkeypatch):
    calls = []
    real_encode = bulk._JSON.encode  # to_json's encoder: json.dumps's, built once
    monkeypatch.setattr(bulk._JSON, "encode", lambda v: calls.append(v) or real_encode(v))
    source = {"text": "x", "splade": {"a": 1.0}}
    action = make_action(1, "d1", source)
    assert calls.count(source) == 1
    assert action.encoded == b'{"text":"x","splade":{"a":1.0}}' and action.encoded_id == b'"d1"'


def test_the_ndjson_body_escapes_ids_and_index_names_as_json():
    body = ndjson_body('i"x', [make_action(1, 'a"\\b', {"t": "é"})])
    assert [json.loads(x) for x in body.splitlines()] == bulk_body(
        'i"x', [make_action(1, 'a"\\b', {"t": "é"})]
    )
    assert body.endswith(b"\n") and "é".encode() in body


def test_other_clients_get_the_documents_as_dicts():
    class Double:
        def bulk(self, body):  # pragma: no cover - never called here
            raise AssertionError

    sent = actions()
    assert request_body(Double(), "ix", sent) == bulk_body("ix", sent)
    assert isinstance(request_body(elasticsearch_client(BulkEndpoint([])), "ix", sent), bytes)
    assert isinstance(request_body(opensearch_client(BulkEndpoint([])), "ix", sent), bytes)
    assert set(bulk.NDJSON_CLIENTS) == {elasticsearch.Elasticsearch, opensearchpy.OpenSearch}


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_a_request_refused_whole_with_a_retryable_status_is_resent_whole(kind, monkeypatch):
    endpoint = BulkEndpoint([])
    client = CLIENTS[kind](endpoint)
    error = (
        elasticsearch.ApiError(
            "busy", ApiResponseMeta(503, "1.1", HttpHeaders(), 0.0, None), {"error": "busy"}
        )
        if kind == "elasticsearch"
        else opensearchpy.TransportError(503, "busy", {})
    )
    calls = {"n": 0}
    real_bulk = client.bulk

    def bulk_failing_once(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise error
        return real_bulk(**kwargs)

    monkeypatch.setattr(client, "bulk", bulk_failing_once)
    outcome = send_bulk(client, "ix", actions(), policy=NO_WAIT, sleep=lambda s: None)
    assert len(outcome.indexed) == 3 and outcome.retried_items == 3 and calls["n"] == 2


def test_a_whole_request_failing_until_the_end_keeps_its_status_and_reason():
    class Busy:
        def bulk(self, body):
            raise opensearchpy.TransportError(503, "cluster busy", {})

    outcome = send_bulk(Busy(), "ix", actions()[:1], policy=NO_WAIT, sleep=lambda s: None)
    assert outcome.indexed == [] and outcome.failed[0].status == 503
    assert outcome.failed[0].reason.startswith("gave up after 3 retries: bulk request failed")


def test_a_request_error_no_retry_can_fix_is_raised():
    class Refusing:
        def __init__(self) -> None:
            self.calls = 0

        def bulk(self, body):
            self.calls += 1
            raise opensearchpy.TransportError(400, "bad request", {})

    client = Refusing()
    with pytest.raises(opensearchpy.TransportError):
        send_bulk(client, "ix", actions(), policy=NO_WAIT, sleep=lambda s: None)
    assert client.calls == 1
