"""``POST /_splade/embed/document|query`` (issue 23): the request rules and answer shapes
(``serve/embed.py``, pure), and the endpoint on an app with a tiny random-weight model, whose
vectors must be those ``splade-es ingest`` writes (documents) and a ``splade`` clause searches
with (queries), under both key schemes; blank texts, 300 inputs, the limits, a full document
queue (429 with ml-commons' throttling header) and the metrics."""

from __future__ import annotations

import asyncio
import doctest
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import splade_es.serve.embed as embed
from splade_es import SpladeEncoder, defaults
from splade_es.connect import ConnectionConfig
from splade_es.encoding.static_query import StaticQueryEncoder
from splade_es.ingest.sources import Prepared
from splade_es.ingest.stages import encoded_windows, window_actions
from splade_es.serve import create_app
from splade_es.serve.embed import EmbedRequest, EmbedRequestError, answer_body, parse_embed_request
from splade_es.serve.middleware import ClientConcurrency
from splade_es.serve.service import ServeConfig
from splade_es.serve.upstream import UpstreamResponse
from splade_es.tokens import TokenCodec
from tests.vectors import assert_same_vectors

TEXTS = [
    "Section 179 depreciation deduction: the cost of property as an expense.",
    "garlic powder, ounce; tablespoon!",
    "a",
    "the search engine indexes a sparse vector for each document in the cluster " * 3,
    "what code section is depreciation",
]


# ---------------------------------------------------------------------- the request (pure)
def test_inputs_may_be_a_list_or_one_string_and_the_options_default():
    assert parse_embed_request({"inputs": ["a", "b"]}) == EmbedRequest(("a", "b"), "maps", "token")
    assert parse_embed_request({"inputs": "one"}).texts == ("one",)
    assert parse_embed_request({"inputs": []}).texts == ()


def test_options_come_from_the_body_or_the_query_string():
    body = {"inputs": ["a"], "format": "pairs", "key_scheme": "id"}
    assert parse_embed_request(body) == EmbedRequest(("a",), "pairs", "id")
    params = [("format", "pairs"), ("key_scheme", "id")]
    assert parse_embed_request({"inputs": ["a"]}, params) == EmbedRequest(("a",), "pairs", "id")
    # The same value twice is no conflict.
    assert parse_embed_request(body, params).format == "pairs"


@pytest.mark.parametrize(
    ("body", "params", "names"),
    [
        ({}, [], ["[inputs] is required"]),
        ({"texts": ["a"]}, [], ["[inputs] is required"]),
        ({"inputs": 3}, [], ["[inputs] must be a list of strings or a string, got 3"]),
        ({"inputs": {"a": 1}}, [], ["[inputs] must be a list", '{"a": 1}']),
        ({"inputs": ["a", "b", None]}, [], ["[inputs][2] must be a string, got null"]),
        ({"inputs": ["a", 7]}, [], ["[inputs][1] must be a string, got 7"]),
        (
            {"inputs": ["a"], "format": "dict"},
            [],
            ["[format] must be one of maps, pairs", "'dict'"],
        ),
        ({"inputs": ["a"], "format": 1}, [], ["[format] must be a string, got 1"]),
        ({"inputs": ["a"]}, [("key_scheme", "ids")], ["[key_scheme] must be one of token, id"]),
        (
            {"inputs": ["a"], "format": "maps"},
            [("format", "pairs")],
            ["[format] is 'maps' in the body but 'pairs' in the query string"],
        ),
        (
            {"inputs": ["a"]},
            [("key_scheme", "id"), ("key_scheme", "token")],
            ["[key_scheme] is given several values", "'id'", "'token'"],
        ),
    ],
)
def test_a_bad_request_names_the_field_and_position(body, params, names):
    with pytest.raises(EmbedRequestError) as info:
        parse_embed_request(body, params)
    for name in names:
        assert name in str(info.value)


def test_blank_texts_are_not_encoded_and_answer_an_empty_vector():
    request = parse_embed_request({"inputs": ["tax", "", "  \n\t", "law"]})
    assert request.to_encode == [0, 3]
    vectors = request.vectors([{"tax": 1.0}, {"law": 2.0}])
    assert vectors == [{"tax": 1.0}, {}, {}, {"law": 2.0}]
    with pytest.raises(ValueError, match="2 texts to encode but 1 vectors"):
        request.vectors([{"tax": 1.0}])


def test_answer_shapes():
    vectors = [{"tax": 1.5, "law": 0.25}, {}]
    assert answer_body(vectors, "maps") == [{"tax": 1.5, "law": 0.25}, {}]
    assert answer_body(vectors, "pairs") == {
        "embeddings": [
            {"embedding": [{"token": "tax", "weight": 1.5}, {"token": "law", "weight": 0.25}]},
            {"embedding": []},
        ]
    }


def test_module_docstring_examples_run():
    result = doctest.testmod(embed)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- the endpoint
class Cluster:
    """What the app asks of the upstream for a search with a ``splade`` clause: the engine's
    info, the index mapping and settings answered, each search body recorded."""

    def __init__(self, engine: str, version: str, field_type: str) -> None:
        self.info = {"version": {"number": version}, "tagline": "You Know, for Search"}
        if engine == "opensearch":
            self.info["version"]["distribution"] = "opensearch"
        self.mapping = {"docs": {"mappings": {"properties": {"splade": {"type": field_type}}}}}
        self.searches: list[dict[str, Any]] = []

    async def get_json(self, target: str, authorization: str | None = None) -> Any:
        body = self.info if target == "/" else self.mapping if "_mapping" in target else {}
        return UpstreamResponse(200, [], json.dumps(body).encode()), body

    async def request(self, method: str, target: str, headers: Any, body: bytes = b"") -> Any:
        self.searches.append(json.loads(body))
        answer = {"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}}
        headers = [("content-type", "application/json")]
        return UpstreamResponse(200, headers, json.dumps(answer).encode())


def config(**options: Any) -> ServeConfig:
    return ServeConfig(connection=ConnectionConfig(hosts=("http://127.0.0.1:9",)), **options)


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir: Path) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(tiny_bert_dir))


@pytest.fixture
def client(encoder: SpladeEncoder) -> Iterator[TestClient]:
    with TestClient(create_app(config(), encoder=encoder)) as test_client:
        yield test_client


def ingested(encoder: SpladeEncoder, texts: list[str], scheme: str) -> list[dict[str, float]]:
    """The sparse field of each document as ``splade-es ingest`` sends it: its encoding and
    bulk stages (``encoded_windows``, ``window_actions``), its codec, its JSON."""
    prepared = [Prepared(i, f"doc-{i}", text, {}) for i, text in enumerate(texts)]
    windows = encoded_windows(prepared, encoder, batch_size=defaults.BATCH_SIZE)
    codec = TokenCodec(encoder.vocab, scheme=scheme)
    actions = window_actions(windows, codec, sparse_field="splade", encoded=lambda n: None)
    return [json.loads(action.encoded)["splade"] for action in actions]


def embedded(client: TestClient, kind: str, body: Any, **params: str) -> Any:
    answer = client.post(f"/_splade/embed/{kind}", json=body, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("scheme", ["token", "id"])
def test_documents_get_the_vectors_ingest_writes(client, encoder, scheme):
    got = embedded(client, "document", {"inputs": TEXTS, "key_scheme": scheme})
    want = ingested(encoder, TEXTS, scheme)
    assert_same_vectors(got, want)
    assert all(got)
    if scheme == "id":
        assert all(key.isdigit() for vector in got for key in vector)
    else:
        assert any(not key.isdigit() for vector in got for key in vector)


@pytest.mark.parametrize(
    ("engine", "version", "field_type", "scheme"),
    [
        ("elasticsearch", "9.1.0", "sparse_vector", "token"),  # query_vector, token keys
        ("opensearch", "3.3.0", "sparse_vector", "id"),  # neural_sparse query_tokens, ids
    ],
)
def test_queries_get_the_vector_a_splade_clause_searches_with(
    encoder, engine, version, field_type, scheme
):
    cluster = Cluster(engine, version, field_type)
    app = create_app(config(), encoder=encoder)
    app.state.service.upstream.get_json = cluster.get_json
    app.state.service.upstream.request = cluster.request
    queries = TEXTS[1:3] + TEXTS[4:]
    with TestClient(app) as client:
        for text in queries:
            body = {"query": {"splade": {"splade": text}}}
            assert client.post("/docs/_search", json=body).status_code == 200
        got = embedded(client, "query", {"inputs": queries}, key_scheme=scheme)
        metrics = client.get("/_splade/metrics").text
    sent = [search["query"] for search in cluster.searches]
    if engine == "elasticsearch":
        want = [query["sparse_vector"]["query_vector"] for query in sent]
    else:
        want = [query["neural_sparse"]["splade"]["query_tokens"] for query in sent]
    assert got == want  # the same vector to the bit: the query batcher's cached rows
    # The embed request was answered from the cache the searches filled.
    assert f"splade_es_query_cache_hits_total {float(len(queries))}" in metrics


def test_pairs_and_blank_texts(client, encoder):
    texts = ["tax law", "", "   ", "garlic powder"]
    maps = embedded(client, "document", {"inputs": texts})
    assert maps[1] == {} and maps[2] == {} and maps[0] and maps[3]
    assert_same_vectors([maps[0], maps[3]], ingested(encoder, [texts[0], texts[3]], "token"))
    pairs = embedded(client, "document", {"inputs": texts}, format="pairs")
    assert [
        {item["token"]: item["weight"] for item in entry["embedding"]}
        for entry in pairs["embeddings"]
    ] == maps
    assert pairs["embeddings"][1] == {"embedding": []}
    assert embedded(client, "query", {"inputs": ["", " "]}) == [{}, {}]
    assert_same_vectors(embedded(client, "document", {"inputs": "tax law"}), [maps[0]])


def test_300_inputs_in_one_call(client, encoder):
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(300)]
    got = embedded(client, "document", {"inputs": texts}, key_scheme="id")
    assert len(got) == 300
    assert_same_vectors(got, ingested(encoder, texts, "id"))
    queries = embedded(client, "query", {"inputs": texts})
    assert len(queries) == 300 and all(queries)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"[1, 2]", 400, "expected a JSON object"),
        (b'{"input": ["a"]}', 400, "[inputs] is required"),
        (b'{"inputs": ["a", {"text": "b"}]}', 400, "[inputs][1] must be a string"),
        (b'{"inputs": ["a"], "format": "csv"}', 400, "[format] must be one of maps, pairs"),
        (b'{"inputs": ["a"], "key_scheme": "tokens"}', 400, "[key_scheme] must be one of"),
    ],
)
def test_bad_requests_are_400_in_the_clusters_error_shape(client, body, status, reason):
    answer = client.post("/_splade/embed/document", content=body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert reason in error["reason"]
    assert error["root_cause"][0]["reason"] == error["reason"]


def test_an_unknown_kind_is_400(client):
    answer = client.post("/_splade/embed/passage", json={"inputs": ["a"]})
    assert answer.status_code == 400
    assert "unknown embedding kind [passage]" in answer.json()["error"]["reason"]
    assert client.post("/_splade/embed/query?format=maps", json={"inputs": []}).json() == []


def test_the_text_limits_apply(encoder):
    app = create_app(config(max_texts=3, max_text_chars=20), encoder=encoder)
    with TestClient(app) as client:
        answer = client.post("/_splade/embed/document", json={"inputs": ["a"] * 4})
        assert answer.status_code == 400
        assert "4 inputs" in answer.json()["error"]["reason"]
        assert "--max-texts" in answer.json()["error"]["reason"]
        answer = client.post("/_splade/embed/query", json={"inputs": ["x" * 21]})
        assert answer.status_code == 400 and "--max-text-chars" in answer.json()["error"]["reason"]
        assert client.post("/_splade/embed/query", json={"inputs": ["a"] * 3}).status_code == 200


def test_a_full_document_queue_is_429_with_the_throttling_header(encoder):
    app = create_app(config(max_queued_documents=2), encoder=encoder)
    service = app.state.service
    entered, release = threading.Event(), threading.Event()
    encode = service.encode_documents

    def held(*args: Any, **options: Any) -> Any:  # on the model thread
        entered.set()
        assert release.wait(30)
        return encode(*args, **options)

    service.encode_documents = held
    with TestClient(app) as client:
        first: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: first.update(
                answer=client.post("/_splade/embed/document", json={"inputs": ["tax", "law"]})
            )
        )
        thread.start()
        assert entered.wait(30)
        refused = client.post("/_splade/embed/document", json={"inputs": ["garlic"]})
        release.set()
        thread.join(30)
        after = client.post("/_splade/embed/document", json={"inputs": ["garlic"]})
        metrics = client.get("/_splade/metrics").text
    assert refused.status_code == 429
    assert refused.headers["x-amzn-ErrorType"] == "ThrottlingException"
    error = refused.json()["error"]
    assert error["type"] == "es_rejected_execution_exception"
    assert "waiting to be encoded" in error["reason"] and refused.json()["status"] == 429
    assert first["answer"].status_code == 200 and len(first["answer"].json()) == 2
    assert after.status_code == 200
    assert 'splade_es_embed_rejected_requests_total{kind="document"} 1.0' in metrics


def test_metrics_per_kind(client):
    embedded(client, "document", {"inputs": ["tax", "", "law"]})
    embedded(client, "document", {"inputs": ["garlic"]})
    embedded(client, "query", {"inputs": ["tax"]})
    client.post("/_splade/embed/query", json={"inputs": [1]})
    metrics = client.get("/_splade/metrics").text
    assert 'splade_es_embed_texts_total{kind="document"} 4.0' in metrics
    assert 'splade_es_embed_texts_total{kind="query"} 1.0' in metrics
    assert 'splade_es_embed_blank_texts_total{kind="document"} 1.0' in metrics
    assert 'splade_es_requests_total{route="embed_document",status="2xx"} 2.0' in metrics
    assert 'splade_es_requests_total{route="embed_query",status="2xx"} 1.0' in metrics
    assert 'splade_es_requests_total{route="embed_query",status="4xx"} 1.0' in metrics
    assert 'splade_es_request_seconds_count{route="embed_document"} 2.0' in metrics
    assert "splade_es_enrich_encode_seconds_count" in metrics  # the document queue's batches


def test_a_client_over_its_limit_on_the_embed_path_gets_the_throttling_header():
    async def scenario() -> list[tuple[int, dict[str, str]]]:
        release = asyncio.Event()

        async def held(scope, receive, send) -> None:
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"[]"})

        app = ClientConcurrency(held, limit=1)
        waiting = asyncio.create_task(call(app, "/_splade/embed/document"))
        await asyncio.sleep(0.01)
        refused = [await call(app, "/_splade/embed/document"), await call(app, "/docs/_search")]
        release.set()
        await waiting
        return refused

    (embed_status, embed_headers), (search_status, search_headers) = asyncio.run(scenario())
    assert embed_status == search_status == 429
    assert embed_headers["x-amzn-errortype"] == "ThrottlingException"
    assert "x-amzn-errortype" not in search_headers  # other paths answer as before


async def call(app: Any, path: str) -> tuple[int, dict[str, str]]:
    scope = {"type": "http", "method": "POST", "path": path, "client": ("10.0.0.1", 5000)}
    scope["headers"] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


# ---------------------------------------------------------------------- inference-free
@pytest.fixture(scope="module")
def inference_free_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OpenSearch's document-only layout: the tiny masked LM plus an idf.json table."""
    folder = tmp_path_factory.mktemp("embed-inference-free")
    for item in tiny_bert_dir.iterdir():
        shutil.copy(item, folder / item.name)
    vocab = (tiny_bert_dir / "vocab.txt").read_text().split()
    idf = {token: 0.5 + (i % 7) / 2 for i, token in enumerate(vocab)}
    (folder / "idf.json").write_text(json.dumps(idf))
    return folder


def test_inference_free_documents_through_the_model_queries_through_the_table(
    inference_free_dir,
):
    app = create_app(config(model=str(inference_free_dir)))
    texts = ["tax law", "garlic powder, ounce"]
    with TestClient(app) as client:
        assert isinstance(app.state.service.encoder, StaticQueryEncoder)
        queries = embedded(client, "query", {"inputs": texts})
        documents = embedded(client, "document", {"inputs": texts})
    model = SpladeEncoder.from_pretrained(str(inference_free_dir))
    assert model.query_encoder is not None
    query_vectors = model.encode_queries(texts)  # through the table, as a clause's text is
    codec = TokenCodec(model.vocab)
    assert queries == [codec.encode(query_vectors, i) for i in range(len(texts))]
    assert_same_vectors(documents, ingested(model, texts, "token"))
    assert queries != documents
