"""Passages in ``splade-es serve``'s document paths (issue 24): an app writing long documents
through the proxy (the official opensearch-py client: single writes, ``_bulk``, partial
updates) into an index whose sparse field holds passages gets exactly the passages
``encode_passages`` makes, whatever ``--long-documents`` says; a one-vector index beside it
still gets one vector; the ``splade`` clause scores the passages index by the best passage;
``/_splade/embed/document`` with ``"passages": true`` answers the library's passages.

The encoder is the tiny random BERT with windows of 16 model tokens, so that a sentence is a
long document (as in test_ingest_long_documents.py).
"""

from __future__ import annotations

import json
import math

import numpy as np
import opensearchpy
import opensearchpy.helpers
import pytest

from splade_es import QueryBuilder, SpladeEncoder, create_index, search
from splade_es.encoding.windows import WindowPolicy
from splade_es.engines import dialect_of
from splade_es.search import hits_of
from splade_es.serve.enrich import EnrichConfig, EnrichRule
from splade_es.sparse import stored_precision
from splade_es.tokens import TokenCodec
from tests.integration.serve_support import free_port, post_json, raw_request, running_proxy
from tests.integration.test_serve_enrich import start_serve
from tests.vectors import assert_same_vector

pytestmark = pytest.mark.integration

WINDOW, OVERLAP, MAX_WINDOWS = 16, 4, 6
WINDOWS = {"window": WINDOW, "overlap": OVERLAP, "max_windows": MAX_WINDOWS}
# serve's --long-documents truncate: one-vector indices truncate; passages indices are cut
# by the policy's window, overlap and max_windows all the same.
POLICY = WindowPolicy("truncate", **WINDOWS)
WORDS = [
    *("sparse", "vectors", "expand", "every", "passage", "with", "related", "vocabulary"),
    *("terms", "while", "the", "search", "engine", "indexes", "each", "document", "of"),
    *("the", "cluster", "and", "learned", "weights", "rank", "them"),
]


def text_of(n_words: int, step: int, first: int = 0) -> str:
    return " ".join(WORDS[(first + step * i) % len(WORDS)] for i in range(n_words))


DOCS = {
    "long-1": text_of(70, 1),
    "long-2": text_of(41, 3),
    "short": "sparse search engine",
    "huge": text_of(400, 5, 1),  # cut at MAX_WINDOWS
    "brain": "brain imaging of white matter " + text_of(30, 7, 2),
}
QUERIES = ["learned sparse weights", "search engine cluster", "brain imaging matter"]


@pytest.fixture(scope="module")
def encoder(search_model_dir) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(search_model_dir), device="cpu")


@pytest.fixture
def indices(cluster, index_name):
    """A passages index and a one-vector index, both under the proxy's --enrich pattern."""
    one = f"{index_name}-one"
    create_index(cluster.client, index_name, replicas=0, passages=True)
    create_index(cluster.client, one, replicas=0)
    yield index_name, one
    cluster.client.indices.delete(index=one, ignore_unavailable=True)


@pytest.fixture
def proxy(cluster, encoder):
    rules = EnrichConfig(rules=(EnrichRule("splade-es-test-*"),))
    with running_proxy(cluster.url, encoder, enrich=rules, long_documents=POLICY) as app:
        yield app


def client_for(url: str) -> opensearchpy.OpenSearch:
    return opensearchpy.OpenSearch(hosts=[url], max_retries=0)


def stored(cluster, index: str) -> dict[str, dict]:
    cluster.client.indices.refresh(index=index)
    body = {"size": 1000, "query": {"match_all": {}}}
    return {
        h["_id"]: h["_source"]
        for h in cluster.client.search(index=index, body=body)["hits"]["hits"]
    }


def codec_for(cluster, encoder) -> TokenCodec:
    return TokenCodec(encoder.vocab, scheme=dialect_of(cluster.client).key_scheme("rank_features"))


def assert_passages(got: list[dict], text: str, encoder, codec: TokenCodec) -> int:
    """``got`` is what ``encode_passages`` makes of ``text`` (vectors by the suite's rule,
    spans exactly, the keys in ingest's order); returns how many passages."""
    want = encoder.encode_passages([text], empty="empty_vector", **WINDOWS)
    rows = want.passage_range(0)
    assert len(got) == len(rows), (len(got), len(rows))
    for passage, p in zip(got, rows, strict=True):
        assert list(passage) == ["vector", "start", "end"]
        assert_same_vector(passage["vector"], codec.encode(want.passages, p))
        assert (passage["start"], passage["end"]) == tuple(want.spans[p].tolist())
    return len(rows)


def metric(app, name: str) -> float:
    text = raw_request(app.state.url, "GET", "/_splade/metrics")[2].decode()
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def test_writes_get_the_passages_of_a_passages_index_and_one_vector_elsewhere(
    cluster, indices, proxy, encoder
):
    passages_index, one_index = indices
    app = client_for(proxy.state.url)
    app.index(index=passages_index, id="put", body={"text": DOCS["long-1"]})
    app.create(index=passages_index, id="create", body={"title": "tax law", "text": DOCS["long-2"]})
    auto = app.index(index=passages_index, body={"text": DOCS["brain"]})["_id"]
    actions = [
        {"_index": index, "_id": f"bulk-{doc_id}", "_source": {"text": text, "views": 1}}
        for doc_id, text in DOCS.items()
        for index in (passages_index, one_index)
    ]
    indexed, errors = opensearchpy.helpers.bulk(app, actions, chunk_size=4)
    assert (indexed, errors) == (2 * len(DOCS), [])

    codec = codec_for(cluster, encoder)
    copies = stored(cluster, passages_index)
    texts = {
        "put": DOCS["long-1"],
        "create": "tax law " + DOCS["long-2"],
        auto: DOCS["brain"],
        **{f"bulk-{doc_id}": text for doc_id, text in DOCS.items()},
    }
    assert sorted(copies) == sorted(texts)
    windows = {
        doc_id: assert_passages(copies[doc_id]["splade"], t, encoder, codec)
        for doc_id, t in texts.items()
    }
    assert windows["bulk-short"] == 1 and windows["bulk-huge"] == MAX_WINDOWS
    assert windows["put"] > 2
    assert copies["bulk-long-1"]["views"] == 1 and copies["create"]["title"] == "tax law"

    # The one-vector index beside it: one vector, --long-documents truncate.
    ones = stored(cluster, one_index)
    assert sorted(ones) == sorted(f"bulk-{doc_id}" for doc_id in DOCS)
    for doc_id, text in DOCS.items():
        vector = ones[f"bulk-{doc_id}"]["splade"]
        assert isinstance(vector, dict)
        assert_same_vector(vector, codec.encode(encoder.encode_documents([text]), 0))

    # Metrics: every passage counted; the documents cut at --max-windows and, in the
    # one-vector index, those truncated at the model's max length.
    assert metric(proxy, "splade_es_document_passages_total") == sum(windows.values())
    cut = int(encoder.encode_passages(list(texts.values()), **WINDOWS).truncated.sum())
    assert 0 < cut < len(texts)
    assert metric(proxy, 'splade_es_documents_truncated_total{mode="passages"}') == cut
    truncated = encoder.encode_documents(list(DOCS.values())).truncated
    assert (
        metric(proxy, 'splade_es_documents_truncated_total{mode="truncate"}')
        == int(truncated.sum())
        >= 1
    )
    assert metric(proxy, "splade_es_documents_enriched_total") == len(texts) + len(DOCS)


def test_a_partial_update_of_the_text_re_encodes_the_passages(cluster, indices, proxy, encoder):
    passages_index, _ = indices
    app = client_for(proxy.state.url)
    codec = codec_for(cluster, encoder)
    app.index(index=passages_index, id="1", body={"text": DOCS["long-1"], "views": 1}, refresh=True)
    before = cluster.client.get(index=passages_index, id="1")["_source"]["splade"]
    assert_passages(before, DOCS["long-1"], encoder, codec)

    app.update(index=passages_index, id="1", body={"doc": {"views": 2}})
    after = cluster.client.get(index=passages_index, id="1")["_source"]
    assert after["views"] == 2 and after["splade"] == before  # no text changed: untouched

    answer = app.update(index=passages_index, id="1", body={"doc": {"text": DOCS["brain"]}})
    assert answer["result"] == "updated"
    after = cluster.client.get(index=passages_index, id="1")["_source"]
    assert after["views"] == 2 and after["text"] == DOCS["brain"]
    assert_passages(after["splade"], DOCS["brain"], encoder, codec)
    assert after["splade"] != before

    body = {"doc": {"text": DOCS["long-2"]}, "doc_as_upsert": True}
    assert app.update(index=passages_index, id="new", body=body)["result"] == "created"
    created = cluster.client.get(index=passages_index, id="new")["_source"]["splade"]
    assert assert_passages(created, DOCS["long-2"], encoder, codec) > 1

    # In a bulk: an update among writes keeps its place; its passages are re-encoded too.
    actions = [
        {"_op_type": "update", "_index": passages_index, "_id": "1", "doc": {"text": DOCS["huge"]}},
        {"_index": passages_index, "_id": "2", "_source": {"text": DOCS["short"]}},
    ]
    assert opensearchpy.helpers.bulk(app, actions) == (2, [])
    copies = stored(cluster, passages_index)
    assert assert_passages(copies["1"]["splade"], DOCS["huge"], encoder, codec) == MAX_WINDOWS
    assert assert_passages(copies["2"]["splade"], DOCS["short"], encoder, codec) == 1


def exact_dot(query: dict[str, float], document: dict[str, float]) -> float:
    common = [k for k in query if k in document]
    weights = stored_precision(np.array([document[k] for k in common])).tolist()
    return math.fsum(query[k] * w for k, w in zip(common, weights, strict=True))


def test_the_splade_clause_scores_a_passages_index_by_its_best_passage(
    cluster, indices, proxy, encoder
):
    passages_index, _ = indices
    app = client_for(proxy.state.url)
    actions = [
        {"_index": passages_index, "_id": doc_id, "_source": {"text": text}}
        for doc_id, text in DOCS.items()
    ]
    assert opensearchpy.helpers.bulk(app, actions) == (len(DOCS), [])
    copies = stored(cluster, passages_index)
    builder = QueryBuilder.for_index(cluster.client, passages_index)
    assert builder.passages
    not_a_sum = 0
    for text in QUERIES:
        features = builder.features(encoder.encode_queries([text]))
        body = {"query": {"splade": {"splade": text}}, "size": len(DOCS)}
        hits = hits_of(app.search(index=passages_index, body=body))
        assert hits, text
        direct = search(cluster.client, passages_index, text, encoder=encoder, k=len(DOCS))
        assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in direct.hits]
        for hit in hits:
            dots = [exact_dot(features, p["vector"]) for p in copies[hit.id]["splade"]]
            assert hit.score == pytest.approx(max(dots), rel=1e-5, abs=1e-6), (text, hit.id)
            not_a_sum += len([d for d in dots if d > 0]) > 1
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert not_a_sum, "some document matched in several passages: max, not sum, was checked"


def test_embed_passages_answers_the_librarys_passages(cluster, proxy, encoder):
    inputs = [DOCS["long-1"], " ", DOCS["short"], DOCS["huge"]]
    for scheme in ("token", "id"):
        codec = TokenCodec(encoder.vocab, scheme=scheme)
        status, answer = post_json(
            proxy,
            "/_splade/embed/document",
            {"inputs": inputs, "passages": True, "key_scheme": scheme},
        )
        assert status == 200, answer
        assert len(answer) == len(inputs) and answer[1] == []
        counts = [assert_passages(answer[i], inputs[i], encoder, codec) for i in (0, 2, 3)]
        assert counts[0] > 2 and counts[1] == 1 and counts[2] == MAX_WINDOWS
    status, pairs = post_json(
        proxy,
        "/_splade/embed/document",
        {"inputs": inputs[:1], "passages": True, "format": "pairs"},
    )
    assert status == 200
    [first] = pairs["embeddings"]
    as_maps = [
        {
            "vector": {e["token"]: e["weight"] for e in p["embedding"]},
            "start": p["start"],
            "end": p["end"],
        }
        for p in first["passages"]
    ]
    assert_passages(as_maps, inputs[0], encoder, TokenCodec(encoder.vocab, scheme="token"))
    # Without the option: one vector per input, as before.
    status, vectors = post_json(proxy, "/_splade/embed/document", {"inputs": inputs[:1]})
    assert status == 200 and isinstance(vectors[0], dict)
    status, refused = post_json(proxy, "/_splade/embed/query", {"inputs": ["a"], "passages": True})
    assert status == 400 and "[passages] is for documents" in refused["error"]["reason"]
    status, refused = post_json(proxy, "/_splade/embed/document", {"inputs": ["a"], "passages": 1})
    assert status == 400 and "true or false" in refused["error"]["reason"]


def test_the_serve_command_cuts_passages_by_its_window_options(
    cluster, indices, encoder, search_model_dir
):
    passages_index, one_index = indices
    port = free_port()
    process = start_serve(
        cluster, search_model_dir, port,
        "--enrich", "splade-es-test-*", "--long-documents", "maxpool",
        "--window", str(WINDOW), "--overlap", str(OVERLAP), "--max-windows", "3",
    )  # fmt: skip
    try:
        app = client_for(f"http://127.0.0.1:{port}")
        app.index(index=passages_index, id="huge", body={"text": DOCS["huge"]})
        app.index(index=one_index, id="huge", body={"text": DOCS["huge"]})
        status, _, body = raw_request(
            f"http://127.0.0.1:{port}",
            "POST",
            "/_splade/embed/document",
            json.dumps({"inputs": [DOCS["long-1"]], "passages": True}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200
    finally:
        process.terminate()
        process.wait(timeout=60)
    codec = codec_for(cluster, encoder)
    options = {"window": WINDOW, "overlap": OVERLAP, "max_windows": 3}
    for text, got in (
        (DOCS["huge"], stored(cluster, passages_index)["huge"]["splade"]),
        (DOCS["long-1"], [
            {"vector": p["vector"], "start": p["start"], "end": p["end"]}
            for p in json.loads(body)[0]
        ]),
    ):  # fmt: skip
        want = encoder.encode_passages([text], empty="empty_vector", **options)
        assert len(got) == len(want.passage_range(0)) == 3
        for passage, p in zip(got, want.passage_range(0), strict=True):
            assert_same_vector(passage["vector"], codec.encode(want.passages, p))
            assert (passage["start"], passage["end"]) == tuple(want.spans[p].tolist())
    # The one-vector index: max-pooled over the windows, as --long-documents maxpool says.
    maxpooled = encoder.encode_documents([DOCS["huge"]], long_documents="maxpool", **options)
    assert_same_vector(stored(cluster, one_index)["huge"]["splade"], codec.encode(maxpooled, 0))
