"""Our Elasticsearch code paths through the real elasticsearch-py client, against a recording
in-process node (no cluster): the endpoints, parameters and bodies the client sends for index
creation, bulk ingestion and point-in-time reading. The emulator used by the integration tests
speaks OpenSearch only, so this is where the Elasticsearch client calls are exercised."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import elasticsearch
import pytest
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elastic_transport._node._base import NodeApiResponse  # no public name for it

from splade_es import SpladeEncoder, create_index
from splade_es.engines import dialect_for
from splade_es.ingest import IngestConfig, ingest
from splade_es.ingest.index_source import read_index


class FakeElasticsearch:
    """A tiny Elasticsearch 9.2: indices, bulk, count, mapping, point in time."""

    def __init__(self, version: str = "9.2.0") -> None:
        self.version = version
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.indices: dict[str, dict] = {}
        self.docs: dict[str, dict[str, dict]] = {}

    def handle(self, method: str, target: str, body: bytes | None) -> tuple[int, Any]:
        url = urlsplit(target)
        path, query = url.path, parse_qs(url.query)
        payload: Any = None
        if body:
            text = body.decode()
            payload = (
                [json.loads(x) for x in text.splitlines() if x.strip()]
                if path.endswith("/_bulk")
                else json.loads(text)
            )
        self.requests.append((method, path, query, payload))
        parts = [p for p in path.split("/") if p]
        if path == "/":
            return 200, {"version": {"number": self.version, "build_flavor": "default"}}
        if path == "/_bulk":
            items = []
            for action, source in zip(payload[::2], payload[1::2], strict=True):
                meta = action["index"]
                self.docs[meta["_index"]][meta["_id"]] = source
                items.append({"index": {"_id": meta["_id"], "status": 201}})
            return 200, {"errors": False, "items": items}
        if method == "HEAD" and len(parts) == 1:
            return (200 if parts[0] in self.indices else 404), None
        if method == "PUT" and len(parts) == 1:
            self.indices[parts[0]] = payload
            self.docs[parts[0]] = {}
            return 200, {"acknowledged": True}
        if parts[-1:] == ["_mapping"]:
            return 200, {parts[0]: {"mappings": self.indices[parts[0]]["mappings"]}}
        if parts[-1:] == ["_pit"] and method == "POST":
            return 200, {"id": f"pit-{parts[0]}"}
        if path == "/_pit" and method == "DELETE":
            return 200, {"succeeded": True, "num_freed": 1}
        if path == "/_search" and payload and "pit" in payload:
            index = payload["pit"]["id"].removeprefix("pit-")
            ids = sorted(self.docs[index])
            start = payload.get("search_after", [-1])[0] + 1
            page = ids[start : start + payload["size"]]
            hits = [
                {"_id": i, "_source": self.docs[index][i], "sort": [ids.index(i)]} for i in page
            ]
            return 200, {"pit_id": payload["pit"]["id"], "hits": {"hits": hits}}
        raise AssertionError(f"unexpected request {method} {target}")


@pytest.fixture
def fake_es():
    fake = FakeElasticsearch()

    class Node(BaseNode):
        def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
            status, payload = fake.handle(method, target, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            response_headers = HttpHeaders(
                {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}
            )
            meta = ApiResponseMeta(status, "1.1", response_headers, 0.0, self.config)
            return NodeApiResponse(meta, data)

    client = elasticsearch.Elasticsearch("http://fake:9200", node_class=Node)
    return fake, client


def test_create_index_sends_the_version_adjusted_template(fake_es):
    fake, client = fake_es
    create_index(client, "docs", field_type="sparse_vector", replicas=0)
    method, path, _, body = fake.requests[-1]
    assert (method, path) == ("PUT", "/docs")
    assert body["mappings"]["properties"]["splade"] == {
        "type": "sparse_vector",
        "index_options": {"prune": False},
    }
    assert body["settings"]["index.mapping.exclude_source_vectors"] is False


def test_ingest_bulk_requests_carry_ids_and_vectors(fake_es, tiny_bert_dir):
    fake, client = fake_es
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir))
    docs = [{"_id": f"d{i}", "title": "tax", "text": f"code section {i}"} for i in range(7)]
    report = ingest(
        client, docs, encoder=encoder, config=IngestConfig(index="docs", create=True, bulk_docs=3)
    )
    assert report.indexed == 7
    bulks = [r for r in fake.requests if r[1] == "/_bulk"]
    assert [len(r[3]) // 2 for r in bulks] == [3, 3, 1]
    action, source = bulks[0][3][0], bulks[0][3][1]
    assert action == {"index": {"_index": "docs", "_id": "d0"}}
    assert source["id"] == "d0" and source["splade"] and "_id" not in source


def test_point_in_time_reader_pages_with_search_after_and_closes(fake_es):
    fake, client = fake_es
    fake.indices["src"] = {"mappings": {}}
    fake.docs["src"] = {f"d{i:02d}": {"title": f"t{i}"} for i in range(25)}
    dialect = dialect_for("elasticsearch", "9.2.0")
    records = list(read_index(client, "src", dialect=dialect, page_size=10))
    assert [r.doc["_id"] for r in records] == sorted(fake.docs["src"])
    assert [r.position for r in records] == list(range(1, 26))
    opened = next(r for r in fake.requests if r[1] == "/src/_pit")
    assert opened[0] == "POST" and opened[2]["keep_alive"] == ["5m"]
    searches = [r[3] for r in fake.requests if r[1] == "/_search"]
    assert all(s["sort"] == ["_shard_doc"] and s["pit"]["id"] == "pit-src" for s in searches)
    assert [s.get("search_after") for s in searches] == [None, [9], [19], [24]]
    closed = fake.requests[-1]
    assert closed[:2] == ("DELETE", "/_pit") and closed[3] == {"id": "pit-src"}
