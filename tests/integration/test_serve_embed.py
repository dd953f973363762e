"""``splade-es serve`` as the model server the engines call (issue 23), as a real process with
``--api-key-file``: ``POST /_splade/embed/document|query`` answers the vectors ``splade-es
ingest`` writes into a real cluster and those a ``splade`` clause searches with, under both key
schemes and in both shapes; 401/403 without the key; 429 with ml-commons' throttling header when
the document queue is full; the metrics; and the refusal to listen beyond loopback without a
key file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from splade_es import SpladeEncoder
from splade_es.ingest import IngestConfig, ingest
from splade_es.tokens import TokenCodec
from tests.integration.corpus import document_text, make_documents
from tests.integration.serve_support import Recorded, StubServer, free_port, raw_request
from tests.vectors import assert_same_vector, assert_same_vectors

pytestmark = pytest.mark.integration

KEY, OTHER_KEY = "engine-key-5f2c9d0e", "second-key-77ab01"
QUERIES = ["depreciation tax deduction", "garlic powder", "a"]


def answer_as_elasticsearch(request: Recorded) -> tuple[int, list[tuple[str, str]], bytes]:
    """A cluster stub answering as Elasticsearch 9.1 with a ``sparse_vector`` field (token
    keys in ``query_vector``); searches are recorded by ``StubServer``."""
    if request.target == "/":
        body: dict[str, Any] = {"version": {"number": "9.1.0"}, "tagline": "You Know, for Search"}
    elif "_mapping" in request.target:
        body = {"docs": {"mappings": {"properties": {"splade": {"type": "sparse_vector"}}}}}
    elif request.target.startswith("/_cluster"):
        body = {}
    else:
        body = {"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}}
    headers = [("Content-Type", "application/json"), ("X-Elastic-Product", "Elasticsearch")]
    return 200, headers, json.dumps(body).encode()


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    cluster: StubServer


@pytest.fixture(scope="module")
def encoder(search_model_dir) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture(scope="module")
def served(search_model_dir, tmp_path_factory) -> Iterator[Served]:
    """``splade-es serve`` with two keys and a document queue of one document, in front of
    the Elasticsearch stub."""
    keys = tmp_path_factory.mktemp("keys") / "serve.keys"
    keys.write_text(f"# keys of the engines\n{KEY}\n\n{OTHER_KEY}\n")
    port = free_port()
    command = [
        sys.executable, "-m", "splade_es.cli", "serve", "--model", str(search_model_dir),
        "--listen", f"127.0.0.1:{port}", "--api-key-file", str(keys), "--enrich-queue", "1",
    ]  # fmt: skip
    with StubServer(answer_as_elasticsearch) as cluster:
        env = {**os.environ, "SPLADE_ES_URL": cluster.url}
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(process, url)
            yield Served(url, process, cluster)
        finally:
            process.send_signal(signal.SIGTERM)
            _, logs = process.communicate(timeout=60)
            assert KEY not in logs and OTHER_KEY not in logs, logs


def wait_until_up(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            status, _, body = raw_request(url, "GET", "/_splade/health")
        except OSError:
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
            continue
        assert status == 200 and json.loads(body)["model_loaded"], body
        return


def post(
    served: Served, path: str, body: Any, *, key: str | None = KEY
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    status, raw_headers, raw = raw_request(
        served.url, "POST", path, json.dumps(body).encode(), headers
    )
    return status, {k.lower(): v for k, v in raw_headers}, json.loads(raw)


def embed(served: Served, kind: str, body: Any, query: str = "") -> Any:
    status, _, answer = post(served, f"/_splade/embed/{kind}{query}", body)
    assert status == 200, answer
    return answer


# ---------------------------------------------------------------------- access
def test_the_key_is_required_health_and_metrics_stay_open(served):
    body = {"inputs": ["tax"]}
    status, headers, answer = post(served, "/_splade/embed/document", body, key=None)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert answer["error"]["type"] == "security_exception"
    status, headers, answer = post(served, "/_splade/embed/query", body, key="not-a-key")
    assert status == 403 and "www-authenticate" not in headers
    for path, other in (("/_splade/encode", {"texts": ["tax"]}), ("/embed_sparse", body)):
        assert post(served, path, other, key=None)[0] == 401
        assert post(served, path, other, key=OTHER_KEY)[0] == 200
    assert post(served, "/_splade/embed/query", body, key=OTHER_KEY)[0] == 200
    assert raw_request(served.url, "GET", "/_splade/health")[0] == 200
    assert raw_request(served.url, "GET", "/_splade/metrics")[0] == 200


def test_serve_refuses_to_listen_beyond_loopback_without_a_key_file(search_model_dir):
    command = [
        sys.executable, "-m", "splade_es.cli", "serve", "--url", "http://127.0.0.1:9",
        "--model", str(search_model_dir), "--listen", f"0.0.0.0:{free_port()}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SPLADE_ES_API_KEY_FILE"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--api-key-file" in lines[0] and "--listen" in lines[0]


# ---------------------------------------------------------------------- the vectors
def ingested(cluster, index: str, encoder: SpladeEncoder, docs: list[dict]) -> list[dict]:
    """What ``splade-es ingest`` wrote for ``docs`` into a fresh index, read back in order."""
    ingest(
        cluster.client,
        [{**d, "_id": d["id"]} for d in docs],
        encoder=encoder,
        config=IngestConfig(index=index, create=True, add_id_field=False),
    )
    cluster.client.indices.refresh(index=index)
    body = {"size": len(docs), "query": {"match_all": {}}}
    hits = cluster.client.search(index=index, body=body)["hits"]["hits"]
    stored = {hit["_id"]: hit["_source"]["splade"] for hit in hits}
    return [stored[d["id"]] for d in docs]


def test_documents_are_the_vectors_ingest_writes(served, cluster, index_name, encoder):
    docs = make_documents(40, seed=11)
    want = ingested(cluster, index_name, encoder, docs)  # token keys: a rank_features field
    texts = [document_text(d) for d in docs]
    assert_same_vectors(embed(served, "document", {"inputs": texts}), want)
    # The id scheme: the same vectors keyed by vocabulary id (OpenSearch's sparse_vector).
    codec = TokenCodec(encoder.vocab)
    by_id = [{str(codec.token_id(k)): w for k, w in vector.items()} for vector in want]
    got = embed(served, "document", {"inputs": texts}, "?key_scheme=id")
    assert_same_vectors(got, by_id)
    pairs = embed(served, "document", {"inputs": texts, "format": "pairs"})
    as_maps = [{p["token"]: p["weight"] for p in e["embedding"]} for e in pairs["embeddings"]]
    assert_same_vectors(as_maps, want)


def test_queries_are_the_vectors_a_splade_clause_searches_with(served):
    for text in QUERIES:
        search = {"query": {"splade": {"splade": text}}}
        status, _, _ = post(served, "/docs/_search", search, key=None)  # the proxy: no key
        assert status == 200
    sent = [json.loads(r.body) for r in served.cluster.requests if r.target.endswith("_search")]
    clauses = [body["query"]["sparse_vector"]["query_vector"] for body in sent[-len(QUERIES) :]]
    assert embed(served, "query", {"inputs": QUERIES}) == clauses  # the cached rows: to the bit


def test_blank_texts_and_300_inputs_in_one_call(served, encoder):
    texts = [f"{QUERIES[i % 3]} number {i}" if i % 50 else " " for i in range(300)]
    got = embed(served, "document", {"inputs": texts})
    assert len(got) == 300
    assert [i for i, vector in enumerate(got) if not vector] == list(range(0, 300, 50))
    batch = encoder.encode_documents([t for t in texts if t.strip()])
    codec = TokenCodec(encoder.vocab)
    want = [codec.encode(batch, i) for i in range(len(batch))]
    assert_same_vectors([v for v in got if v], want)
    assert embed(served, "query", {"inputs": ""}) == [{}]
    pairs = embed(served, "query", {"inputs": ["", "tax"]}, "?format=pairs")
    assert pairs["embeddings"][0] == {"embedding": []} and pairs["embeddings"][1]["embedding"]


def test_a_full_document_queue_answers_429_with_the_throttling_header(served):
    """The queue holds one document: concurrent requests of many documents cannot all be
    admitted; each refused one is a 429 that ml-commons retries, the others are answered."""
    texts = [f"{QUERIES[i % 3]} {i}" for i in range(200)]
    for _ in range(3):  # a burst whose requests happen not to overlap is tried again
        answers = burst(served, {"inputs": texts}, 6)
        refused = [a for a in answers if a[0] == 429]
        if refused:
            break
    assert refused, [a[0] for a in answers]
    assert all(status in (200, 429) for status, _, _ in answers)
    assert any(status == 200 and len(body) == 200 for status, _, body in answers)
    _, headers, body = refused[0]
    assert headers["x-amzn-errortype"] == "ThrottlingException"
    assert body["status"] == 429 and body["error"]["type"] == "es_rejected_execution_exception"


def burst(served: Served, body: Any, requests: int) -> list[tuple[int, dict[str, str], Any]]:
    """``requests`` document embed requests sent at once, from as many threads."""
    answers: list[tuple[int, dict[str, str], Any]] = []

    def one() -> None:
        answers.append(post(served, "/_splade/embed/document", body))

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == requests
    return answers


def test_metrics_per_kind(served):
    embed(served, "query", {"inputs": ["tax", " ", "law"]})
    text = raw_request(served.url, "GET", "/_splade/metrics")[2].decode()
    counts = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(("splade_es_embed_", "splade_es_request"))
    }
    assert counts['splade_es_embed_texts_total{kind="query"}'] >= 3
    assert counts['splade_es_embed_blank_texts_total{kind="query"}'] >= 1
    assert counts['splade_es_requests_total{route="embed_query",status="2xx"}'] >= 1
    assert counts['splade_es_request_seconds_count{route="embed_query"}'] >= 1


def test_the_engines_vector_keys_round_trip(served, encoder):
    """Every key of a token-scheme answer is one ``TokenCodec`` reads back to a vocabulary
    token, and the id answer names the same tokens."""
    [by_token] = embed(served, "document", {"inputs": [QUERIES[0]]})
    [by_id] = embed(served, "document", {"inputs": [QUERIES[0]], "key_scheme": "id"})
    codec = TokenCodec(encoder.vocab)
    assert_same_vector({str(codec.token_id(k)): w for k, w in by_token.items()}, by_id)
