"""The engine calls splade-es (issue 23), end to end on the real OpenSearch 2.19.6 node with
ml-commons: a real ``splade-es serve`` process with an API key, ``splade_es.register`` pointing
the node at it, and then only the engine's own APIs.

- documents bulk-indexed **straight to the cluster** through the registered ingest pipeline
  store the vectors ``splade-es ingest`` stores (the engines' storage precision aside);
- ``neural_sparse`` with the registered query model returns the hits and scores of
  ``splade_es.search()``; the two-phase search pipeline the same top 10;
- the same for an inference-free checkpoint (queries through its token table);
- serve stopped during a bulk: per-document errors, no document indexed without its vector;
- serve overloaded: 429 with ml-commons' throttling header, ml-commons retries, the bulk
  completes;
- the node restarted on its data: the remote models are deployed again and searches work.

The node is this module's own (``opensearch_node.run`` with a kept home, so it can be
restarted); the module runs once, when the session's clusters include the 2.19.6 node.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch, TransportError
from opensearchpy.helpers import parallel_bulk

from splade_es import SpladeEncoder, StaticQueryEncoder
from splade_es.ingest import IngestConfig, ingest
from splade_es.register import RegisterConfig, Registration, register, unregister
from splade_es.search import create_index, search
from tests.clusters import available_specs
from tests.engines import ml_commons, opensearch_node
from tests.integration.corpus import WORDS, make_documents
from tests.integration.serve_support import free_port, raw_request
from tests.vectors import assert_same_vector

pytestmark = [pytest.mark.integration, pytest.mark.engines("opensearch")]

VERSION = "2.19.6"
API_KEY = secrets.token_urlsafe(24)  # compared, never printed
QUERIES = ["depreciation tax deduction", "garlic powder brain", "white matter imaging"]
N_DOCS = 40
FIELD = "splade"


class Serve:
    """A ``splade-es serve`` process on a fixed port (the connectors' URL), restartable."""

    def __init__(self, model: Path, keys: Path, cluster_url: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "splade_es.cli", "serve", "--model", str(model),
            "--listen", f"127.0.0.1:{self.port}", "--api-key-file", str(keys), *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "SPLADE_ES_URL": cluster_url}
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Serve:
        self.process = subprocess.Popen(
            self.command, env=self.env, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.process.communicate()[1][-3000:]
            with contextlib.suppress(OSError):
                status, _, _ = raw_request(self.url, "GET", "/_splade/metrics")
                if status == 200:
                    return self
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)

    def stop(self) -> str:
        if self.process is None:
            return ""
        self.process.send_signal(signal.SIGTERM)
        _, logs = self.process.communicate(timeout=60)
        self.process = None
        assert API_KEY not in logs, "serve logged its API key"
        return logs

    def metric(self, name: str, **labels: str) -> float:
        status, _, body = raw_request(self.url, "GET", "/_splade/metrics")
        assert status == 200
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        total = 0.0
        for line in body.decode().splitlines():
            match = re.match(rf"{name}(?:_total)?\{{([^}}]*)\}} (\S+)$", line)
            if match and all(part in match.group(1) for part in wanted.split(",")):
                total += float(match.group(2))
        return total


class Node:
    """The 2.19.6 node on a kept home: ``restart`` is the same node on its data."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._stack = contextlib.ExitStack()
        self.url = ""

    def start(self) -> Node:
        self.url = self._stack.enter_context(opensearch_node.run(VERSION, home=self.home))
        return self

    def stop(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def client(self) -> OpenSearch:
        return OpenSearch(hosts=[self.url], timeout=120)


class Stack:
    def __init__(self, node: Node, serve: Serve, model: Path, registration: Registration):
        self.node = node
        self.serve = serve
        self.model = model
        self.registration = registration

    @property
    def client(self) -> OpenSearch:
        return self.node.client

    def output(self, name: str) -> str:
        value = self.registration.outputs[name]
        assert value, self.registration.outputs
        return value


def _skip_reason() -> str | None:
    """This module starts its own node: only where the session's clusters include it."""
    nodes = [s for s in available_specs() if s.source == "node" and s.target == VERSION]
    if not nodes or nodes[0].unavailable:
        return f"this session's clusters do not include the OpenSearch {VERSION} node"
    if not opensearch_node.VERSIONS[VERSION].ml_commons:
        return f"the {VERSION} node has no ml-commons"
    return None


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "serve.keys"
    path.write_text(f"# the cluster's key\n{API_KEY}\n")
    return path


@pytest.fixture(scope="module")
def stack(
    search_model_dir: Path,
    keys: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    node = Node(tmp_path_factory.mktemp("node-home")).start()
    # A small document queue: concurrent bulks overload it (test_serve_overloaded...).
    serve = Serve(search_model_dir, keys, node.url, "--enrich-queue", "8").start()
    try:
        config = _config(serve, name="splade-es-it", two_phase=True)
        registration = register(node.client, config)
        yield Stack(node, serve, search_model_dir, registration)
        unregister(node.client, config)
    finally:
        serve.stop()
        node.stop()


def _config(serve: Serve, *, name: str, two_phase: bool = False) -> RegisterConfig:
    return RegisterConfig(
        serve_url=serve.url,
        api_key=API_KEY,
        name=name,
        text_fields=("title", "text"),
        sparse_field=FIELD,
        two_phase=two_phase,
        apply_settings=True,
    )


@pytest.fixture(scope="module")
def encoder(search_model_dir: Path) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(search_model_dir), device="cpu")


# --------------------------------------------------------------------------- helpers
def two_indices(
    client: OpenSearch, name: str, pipeline: str, encoder: Any, docs: list[dict[str, Any]]
) -> tuple[str, str]:
    """``<name>-ingest`` filled by ``splade-es ingest``; ``<name>-pipeline`` empty, with the
    registered pipeline as its default (the app then writes plain documents)."""
    by_ingest, by_pipeline = f"{name}-ingest", f"{name}-pipeline"
    for index in (by_ingest, by_pipeline):
        create_index(client, index, sparse_field=FIELD, replicas=0)
    client.indices.put_settings(index=by_pipeline, body={"index.default_pipeline": pipeline})
    config = IngestConfig(index=by_ingest, id_field="id", sparse_field=FIELD)
    report = ingest(client, docs, encoder=encoder, config=config)
    assert report.indexed == len(docs), report
    client.indices.refresh(index=by_ingest)
    return by_ingest, by_pipeline


def bulk_plain(client: OpenSearch, index: str, docs: list[dict[str, Any]]) -> list[dict]:
    """The app's bulk, straight to the cluster; the per-document answers."""
    lines = []
    for doc in docs:
        lines.append(json.dumps({"index": {"_index": index, "_id": doc["id"]}}))
        lines.append(json.dumps(doc))
    answer = client.bulk(body="\n".join(lines) + "\n", refresh=True)
    return [next(iter(item.values())) for item in answer["items"]]


def stored(client: OpenSearch, index: str) -> dict[str, dict[str, Any]]:
    hits = client.search(index=index, body={"size": 1000, "query": {"match_all": {}}})
    return {hit["_id"]: hit["_source"] for hit in hits["hits"]["hits"]}


def neural_hits(
    client: OpenSearch, index: str, text: str, model_id: str, **params: Any
) -> list[tuple[str, float]]:
    body = {"size": 10, "query": ml_commons.neural_sparse_query(FIELD, text, model_id)}
    answer = client.search(index=index, body=body, params=params)
    return [(hit["_id"], hit["_score"]) for hit in answer["hits"]["hits"]]


def assert_same_hits(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [doc for doc, _ in got] == [doc for doc, _ in expected], (got, expected)
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def ingest_pipeline_and_search_agree(stack: Stack, name: str, encoder: Any, query_encoder: Any):
    docs = make_documents(N_DOCS, seed=len(name))
    pipeline = stack.output("ingest_pipeline")
    by_ingest, by_pipeline = two_indices(stack.client, name, pipeline, encoder, docs)
    answers = bulk_plain(stack.client, by_pipeline, docs)
    assert all(a["status"] in (200, 201) for a in answers), answers
    ours, theirs = stored(stack.client, by_ingest), stored(stack.client, by_pipeline)
    assert theirs.keys() == ours.keys() == {d["id"] for d in docs}
    for doc_id, source in theirs.items():
        assert "_splade_es_text" not in source  # the pipeline's joined text is removed
        assert_same_vector(source[FIELD], ours[doc_id][FIELD], what=doc_id)
    # Each index against splade_es.search() on that same index: the two indices' vectors are
    # equal by the suite's rule (above), not to the bit (other batch shapes), and a weight
    # that lands on the other side of a 9-bit storage step would move a score by 2**-9.
    query_model = stack.output("query_model_id")
    for text in QUERIES:
        for index in (by_ingest, by_pipeline):
            expected = search(stack.client, index, text, encoder=query_encoder, field=FIELD)
            want = [(hit.id, hit.score) for hit in expected.hits]
            assert want, text
            assert_same_hits(neural_hits(stack.client, index, text, query_model), want)
    return by_ingest, by_pipeline


# --------------------------------------------------------------------------- the tests
def test_register_twice_creates_nothing_new(stack: Stack):
    again = register(stack.client, _config(stack.serve, name="splade-es-it", two_phase=True))
    assert again.outputs == stack.registration.outputs
    assert not again.requests, again.actions  # no write the second time
    assert API_KEY not in json.dumps(again.to_json())


def test_pipeline_vectors_and_neural_sparse_equal_splade_es(stack: Stack, encoder):
    ingest_pipeline_and_search_agree(stack, "plain", encoder, encoder)
    # The engine called serve: document texts through the document queue, queries apart.
    assert stack.serve.metric("splade_es_embed_texts", kind="document") >= N_DOCS
    assert stack.serve.metric("splade_es_embed_texts", kind="query") >= 1


def test_two_phase_pipeline_returns_the_same_top_10(stack: Stack, encoder):
    docs = make_documents(N_DOCS, seed=7)
    _, by_pipeline = two_indices(
        stack.client, "two-phase", stack.output("ingest_pipeline"), encoder, docs
    )
    bulk_plain(stack.client, by_pipeline, docs)
    query_model = stack.output("query_model_id")
    two_phase = stack.output("search_pipeline")
    for text in QUERIES:  # against search() on the same index: see the note above
        expected = search(stack.client, by_pipeline, text, encoder=encoder)
        want = [(h.id, h.score) for h in expected.hits]
        got = neural_hits(stack.client, by_pipeline, text, query_model, search_pipeline=two_phase)
        assert_same_hits(got, want)


def test_an_inference_free_checkpoint(stack: Stack, keys: Path, tmp_path: Path, encoder):
    """Documents through the model, queries through the checkpoint's token table."""
    folder = tmp_path / "doc-only"
    folder.mkdir()
    for item in stack.model.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    idf = {word: 0.5 + (k % 5) * 0.75 for k, word in enumerate(WORDS) if word != "the"}
    (folder / "idf.json").write_text(json.dumps(idf))
    free = Serve(folder, keys, stack.node.url).start()
    config = _config(free, name="splade-es-if")
    try:
        registration = register(stack.client, config)
        inner = Stack(stack.node, free, folder, registration)
        doc_encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
        assert doc_encoder.mode == "inference-free"
        ingest_pipeline_and_search_agree(
            inner, "free", doc_encoder, StaticQueryEncoder.from_pretrained(str(folder))
        )
        assert free.metric("splade_es_embed_texts", kind="query") >= len(QUERIES)
    finally:
        unregister(stack.client, config)
        free.stop()


def test_serve_down_fails_each_document_and_indexes_none_without_a_vector(stack: Stack, encoder):
    docs = make_documents(12, seed=3)
    index = "serve-down"
    create_index(stack.client, index, sparse_field=FIELD, replicas=0)
    stack.client.indices.put_settings(
        index=index, body={"index.default_pipeline": stack.output("ingest_pipeline")}
    )
    stack.serve.stop()
    try:
        answers = bulk_plain(stack.client, index, docs)
    finally:
        stack.serve.start()
    assert len(answers) == len(docs)
    assert all(a["status"] >= 400 and "error" in a for a in answers), answers
    stack.client.indices.refresh(index=index)
    assert stored(stack.client, index) == {}
    # serve back: the same bulk goes through, every document with its vector.
    answers = bulk_plain(stack.client, index, docs)
    assert all(a["status"] in (200, 201) for a in answers), answers
    assert all(source.get(FIELD) for source in stored(stack.client, index).values())


def test_serve_overloaded_answers_429_and_ml_commons_retries(stack: Stack):
    """serve's document queue holds 8 texts; four bulks of 20 at once overflow it."""
    index = "overload"
    create_index(stack.client, index, sparse_field=FIELD, replicas=0)
    stack.client.indices.put_settings(
        index=index, body={"index.default_pipeline": stack.output("ingest_pipeline")}
    )
    docs = make_documents(160, seed=11)
    refused_before = stack.serve.metric("splade_es_embed_rejected_requests", kind="document")
    for attempt in range(3):  # the bulks must overlap in serve; retried if they happened not to
        actions = ({"_index": index, "_id": f"{attempt}-{d['id']}", "_source": d} for d in docs)
        failures = [
            info
            for ok, info in parallel_bulk(
                stack.client, actions, thread_count=4, chunk_size=20, raise_on_error=False
            )
            if not ok
        ]
        assert failures == [], failures[:3]
        refused = stack.serve.metric("splade_es_embed_rejected_requests", kind="document")
        if refused > refused_before:
            break
    assert refused > refused_before, "serve never refused: the bulks did not overlap"
    stack.client.indices.refresh(index=index)
    sources = stored(stack.client, index)
    assert len(sources) == len(docs) * (attempt + 1)
    assert all(source.get(FIELD) for source in sources.values())


def test_node_restart_redeploys_the_models_and_searches_work(stack: Stack, encoder):
    docs = make_documents(N_DOCS, seed=5)
    by_ingest, _ = two_indices(
        stack.client, "restart", stack.output("ingest_pipeline"), encoder, docs
    )
    query_model = stack.output("query_model_id")
    expected = search(stack.client, by_ingest, QUERIES[0], encoder=encoder)
    want = [(h.id, h.score) for h in expected.hits]
    stack.node.restart()
    client = stack.client
    deadline = time.monotonic() + 120
    while True:
        states = {
            model_id: client.transport.perform_request("GET", f"/_plugins/_ml/models/{model_id}")[
                "model_state"
            ]
            for model_id in (stack.output("document_model_id"), query_model)
        }
        if set(states.values()) == {"DEPLOYED"}:
            break
        assert time.monotonic() < deadline, f"not redeployed after the restart: {states}"
        time.sleep(1)
    client.transport.perform_request("GET", "/_cluster/health", params={"wait_for_status": "green"})
    # The first predictions after a restart can fail while ml-commons reads its master key
    # back (500 "Fetching master key timed out"): the engine's own start-up, retried here as
    # an app would; what matters is that they then work without anyone re-registering.
    hits = _eventually(lambda: neural_hits(client, by_ingest, QUERIES[0], query_model))
    assert_same_hits(hits, want)
    answers = bulk_plain(client, "restart-pipeline", docs[:5])
    assert all(a["status"] in (200, 201) for a in answers), answers


def _eventually(attempt: Any, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return attempt()
        except TransportError as exc:
            if exc.status_code != 500 or time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_nothing_of_ours_is_left_after_unregister(stack: Stack):
    config = _config(stack.serve, name="splade-es-gone")
    done = register(stack.client, config)
    ids = [done.outputs["document_model_id"], done.outputs["query_model_id"]]
    unregister(stack.client, config)
    for model_id in ids:
        with pytest.raises(Exception, match=r"404|not found|NotFound"):
            stack.client.transport.perform_request("GET", f"/_plugins/_ml/models/{model_id}")
    assert "splade-es-gone-ingest" not in stack.client.ingest.get_pipeline()
    # The other registrations are untouched.
    assert stack.output("ingest_pipeline") in stack.client.ingest.get_pipeline()
