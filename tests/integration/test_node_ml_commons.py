"""ml-commons remote models on the real OpenSearch 2.19.6 node, end to end, with real requests.

A stand-in model server (stdlib ``http.server`` in a thread on 127.0.0.1) answers
``POST /_splade/embed/document|query`` the way the contract of ``splade-es serve`` says (issue 23,
format ``maps``: a JSON array with one ``{token: weight}`` per input) and records every request
ml-commons sends. Through the helpers of ``tests/engines/ml_commons.py`` the tests set the
connector cluster settings, create HTTP connectors with a credential, a model group, register and
deploy remote models, and then check what the product's ``register`` relies on:

- a ``sparse_encoding`` ingest pipeline stores, for each document of a bulk, exactly the vector
  the model server returned for its text, and the server received ``{"inputs": [texts]}`` with
  ``Authorization: Bearer <key>``;
- a ``neural_sparse`` query with the query model scores hits by the dot product;
- 429 with ``x-amzn-ErrorType: ThrottlingException`` is retried (and 429 without it is not);
- with the model server down, each document of a bulk fails and none is indexed without a vector.

The last test checks, without a cluster, how the node's flat classpath resolves the libraries
that core and the plugins ship twice (``opensearch_node.plugin_classpath``).

Wire facts are cited from ml-commons and neural-search at tag 2.19.6.0 and OpenSearch 2.19.6.
Only the 2.19.6 node has ml-commons (no 3.x opensearch-ml-plugin zip on Maven Central); other
clusters skip, saying why.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opensearchpy import OpenSearch, RequestError

from tests.clusters import ClusterSpec, TestCluster
from tests.engines import ml_commons, opensearch_node

pytestmark = [pytest.mark.integration, pytest.mark.engines("opensearch")]

# One key per run, only ever compared, never printed (assertion messages show `redacted`).
API_KEY = secrets.token_urlsafe(24)
KINDS = ("document", "query")


# --- the stand-in model server ------------------------------------------------------------


def standin_vector(kind: str, text: str) -> dict[str, float]:
    """What the stand-in model returns for one text. Weights are small dyadic fractions, exact
    in the 9 significant bits Lucene's FeatureField keeps, so stored values and scores compare
    exactly. Query weights differ from document weights: a query encoded by the document
    endpoint would give other scores."""
    words = re.findall(r"\w+", text.lower())
    if kind == "query":
        return {word: 2.0 for word in words}
    vector: dict[str, float] = {}
    for word in words:
        vector[word] = vector.get(word, 0.125 * (len(word) % 3)) + 0.25
    return vector


@dataclass(frozen=True)
class Seen:
    """One request the stand-in received."""

    path: str
    authorization: str | None
    content_type: str | None
    raw: str
    body: Any

    @property
    def inputs(self) -> list[str]:
        return list(self.body["inputs"])

    def __repr__(self) -> str:  # pytest shows this on failure: never the key
        auth = "Bearer <the key>" if self.authorization == f"Bearer {API_KEY}" else "<other>"
        return f"Seen({self.path!r}, auth={auth}, body={self.raw!r})"


class StandInModel:
    """A model server speaking the embed contract, with switchable throttling and downtime."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._throttle = 0
        self._throttle_header = True
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint_regex(self) -> str:
        """The trusted-endpoint regex for both embed URLs (a connector URL must match fully)."""
        return rf"^http://127\.0\.0\.1:{self.port}/_splade/embed/(document|query)$"

    def start(self) -> StandInModel:
        """Listen (again) on 127.0.0.1, on the same port after a ``stop``."""
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def throttle(self, times: int, *, header: bool = True) -> None:
        """Answer the next ``times`` requests 429, with or without the AWS throttling header."""
        with self._lock:
            self._throttle, self._throttle_header = times, header

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def _record(self, seen: Seen) -> tuple[int, bool]:
        """Store a request; return (429s still to give before this one, with header)."""
        with self._lock:
            self._seen.append(seen)
            throttled, header = self._throttle, self._throttle_header
            self._throttle = max(0, throttled - 1)
            return throttled, header

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        model = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, so a stopped server refuses the next one.
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                seen = Seen(
                    self.path,
                    self.headers.get("Authorization"),
                    self.headers.get("Content-Type"),
                    raw,
                    json.loads(raw),
                )
                throttled, header = model._record(seen)
                kind = self.path.rsplit("/", 1)[-1]
                if throttled:
                    headers = {"x-amzn-ErrorType": "ThrottlingException"} if header else {}
                    self._send(429, {"error": "overloaded"}, headers)
                elif self.path not in {f"/_splade/embed/{k}" for k in KINDS}:
                    self._send(404, {"error": "no such endpoint"})
                elif seen.authorization != f"Bearer {API_KEY}":
                    self._send(403, {"error": "wrong key"})
                else:
                    texts = seen.body["inputs"]
                    texts = [texts] if isinstance(texts, str) else texts
                    self._send(200, [standin_vector(kind, text) for text in texts])

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


# --- fixtures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlEnv:
    client: OpenSearch
    standin: StandInModel
    model_group_id: str
    models: dict[str, ml_commons.RemoteModel]  # by kind


def _spec_skip_reason(spec: ClusterSpec) -> str | None:
    """Why a cluster cannot run these tests, known before it is started."""
    if spec.engine == "elasticsearch" or spec.is_emulator:
        return f"{spec.name} is not a real OpenSearch cluster"
    if spec.source == "node" and not opensearch_node.VERSIONS[spec.target].ml_commons:
        return f"the OpenSearch {spec.target} node has no ml-commons (no zip on Maven Central)"
    if spec.source == "testcontainers" or (
        spec.source == "url" and urlsplit(spec.target).hostname not in ("127.0.0.1", "localhost")
    ):
        return f"{spec.name} cannot reach a model server on this machine's 127.0.0.1"
    return None


@pytest.fixture(scope="module")
def ml_env(request: pytest.FixtureRequest, _cluster_spec: ClusterSpec) -> Iterator[MlEnv]:
    """Once per cluster: the stand-in, the connector settings, a model group and a deployed
    remote model per kind (document, query); all removed, and the settings reset, afterwards."""
    reason = _spec_skip_reason(_cluster_spec)
    if reason:
        pytest.skip(reason)
    running: TestCluster = request.getfixturevalue("_running_cluster")
    if running.engine != "opensearch" or not ml_commons.available(running.client):
        pytest.skip(f"{_cluster_spec.name} has no ml-commons plugin")
    client = running.client
    standin = StandInModel().start()
    with contextlib.ExitStack() as stack:
        stack.callback(standin.stop)
        # Dynamic cluster settings, set through the API as `splade-es register` must do.
        ml_commons.allow_connector_endpoints(client, [standin.endpoint_regex], private_ip=True)
        stack.callback(ml_commons.reset_connector_endpoints, client)
        group_id = ml_commons.create_model_group(client, f"splade-es-test-{uuid.uuid4().hex[:8]}")
        stack.callback(ml_commons.delete_model_group, client, group_id)
        models = {
            kind: stack.enter_context(
                ml_commons.deployed_remote_model(
                    client,
                    f"splade-es-test-{kind}",
                    ml_commons.http_connector(
                        f"splade-es-test-{kind}",
                        f"{standin.url}/_splade/embed/{kind}",
                        API_KEY,
                        max_retry_times=5,
                        retry_backoff_millis=50,
                    ),
                    model_group_id=group_id,
                )
            )
            for kind in KINDS
        }
        yield MlEnv(client, standin, group_id, models)


@pytest.fixture
def env(cluster: TestCluster, ml_env: MlEnv) -> MlEnv:
    ml_env.standin.clear()
    ml_env.standin.throttle(0)
    return ml_env


@pytest.fixture
def sparse_index(env: MlEnv, index_name: str) -> Iterator[tuple[str, str, str]]:
    """(index, pipeline with batch_size 5, pipeline with the default batch_size) on the
    document model; ``vec`` is a ``rank_features`` field."""
    client = env.client
    client.indices.create(
        index=index_name,
        body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "properties": {"text": {"type": "text"}, "vec": {"type": "rank_features"}}
            },
        },
    )
    doc_model = env.models["document"].model_id
    batched, single = f"{index_name}-batched", f"{index_name}-single"
    bodies = {
        batched: ml_commons.sparse_encoding_pipeline(doc_model, {"text": "vec"}, batch_size=5),
        single: ml_commons.sparse_encoding_pipeline(doc_model, {"text": "vec"}),
    }
    for pipeline, body in bodies.items():
        client.ingest.put_pipeline(id=pipeline, body=body)
    yield index_name, batched, single
    for pipeline in bodies:
        client.ingest.delete_pipeline(id=pipeline)


def bulk(client: OpenSearch, index: str, pipeline: str, docs: dict[str, str]) -> dict[str, Any]:
    """Index ``{id: text}`` through ``pipeline``; return the bulk items by id.

    By id, not by position: when ingest fails documents, OpenSearch 2.19.6 appends their
    failures in the order the processor's callbacks complete
    (TransportBulkAction.BulkRequestModifier.markItemAsFailed), so the items of a bulk whose
    documents all fail come back shuffled (seen on this node)."""
    operations: list[dict[str, Any]] = []
    for doc_id, text in docs.items():
        operations += [{"index": {"_index": index, "_id": doc_id}}, {"text": text}]
    response = client.bulk(body=operations, pipeline=pipeline, refresh=True)
    items = {item["index"]["_id"]: item["index"] for item in response["items"]}
    assert len(items) == len(docs)
    return items


def stored_vectors(client: OpenSearch, index: str) -> dict[str, dict[str, float]]:
    hits = client.search(index=index, body={"size": 100, "query": {"match_all": {}}})
    return {hit["_id"]: hit["_source"].get("vec") for hit in hits["hits"]["hits"]}


DOCS = {
    "d0": "Tax deduction for property",
    "d1": "garlic powder, one ounce",
    "d2": "a \"quoted\" <b>bold</b> & a=b 'text'",
    "d3": "Ünïcödé wörds: naïve café",
    "d4": "sparse vector search engine sparse",
    "d5": "depreciation",
    "d6": "amortization of the cost of code section 179",
    "d7": "the line on the form",
    "d8": "?!",  # no word: the model returns {} for it
    "d9": "income expense income expense income",
    "d10": "tablespoon",
    "d11": "what is the search engine",
}


# --- tests ----------------------------------------------------------------------------------


def test_connector_rules_credentials_and_private_hosts(env: MlEnv) -> None:
    client, standin = env.client, env.standin
    doc_model = env.models["document"]
    # The stored connector never shows the credential (encrypted in the index, and removed
    # from GET responses).
    connector = client.transport.perform_request(
        "GET", f"{ml_commons.ML}/connectors/{doc_model.connector_id}"
    )
    assert API_KEY not in json.dumps(connector)
    assert connector["actions"][0]["headers"]["Authorization"] == "Bearer ${credential.api_key}"
    assert connector["client_config"]["max_retry_times"] == 5
    # A credential is required (MLCreateConnectorInput, ml-commons 2.19.6.0) ...
    no_credential = ml_commons.http_connector("x", f"{standin.url}/_splade/embed/query", "k")
    no_credential["credential"] = {}
    with pytest.raises(RequestError, match="credential is null or empty"):
        ml_commons.create_connector(client, no_credential)
    # ... and the URL must fully match a trusted regex (Connector.validateConnectorURL).
    untrusted = ml_commons.http_connector("x", f"{standin.url}/other", API_KEY)
    with pytest.raises(RequestError, match="not matching the trusted connector endpoint regex"):
        ml_commons.create_connector(client, untrusted)
    # 127.0.0.1 is refused at predict time unless private IPs are enabled
    # (MLHttpClientFactory.validate via HttpJsonConnectorExecutor, checked on each request).
    ml_commons.allow_connector_endpoints(client, [standin.endpoint_regex], private_ip=False)
    try:
        with pytest.raises(RequestError, match="private ip address"):
            ml_commons.predict_texts(client, doc_model.model_id, ["refused"])
    finally:
        ml_commons.allow_connector_endpoints(client, [standin.endpoint_regex], private_ip=True)
    assert standin.seen() == []
    # With both set, a text-docs predict (what neural-search sends) reaches the model and its
    # JSON array comes back wrapped as {"response": [...]}, the shape TokenWeightUtil reads.
    result = ml_commons.predict_texts(client, doc_model.model_id, ["tax code", "garlic"])
    [output] = result["inference_results"]
    assert output["output"][0]["dataAsMap"] == {
        "response": [standin_vector("document", "tax code"), standin_vector("document", "garlic")]
    }
    [seen] = standin.seen()
    assert seen.inputs == ["tax code", "garlic"]


def test_bulk_through_sparse_encoding_stores_the_model_vectors(
    env: MlEnv, sparse_index: tuple[str, str, str]
) -> None:
    client, standin = env.client, env.standin
    index, batched, single = sparse_index
    items = bulk(client, index, batched, DOCS)
    assert all(item["status"] == 201 for item in items.values()), items

    stored = stored_vectors(client, index)
    assert stored == {doc_id: standin_vector("document", text) for doc_id, text in DOCS.items()}
    assert stored["d8"] == {}  # an empty map from the model is a valid (empty) rank_features

    # What ml-commons sent: batches of the processor's batch_size in bulk order, each sorted by
    # text length (InferenceProcessor.subBatchExecute, neural-search 2.19.6.0; Java's sort is
    # stable like Python's), as {"inputs": [...]} (the default pre-process function renders
    # ${parameters.input} as a JSON array of the texts), with the decrypted key in the header.
    seen = standin.seen()
    texts = list(DOCS.values())
    expected = [sorted(texts[i : i + 5], key=len) for i in range(0, len(texts), 5)]
    assert sorted(s.inputs for s in seen) == sorted(expected)
    assert len(seen) == math.ceil(len(DOCS) / 5)
    for request in seen:
        assert request.path == "/_splade/embed/document"
        assert request.authorization == f"Bearer {API_KEY}", request
        assert request.content_type == "application/json"
        assert list(request.body) == ["inputs"] and isinstance(request.body["inputs"], list)
    # gson escapes <, >, &, = and ' as \\u003c... (valid JSON; parsed texts are unchanged).
    [html] = [s.raw for s in seen if DOCS["d2"] in s.inputs]
    assert "\\u003cb\\u003e" in html

    # Without batch_size a processor takes one document per model request
    # (AbstractBatchingProcessor.DEFAULT_BATCH_SIZE = 1, OpenSearch 2.19.6).
    standin.clear()
    more = {"s0": "income tax", "s1": "search", "s2": "garlic ounce powder"}
    assert all(i["status"] == 201 for i in bulk(client, index, single, more).values())
    assert sorted(s.inputs for s in standin.seen()) == sorted([t] for t in more.values())


def test_neural_sparse_query_scores_by_dot_product(
    env: MlEnv, sparse_index: tuple[str, str, str]
) -> None:
    client, standin = env.client, env.standin
    index, batched, _ = sparse_index
    bulk(client, index, batched, DOCS)
    standin.clear()
    text = "Search engine income tax"
    query = ml_commons.neural_sparse_query("vec", text, env.models["query"].model_id)
    response = client.search(index=index, body={"query": query, "size": 20})

    q = standin_vector("query", text)
    expected = {
        doc_id: sum(w * standin_vector("document", doc).get(t, 0.0) for t, w in q.items())
        for doc_id, doc in DOCS.items()
    }
    expected = {doc_id: score for doc_id, score in expected.items() if score > 0}
    scores = {hit["_id"]: hit["_score"] for hit in response["hits"]["hits"]}
    assert scores == pytest.approx(expected, rel=1e-6)
    assert [s.path for s in standin.seen()] == ["/_splade/embed/query"]
    [request] = standin.seen()
    assert request.body == {"inputs": [text]}
    assert request.authorization == f"Bearer {API_KEY}", request


def test_throttled_requests_are_retried(env: MlEnv, sparse_index: tuple[str, str, str]) -> None:
    client, standin = env.client, env.standin
    index, _, single = sparse_index
    # Retried only because of the header (MLSdkAsyncHttpResponseHandler.handleThrottlingInHeader
    # raises RemoteConnectorThrottlingException; RemoteConnectorExecutor.shouldRetry retries
    # only that, up to client_config.max_retry_times).
    standin.throttle(3)
    items = bulk(client, index, single, {"t0": "throttled then served"})
    assert items["t0"]["status"] == 201, items
    assert [s.inputs for s in standin.seen()] == [["throttled then served"]] * 4
    assert stored_vectors(client, index) == {
        "t0": standin_vector("document", "throttled then served")
    }

    # The same 429 without x-amzn-ErrorType fails the document at once.
    standin.clear()
    standin.throttle(1, header=False)
    items = bulk(client, index, single, {"t1": "throttled without the header"})
    assert items["t1"]["status"] == 429 and "error" in items["t1"], items
    assert len(standin.seen()) == 1
    assert set(stored_vectors(client, index)) == {"t0"}


def test_model_server_down_fails_every_document_and_indexes_none(
    env: MlEnv, sparse_index: tuple[str, str, str]
) -> None:
    client, standin = env.client, env.standin
    index, batched, single = sparse_index
    docs = {"x0": "first text", "x1": "second text", "x2": "third", "x3": "fourth"}
    standin.stop()
    try:
        for pipeline in (batched, single):
            items = bulk(client, index, pipeline, docs)
            for item in items.values():
                assert item["status"] == 500, item
                assert "Connection refused" in item["error"]["reason"]
        assert client.count(index=index)["count"] == 0
    finally:
        standin.start()  # the same port: the connectors reach it again
    items = bulk(client, index, single, docs)
    assert all(item["status"] == 201 for item in items.values()), items
    assert stored_vectors(client, index) == {
        doc_id: standin_vector("document", text) for doc_id, text in docs.items()
    }


def test_blank_text_is_refused_before_the_model(
    env: MlEnv, sparse_index: tuple[str, str, str]
) -> None:
    """neural-search refuses blank source fields itself (ProcessorDocumentUtils
    validateMapTypeValue, allowEmpty false, 2.19.6.0): a per-document 400 and no model request,
    so serve never sees the blank texts the contract answers with {}."""
    client, standin = env.client, env.standin
    index, batched, _ = sparse_index
    items = bulk(client, index, batched, {"b0": "", "b1": "   ", "b2": "not blank"})
    for doc_id in ("b0", "b1"):
        assert items[doc_id]["status"] == 400
        assert "empty string" in items[doc_id]["error"]["reason"]
    assert items["b2"]["status"] == 201
    assert [s.inputs for s in standin.seen()] == [["not blank"]]
    assert set(stored_vectors(client, index)) == {"b2"}


# --- the node's flat classpath (no cluster needed) --------------------------------------------


def _jar(folder: Path, name: str, classes: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as archive:
        for class_name, data in classes.items():
            archive.writestr(class_name, data)
    return folder / name


def test_plugin_jars_yield_to_core_then_to_the_newest_version(tmp_path: Path) -> None:
    core = [_jar(tmp_path / "m2", "commons-codec-1.18.0.jar", {"c/Codec.class": b"1.18"})]
    plugins = [
        _jar(tmp_path / "opensearch-ml", "commons-codec-1.15.jar", {"c/Codec.class": b"1.15"}),
        _jar(tmp_path / "opensearch-ml", "gson-2.11.0.jar", {"g/Gson.class": b"2.11"}),
        _jar(tmp_path / "neural-search", "gson-2.10.1.jar", {"g/Gson.class": b"2.10"}),
        _jar(tmp_path / "neural-search", "json-20231013.jar", {"j/J.class": b"same"}),
        _jar(tmp_path / "opensearch-ml", "json-20231013.jar", {"j/J.class": b"same"}),
    ]
    kept, dropped = opensearch_node.plugin_classpath(core, plugins)
    assert [f"{p.parent.name}/{p.name}" for p in kept] == [
        "neural-search/json-20231013.jar",
        "opensearch-ml/gson-2.11.0.jar",
    ]
    assert len(dropped) == 3
    assert opensearch_node.class_conflicts([*core, *kept]) == []
    # Without those rules the flat classpath would hold two different Codec and Gson classes.
    assert len(opensearch_node.class_conflicts([*core, *plugins])) == 2
