"""Passages in serve's document paths (issue 24), without a cluster: the index's layout read
into the write target, the write path choosing passages or one vector by it (the exact JSON a
bulk carries), the document queue's passage jobs, the embed request's ``passages`` option and
its answers, and the config's refusal of ``--long-documents passages``."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from splade_es import defaults
from splade_es.engines import dialect_for
from splade_es.serve import writes
from splade_es.serve.batcher import DocumentBatcher, QueueFull, passage_rows
from splade_es.serve.embed import (
    EmbedRequest,
    EmbedRequestError,
    parse_embed_request,
    passages_answer,
)
from splade_es.serve.enrich import EnrichConfig, Enricher, passages_value
from splade_es.serve.enrich_plan import EnrichRule
from splade_es.serve.facts import FactsCache, WriteTarget, sparse_field_layout
from splade_es.serve.metrics import Metrics
from splade_es.serve.upstream import UpstreamResponse
from splade_es.sparse import PassageBatch, SparseBatch
from splade_es.tokens import TokenCodec

DIALECT = dialect_for("opensearch", "2.19.0")
PASSAGES = WriteTarget("long", "long-1", "rank_features", DIALECT, 0.0, passages=True)
ONE = WriteTarget("short", "short-1", "rank_features", DIALECT, 0.0)
VOCAB = ["[PAD]", "tax", "law", "code", "brain"]
NESTED = {
    "type": "nested",
    "properties": {
        "vector": {"type": "rank_features"},
        "start": {"type": "integer"},
        "end": {"type": "integer"},
    },
}


def mapping_of(index: str, field: dict[str, Any]) -> dict[str, Any]:
    return {index: {"mappings": {"properties": {"splade": field, "text": {"type": "text"}}}}}


# ---------------------------------------------------------------------- the index's layout
def test_the_layout_is_read_from_the_mapping():
    nested = sparse_field_layout(mapping_of("i", NESTED), "i", "splade")
    assert nested is not None and (nested.field_type, nested.passages) == ("rank_features", True)
    plain = sparse_field_layout(mapping_of("i", {"type": "sparse_vector"}), "i", "splade")
    assert plain is not None and (plain.field_type, plain.passages) == ("sparse_vector", False)
    other_nested = {"type": "nested", "properties": {"name": {"type": "keyword"}}}
    assert sparse_field_layout(mapping_of("i", other_nested), "i", "splade") is None
    assert sparse_field_layout(mapping_of("i", {"type": "text"}), "i", "splade") is None
    assert sparse_field_layout(mapping_of("i", NESTED), "i", "missing") is None
    assert sparse_field_layout({"i": {"mappings": {}}}, "i", "splade") is None
    assert sparse_field_layout("not a mapping", "i", "splade") is None
    # A data stream's backing index, keyed by its concrete name.
    assert sparse_field_layout(mapping_of(".ds-x-1", NESTED), "x", "splade") == nested


class MappingUpstream:
    """``GET /``, ``/_alias/<name>`` (404: not an alias), ``/_data_stream/<name>`` (404) and
    ``/<index>/_mapping`` answered from a dict of mappings."""

    def __init__(self, mappings: dict[str, Any]) -> None:
        self.mappings = mappings

    async def get_json(self, target: str, authorization: str | None = None):
        if target == "/":
            info = {"version": {"distribution": "opensearch", "number": "2.19.0"}}
            return SimpleNamespace(status=200), info
        if target.endswith("/_mapping"):
            index = target.strip("/").split("/")[0]
            if index in self.mappings:
                return SimpleNamespace(status=200), {index: self.mappings[index]}
        return SimpleNamespace(status=404), {}


def test_a_write_target_knows_whether_its_index_holds_passages():
    upstream = MappingUpstream(
        {
            "long": mapping_of("long", NESTED)["long"],
            "short": mapping_of("short", {"type": "rank_features"})["short"],
            "bm25": mapping_of("bm25", {"type": "text"})["bm25"],
        }
    )
    cache = FactsCache(upstream)  # type: ignore[arg-type]

    async def targets() -> list[WriteTarget]:
        names = ("long", "short", "bm25", "new")
        return [await cache.write_target(n, "splade") for n in names]

    long, short, bm25, new = asyncio.run(targets())
    assert (long.enriched, long.passages, long.field_type) == (True, True, "rank_features")
    assert (short.enriched, short.passages) == (True, False)
    assert (bm25.enriched, bm25.passages) == (False, False)
    assert (new.enriched, new.index) == (False, None)


# ---------------------------------------------------------------------- the write path
class FakeDocuments:
    """The document queue: a text's one vector is token 1 at its length; its passages are
    one per 4 characters, token 2 weighted by the passage's number."""

    def __init__(self) -> None:
        self.one: list[list[str]] = []
        self.passages: list[list[str]] = []

    async def encode(self, texts: list[str]):
        self.one.append(list(texts))
        return [(np.array([1]), np.array([float(len(t))], np.float32)) for t in texts]

    async def encode_passages(self, texts: list[str]):
        self.passages.append(list(texts))
        return [expected_passage_rows(t) for t in texts]


def expected_passage_rows(text: str) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    return [
        (np.array([2]), np.array([1.0 + n], np.float32), start, min(start + 4, len(text)))
        for n, start in enumerate(range(0, len(text), 4))
    ]


class RecordingCluster:
    def __init__(self) -> None:
        self.bodies: list[list[Any]] = []

    async def request(self, method: str, target: str, headers: Any, body: bytes):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        self.bodies.append(lines)
        items = [
            {next(iter(header)): {"_index": "x", "_id": "1", "status": 201, "result": "created"}}
            for header in lines[::2]
        ]
        answer = {"took": 1, "errors": False, "items": items}
        return UpstreamResponse(200, [("content-type", "application/json")], writes.dumps(answer))


class LayoutFacts:
    async def write_target(self, name: str, field: str, authorization: str | None = None):
        return PASSAGES if name.startswith("long") else ONE

    def forget_target(self, name: str, field: str) -> None:
        pass


def enricher(cluster: RecordingCluster, documents: FakeDocuments, metrics: Metrics) -> Enricher:
    return Enricher(
        EnrichConfig(rules=(EnrichRule("long*"), EnrichRule("short*"))),
        facts=LayoutFacts(),  # type: ignore[arg-type]
        upstream=cluster,  # type: ignore[arg-type]
        documents=documents,  # type: ignore[arg-type]
        vocab=VOCAB,
        metrics=metrics,
    )


def test_a_bulk_gets_passages_where_the_index_holds_them_and_one_vector_elsewhere():
    cluster, documents, metrics = RecordingCluster(), FakeDocuments(), Metrics()
    texts = ["tax law and code", "brain", "the tax code", ""]
    body = b"".join(
        json.dumps(line).encode() + b"\n"
        for line in [
            {"index": {"_index": "long", "_id": "a"}},
            {"text": texts[0], "splade": {"app": 1.0}},  # the app's value is replaced
            {"index": {"_index": "short", "_id": "b"}},
            {"text": texts[1]},
            {"create": {"_index": "long", "_id": "c"}},
            {"title": "t", "text": texts[2]},
        ]
    )
    wp = writes.WritePath("_bulk", None, None)
    response = asyncio.run(enricher(cluster, documents, metrics).bulk(wp, "/_bulk", [], body, None))
    assert response is not None and response.status == 200
    # One queue request per kind: the passages ones together, the one-vector one alone.
    assert documents.passages == [[texts[0], "t " + texts[2]]]
    assert documents.one == [[texts[1]]]
    [sent] = cluster.bodies
    codec = TokenCodec(VOCAB, scheme=DIALECT.key_scheme("rank_features"))
    for source, text in ((sent[1], texts[0]), (sent[5], "t " + texts[2])):
        want = [
            {"vector": codec.encode_row(ids, weights), "start": start, "end": end}
            for ids, weights, start, end in expected_passage_rows(text)
        ]
        assert source["splade"] == want and len(want) > 1
        assert list(source["splade"][0]) == [
            defaults.PASSAGE_VECTOR,
            defaults.PASSAGE_START,
            defaults.PASSAGE_END,
        ]
    assert sent[3]["splade"] == {"tax": 5.0}  # one vector: token 1 at the text's length
    assert sent[1]["text"] == texts[0] and sent[5]["title"] == "t"
    assert metrics.documents_enriched._value.get() == 3


def test_a_partial_update_of_the_text_re_encodes_the_passages():
    documents, metrics = FakeDocuments(), Metrics()

    class UpdateCluster(RecordingCluster):
        async def request(self, method: str, target: str, headers: Any, body: bytes):
            if target.startswith("/_mget"):
                current = {
                    "_index": "long-1",
                    "_id": "1",
                    "found": True,
                    "_seq_no": 4,
                    "_primary_term": 1,
                    "_source": {"text": "old", "views": 2, "splade": [{"vector": {"x": 1}}]},
                }
                answer = {"docs": [current]}
                return UpstreamResponse(200, [], writes.dumps(answer))
            return await super().request(method, target, headers, body)

    cluster = UpdateCluster()
    wp = writes.WritePath("_update", "long", "1")
    body = json.dumps({"doc": {"text": "a new text of the document"}}).encode()
    asyncio.run(
        enricher(cluster, documents, metrics).update_document(wp, "/long/_update/1", [], body, None)
    )
    [[header, source]] = cluster.bodies
    assert header["index"]["if_seq_no"] == 4  # written conditionally, as a vector update is
    assert source["views"] == 2 and source["text"] == "a new text of the document"
    codec = TokenCodec(VOCAB, scheme="token")
    assert source["splade"] == passages_value(codec, expected_passage_rows(source["text"]))
    assert documents.passages == [["a new text of the document"]] and documents.one == []


def test_passages_value_is_the_json_ingest_writes():
    from splade_es.ingest.stages import _passages_json

    codec = TokenCodec(VOCAB, scheme="token")
    rows = expected_passage_rows("tax law and code")
    value = passages_value(codec, rows)
    vectors = [writes.dumps(codec.encode_row(ids, weights)) for ids, weights, _, _ in rows]
    spans = np.array([[start, end] for _, _, start, end in rows])
    assert writes.dumps(value) == _passages_json(vectors, spans)


# ---------------------------------------------------------------------- the document queue
class PassageModel:
    """Passages of a text: one per word, token 1 weighted by the word's length."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.gate = threading.Event()

    def one(self, texts: list[str]) -> SparseBatch:
        self.gate.wait(10)
        self.calls.append(("one", list(texts)))
        return SparseBatch.from_rows([([1], [float(len(t))]) for t in texts], vocab=VOCAB)

    def passages(self, texts: list[str]) -> PassageBatch:
        self.gate.wait(10)
        self.calls.append(("passages", list(texts)))
        rows, document, spans = [], [], []
        for d, text in enumerate(texts):
            start = 0
            for word in text.split(" ") if text else []:
                rows.append(([1], [float(len(word))]))
                document.append(d)
                spans.append((start, start + len(word)))
                start += len(word) + 1
        return PassageBatch(
            SparseBatch.from_rows(rows, vocab=VOCAB),
            np.array(document, np.int64),
            np.array(spans, np.int64).reshape(-1, 2),
            np.zeros(len(texts), bool),
        )


def test_the_queue_encodes_each_kind_in_its_own_calls_under_one_bound():
    async def body():
        model = PassageModel()
        loop = asyncio.get_running_loop()
        batcher = DocumentBatcher(
            model.one,
            lambda f, *a: loop.run_in_executor(None, f, *a),
            passages=model.passages,
            max_batch=10,
            max_queued=6,
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.encode(["a"]))  # taken at once; the model waits
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.encode_passages(["tax law", "", "brain"]))
        third = asyncio.ensure_future(batcher.encode(["bb"]))
        fourth = asyncio.ensure_future(batcher.encode_passages(["code"]))
        await asyncio.sleep(0.05)
        assert batcher.queued == 6
        with pytest.raises(QueueFull):  # passages count as documents in the same bound
            await batcher.encode_passages(["x"])
        model.gate.set()
        results = await asyncio.gather(first, second, third, fourth)
        await batcher.close()
        return model.calls, results, batcher.queued

    calls, (first, second, third, fourth), queued = asyncio.run(body())
    assert calls == [
        ("one", ["a"]),
        ("passages", ["tax law", "", "brain", "code"]),  # the oldest waiting kind first
        ("one", ["bb"]),
    ]
    assert [int(w[0]) for _, w in first + third] == [1, 2]
    assert [[(int(w[0]), s, e) for _, w, s, e in text] for text in second] == [
        [(3, 0, 3), (3, 4, 7)],
        [],
        [(5, 0, 5)],
    ]
    assert [(s, e) for _, _, s, e in fourth[0]] == [(0, 4)]
    assert queued == 0


def test_a_queue_without_a_passage_encoder_refuses_passages():
    async def body():
        batcher = DocumentBatcher(lambda t: None, lambda f, *a: None)  # type: ignore[arg-type,return-value]
        await batcher.encode_passages(["x"])

    with pytest.raises(Exception, match="encodes no passages"):
        asyncio.run(body())


def test_passage_rows_split_a_batch_by_document():
    batch = PassageModel()
    batch.gate.set()
    rows = passage_rows(batch.passages(["tax law code", "", "brain"]))
    assert [[(s, e) for *_, s, e in text] for text in rows] == [
        [(0, 3), (4, 7), (8, 12)],
        [],
        [(0, 5)],
    ]


# ---------------------------------------------------------------------- the embed request
def test_the_passages_option_is_a_boolean_in_the_body_or_the_query_string():
    assert parse_embed_request({"inputs": ["a"]}).passages is False
    assert parse_embed_request({"inputs": ["a"], "passages": True}).passages is True
    assert parse_embed_request({"inputs": ["a"]}, [("passages", "true")]).passages is True
    assert (
        parse_embed_request({"inputs": ["a"], "passages": False}, [("passages", "false")]).passages
        is False
    )
    for body, params, message in [
        ({"passages": "yes"}, [], "must be true or false"),
        ({}, [("passages", "1")], "must be true or false"),
        ({"passages": True}, [("passages", "false")], "in the query string"),
        ({}, [("passages", "true"), ("passages", "false")], "several values"),
    ]:
        with pytest.raises(EmbedRequestError, match=message):
            parse_embed_request({"inputs": ["a"], **body}, params)


def test_passage_answers_keep_the_inputs_order_and_blank_inputs_have_none():
    request = EmbedRequest(("tax law", " ", "code"), passages=True)
    encoded = [
        [
            {"vector": {"tax": 1.5}, "start": 0, "end": 3},
            {"vector": {"law": 0.5}, "start": 4, "end": 7},
        ],
        [{"vector": {"code": 2.0}, "start": 0, "end": 4}],
    ]
    listed = request.passages_of(encoded)
    assert listed == [encoded[0], [], encoded[1]]
    assert passages_answer(listed, "maps") == listed
    pairs = passages_answer(listed, "pairs")["embeddings"]
    assert [len(e["passages"]) for e in pairs] == [2, 0, 1]
    assert pairs[0]["passages"][1] == {
        "embedding": [{"token": "law", "weight": 0.5}],
        "start": 4,
        "end": 7,
    }
    with pytest.raises(ValueError):
        request.passages_of(encoded[:1])


# ---------------------------------------------------------------------- the config
def test_long_documents_passages_is_refused_saying_the_index_decides():
    from splade_es.connect import ConnectionConfig
    from splade_es.encoding.windows import WindowPolicy
    from splade_es.exceptions import ConfigurationError
    from splade_es.serve.service import ServeConfig

    connection = ConnectionConfig(hosts=("http://127.0.0.1:9",))
    with pytest.raises(ConfigurationError) as info:
        ServeConfig(connection=connection, long_documents=WindowPolicy("passages"))
    assert "passages follow each index's layout" in str(info.value)
    assert "truncate or maxpool" in str(info.value)
    ServeConfig(connection=connection, long_documents=WindowPolicy("maxpool", window=16))


# ---------------------------------------------------------------------- the service, a model
LONG = " ".join(["the search engine indexes a sparse vector for each document"] * 20)


def service_for(model_dir: Any, policy: Any) -> Any:
    from splade_es.connect import ConnectionConfig
    from splade_es.serve.service import ServeConfig, Service

    connection = ConnectionConfig(hosts=("http://127.0.0.1:9",))
    config = ServeConfig(connection=connection, model=str(model_dir), long_documents=policy)
    return Service(config)


def test_the_service_makes_the_libraries_passages_and_counts_what_was_cut(tiny_bert_dir):
    from splade_es.encoding.windows import WindowPolicy
    from tests.vectors import assert_same_vector

    service = service_for(
        tiny_bert_dir, WindowPolicy("truncate", window=16, overlap=4, max_windows=3)
    )
    encoder = service._load_document_encoder()
    texts = [LONG, "", "a short text", " ".join(LONG.split()[:14])]
    got = service.encode_passages(encoder, texts, batch_size=2)
    want = encoder.encode_passages(texts, window=16, overlap=4, max_windows=3, empty="empty_vector")
    assert got.windows.tolist() == want.windows.tolist() == [3, 0, 1, want.windows[3]]
    assert want.windows[3] > 1
    assert got.spans.tolist() == want.spans.tolist()
    for p in range(len(want.document)):
        assert_same_vector(got.passages.to_dict(p), want.passages.to_dict(p))
    assert got.truncated.tolist() == [True, False, False, False]
    metrics = service.metrics
    assert metrics.documents_truncated.labels("passages")._value.get() == 1
    assert metrics.document_passages._value.get() == int(want.windows.sum())
    # One-vector documents follow --long-documents (truncate here), counted under its mode.
    vectors = service.encode_documents(encoder, [LONG, "short"], empty="empty_vector")
    assert vectors.truncated.tolist() == [True, False]
    assert metrics.documents_truncated.labels("truncate")._value.get() == 1


def test_a_passages_window_the_model_cannot_read_is_refused(tiny_bert_dir):
    from splade_es.encoding.windows import WindowPolicy
    from splade_es.exceptions import ConfigurationError

    service = service_for(tiny_bert_dir, WindowPolicy("truncate", window=100_000))
    encoder = service._load_document_encoder()
    with pytest.raises(ConfigurationError, match="window"):
        service.passages_policy(encoder)
    plain = service_for(tiny_bert_dir, None)  # none given: the encoder's own window
    resolved = plain.passages_policy(plain._load_document_encoder())
    assert (resolved.mode, resolved.window) == ("passages", encoder.max_length)
