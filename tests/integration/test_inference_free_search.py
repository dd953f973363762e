"""Issue 16 end to end: an inference-free model goes through create_index, bulk indexing,
search() and evaluate's query runner unchanged; the engine's _score is the dot product of the
IDF-weighted query tokens with the masked-LM document vectors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from splade_es import QueryBuilder, SpladeEncoder, create_index, search
from splade_es.encoding.static_query import StaticQueryEncoder
from splade_es.evaluate import run_queries
from splade_es.sparse import stored_precision
from tests.conftest import WORDS
from tests.integration.corpus import bulk_index, document_text, make_documents

pytestmark = pytest.mark.integration

QUERIES = ["depreciation tax deduction", "brain white matter imaging the"]
N_DOCS = 40


@pytest.fixture(scope="module")
def inference_free_dir(search_model_dir, tmp_path_factory):
    """The search test model in OpenSearch's document-only layout: weights for the corpus
    words (``the`` gets none, so a query keeps only its content words)."""
    folder = tmp_path_factory.mktemp("doc-only")
    for item in search_model_dir.iterdir():
        shutil.copy(item, folder / item.name)
    idf = {word: 0.5 + (k % 5) * 0.75 for k, word in enumerate(WORDS) if word != "the"}
    (folder / "idf.json").write_text(json.dumps(idf))
    return folder, idf


def test_search_with_an_inference_free_encoder(cluster, index_name, inference_free_dir):
    folder, idf = inference_free_dir
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    assert encoder.mode == "inference-free"
    docs = make_documents(N_DOCS)
    vectors = encoder.encode_documents([document_text(d) for d in docs])
    create_index(cluster.client, index_name, replicas=0)
    builder = QueryBuilder.for_index(cluster.client, index_name)
    codec = builder.codec(vectors.vocab)
    bulk_index(cluster.client, index_name, docs, vectors, codec)
    query_only = StaticQueryEncoder.from_pretrained(str(folder))
    # evaluate's query runner takes the encoder as search() does.
    ran = run_queries(
        cluster.client, index_name, dict(enumerate(QUERIES)), encoder=encoder, k=N_DOCS
    ).run
    for n, text in enumerate(QUERIES):
        query = encoder.encode_queries([text])
        assert query.to_dict(0) == {w: idf[w] for w in text.split() if w in idf}
        result = search(
            cluster.client, index_name, text, encoder=encoder, builder=builder, k=N_DOCS
        )
        features = builder.prune(query)[0]
        expected = {}
        for i, doc in enumerate(docs):
            doc_features = codec.encode(vectors, i)
            common = [k for k in features if k in doc_features]
            if common:
                stored = stored_precision([doc_features[k] for k in common])
                expected[doc["id"]] = float(
                    np.dot([features[k] for k in common], stored.astype(np.float64))
                )
        assert result.hits and {h.id for h in result.hits} == set(expected)
        for hit in result.hits:
            assert hit.score == pytest.approx(expected[hit.id], rel=1e-5)
        # The query side alone (no model loaded) gives the same search.
        alone = search(
            cluster.client, index_name, text, encoder=query_only, builder=builder, k=N_DOCS
        )
        assert [(h.id, h.score) for h in alone.hits] == [(h.id, h.score) for h in result.hits]
        assert ran[n] == {h.id: h.score for h in result.hits}


def test_serve_translates_inference_free_queries_without_loading_the_model(
    cluster, inference_free_dir, monkeypatch
):
    """The proxy loads only the weight table for queries; the masked-LM is loaded on the first
    document request, and never for query translation."""
    from splade_es.serve import service as service_module
    from tests.integration.serve_support import post_json, running_proxy

    folder, _ = inference_free_dir
    loads = []
    real_load = SpladeEncoder.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(service_module.SpladeEncoder, "from_pretrained", counted)

    with running_proxy(cluster.url, None, model=str(folder), device="cpu") as app:
        assert isinstance(app.state.service.encoder, StaticQueryEncoder)
        status, out = post_json(
            app,
            "/_splade/query",
            {
                "text": QUERIES[0],
                "engine": cluster.engine,
                "version": ".".join(map(str, cluster.version)),
                "field_type": "rank_features",
                "field": "splade",
            },
        )
        assert status == 200, out
        clauses = json.dumps(out["body"])
        for word in QUERIES[0].split():
            assert f"splade.{word}" in clauses
        assert loads == []  # no model for queries
        status, out = post_json(app, "/_splade/encode", {"texts": ["tax code"], "kind": "document"})
        assert status == 200, out
        assert len(loads) == 1  # the document side, loaded on demand
        expected = SpladeEncoder.from_pretrained(str(folder), device="cpu")
        assert out["vectors"][0]["tokens"] == pytest.approx(
            expected.encode_documents(["tax code"]).to_dict(0), rel=1e-5
        )
