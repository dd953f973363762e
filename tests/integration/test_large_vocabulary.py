"""A 250,002-piece SentencePiece vocabulary through the real engines (issue 26): an XLM-R-shaped
random-weight model (tests/model_zoo.py) whose documents are indexed, searched, explained and
run through ``doctor``; non-ASCII pieces, ``▁`` word-start pieces, case-only different pieces
and pieces holding the escaped ``.`` / ``%`` survive the key codec into the engine and back,
and every score is the exact dot product.

Run on the real OpenSearch 2.19.6 and 3.3.2 nodes with ``SPLADE_ES_TEST_CLUSTERS=node``.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from splade_es import QueryBuilder, SpladeEncoder, create_index, doctor, explain
from splade_es.doctor import CAN_CALL, SAME_VECTORS, SERVE_ANSWERS, ServeTarget
from splade_es.register import RegisterConfig, register, unregister
from splade_es.search import search_vector
from splade_es.sparse import SparseBatch, stored_precision
from splade_es.tokens import TokenCodec
from tests.clusters import ClusterSpec, TestCluster
from tests.engines import ml_commons
from tests.integration import test_doctor_serve as doctor_serve
from tests.integration.corpus import bulk_index
from tests.integration.serve_support import free_port
from tests.model_zoo import BOOSTED, WORDS, XLMR_VOCAB, build_xlmr_250k

pytestmark = [pytest.mark.integration, pytest.mark.engines("opensearch")]

N_DOCS = 24
QUERIES = ["Tax code of Москва", "café Straße 日本語 e.g. 100%", "sparse vector search TAX"]
CASE_ONLY = ("▁Tax", "▁tax", "▁TAX")  # three pieces, one word in three casings


@pytest.fixture(scope="session")
def large_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_xlmr_250k(tmp_path_factory.mktemp("xlmr-250k"))


@pytest.fixture(scope="module")
def encoder(large_model_dir: Path) -> SpladeEncoder:
    encoder = SpladeEncoder.from_pretrained(str(large_model_dir), device="cpu")
    assert len(encoder.vocab) == XLMR_VOCAB
    assert encoder.fast_forward is None, "XLM-R runs through transformers' forward"
    return encoder


@pytest.fixture(scope="module")
def corpus(encoder: SpladeEncoder) -> tuple[list[dict], SparseBatch]:
    rng = random.Random(26)
    forms = [f for w in WORDS for f in dict.fromkeys((w, w.capitalize(), w.upper()))]
    docs = [{"id": f"doc-{i}", "text": " ".join(rng.sample(forms, 12))} for i in range(N_DOCS)]
    return docs, encoder.encode_documents([d["text"] for d in docs])


def test_the_vectors_hold_the_pieces_the_codec_must_keep(encoder, corpus) -> None:
    """Before any engine: the model's vectors hold non-ASCII, ``▁`` and case-only pieces, and
    the codec's keys for them are distinct and decode back."""
    _, vectors = corpus
    tokens = set().union(*(v.keys() for v in vectors.to_dicts()))
    assert set(BOOSTED) <= tokens
    assert any(not t.isascii() for t in tokens - set(BOOSTED))
    assert any(t.startswith("▁") for t in tokens - set(BOOSTED))
    assert {"▁tax", "tax"} <= tokens, "the same text with and without ▁: two keys"
    codec = TokenCodec(encoder.vocab)
    keys = {codec.key(encoder.vocab.index(t)) for t in CASE_ONLY}
    assert keys == set(CASE_ONLY), "case-only differences are kept"
    assert codec.key(encoder.vocab.index("▁e.g.")) == "▁e%2Eg%2E"
    assert codec.key(encoder.vocab.index("▁100%")) == "▁100%25"
    for row in range(len(vectors)):
        assert codec.decode(codec.encode(vectors, row)) == pytest.approx(vectors.to_dict(row))


def _index(cluster: TestCluster, index_name: str, corpus, **builder_kw) -> QueryBuilder:
    docs, vectors = corpus
    create_index(cluster.client, index_name, replicas=0)
    builder = QueryBuilder.for_index(cluster.client, index_name, **builder_kw)
    bulk_index(cluster.client, index_name, docs, vectors, builder.codec(vectors.vocab))
    return builder


def _expected(builder: QueryBuilder, query: SparseBatch, corpus, *, stored: bool) -> dict:
    docs, vectors = corpus
    codec = builder.codec(vectors.vocab)
    features = builder.prune(query)[0]
    scores = {}
    for i, doc in enumerate(docs):
        stored_features = codec.encode(vectors, i)
        common = [k for k in features if k in stored_features]
        weights = [stored_features[k] for k in common]
        if stored:
            weights = stored_precision(weights).tolist()
        if common:
            scores[doc["id"]] = sum(features[k] * w for k, w in zip(common, weights, strict=True))
    return scores


def _assert_dot_products(cluster, index_name, builder, encoder, corpus) -> None:
    for text in QUERIES:
        query = encoder.encode_queries([text])
        result = search_vector(cluster.client, index_name, query, builder=builder, k=N_DOCS)
        exact = _expected(builder, query, corpus, stored=False)
        stored = _expected(builder, query, corpus, stored=True)
        assert result.hits and {h.id for h in result.hits} == set(exact)
        for hit in result.hits:
            assert hit.score == pytest.approx(exact[hit.id], rel=2**-8)
            assert hit.score == pytest.approx(stored[hit.id], rel=1e-5)
        ranked = sorted(stored, key=lambda d: -stored[d])
        assert [h.id for h in result.hits][:3] == ranked[:3]


def test_indexed_searched_and_explained_through_the_key_codec(
    cluster, index_name, encoder, corpus
) -> None:
    builder = _index(cluster, index_name, corpus)
    assert builder.field_type == "rank_features" and builder.codec(encoder.vocab).scheme == "token"
    _assert_dot_products(cluster, index_name, builder, encoder, corpus)
    docs, vectors = corpus
    query = encoder.encode_queries([QUERIES[1]])
    query_tokens = query.to_dict(0)
    for row in (0, N_DOCS // 2, N_DOCS - 1):
        doc_id = docs[row]["id"]
        explanation = explain(cluster.client, index_name, doc_id, query, builder=builder)
        # Every matched token, named by the key the engine stored and decoded back
        document = vectors.to_dict(row)
        expected = {t for t in query_tokens if t in document}
        got = {part.token: part for part in explanation.contributions}
        assert set(got) == expected
        assert set(BOOSTED) <= set(got)
        for token, part in got.items():
            assert part.doc_weight == pytest.approx(
                float(stored_precision([document[token]])[0]), rel=1e-6
            )
            assert part.query_weight == pytest.approx(query_tokens[token], rel=1e-6)
        # case-only pieces: three features, each with its own weight
        assert len({got[t].doc_weight for t in CASE_ONLY} | {0.0}) >= 2
        assert explanation.engine_score == pytest.approx(explanation.score, rel=1e-5)


@pytest.mark.needs_opensearch_plugin("neural", "the neural_sparse query")
def test_neural_sparse_query_scores_the_exact_dot_product(
    cluster, index_name, encoder, corpus
) -> None:
    if cluster.version < (2, 14, 0):
        pytest.skip("neural_sparse query_tokens needs OpenSearch 2.14+")
    builder = _index(cluster, index_name, corpus, style="neural_sparse")
    _assert_dot_products(cluster, index_name, builder, encoder, corpus)


def test_doctor_passes_beside_the_large_vocabulary_index(
    cluster, index_name, encoder, corpus
) -> None:
    """doctor's checks on the cluster that holds the 250k-vocabulary index: all pass, and it
    leaves the index (and nothing of its own) behind."""
    _index(cluster, index_name, corpus)
    report = doctor(cluster.client)
    assert report.ok and not report.failed and not report.left_behind, report.failed
    assert cluster.client.count(index=index_name)["count"] == N_DOCS


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest,
    _cluster_spec: ClusterSpec,
    large_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestCluster, ServeTarget]]:
    """``splade-es serve`` of the 250k model, registered on the cluster (ml-commons: the
    2.19.6 node only; elsewhere skipped, saying why)."""
    reason = doctor_serve.skip_reason(_cluster_spec)
    if reason:
        pytest.skip(reason)
    running: TestCluster = request.getfixturevalue("_running_cluster")
    if not ml_commons.available(running.client):
        pytest.skip(f"{_cluster_spec.name} has no ml-commons plugin")
    keys = tmp_path_factory.mktemp("keys") / "serve.keys"
    keys.write_text(f"{doctor_serve.KEY}\n")
    port = free_port()
    process = doctor_serve.start_serve(large_model_dir, keys, port, running.url)
    target = ServeTarget(
        url=f"http://127.0.0.1:{port}",
        api_key=doctor_serve.KEY,
        name=f"large-vocab-{uuid.uuid4().hex[:8]}",
    )
    config = RegisterConfig(
        serve_url=target.url, api_key=doctor_serve.KEY, name=target.name, apply_settings=True
    )
    with contextlib.ExitStack() as stack:
        stack.callback(doctor_serve.stop_serve, process)
        stack.callback(ml_commons.reset_connector_endpoints, running.client)
        stack.callback(unregister, running.cluster, RegisterConfig(name=target.name))
        register(running.cluster, config)
        yield running, target


def test_doctor_serve_rows_carry_the_large_vocabulary(cluster, served) -> None:
    """The cluster's ingest pipeline and query model call serve (the 250k model): doctor's
    vectors-equal row compares what the engine relays with serve's own answer for the same
    texts, key for key and weight for weight by the suite's same-vector rule (doctor's call
    and the pipeline's are different batches, and a model on transformers' forward pads a
    batch, so the last float32 bits of a weight may differ)."""
    running, target = served
    report = doctor(running.cluster, serve=target)
    found = {c.capability: c for c in report.checks}
    for name in (CAN_CALL, SERVE_ANSWERS, SAME_VECTORS):
        assert found[name].status == "ok", found[name]
    assert report.ok, report.failed
    assert not report.left_behind
