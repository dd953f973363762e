"""``ingest`` with ``long_documents`` (issue 24): maxpool and passages through the ingestion
pipeline into a real cluster, and the run's report on long documents.

The encoder is the tiny random BERT with short windows (16 model tokens), so that a
sentence is a long document. What the index holds is compared with what the encoder makes
of the same texts in memory (``encode_documents`` / ``encode_passages``), and the engine's
scores with the exact dot products of those vectors.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from splade_es import QueryBuilder, create_index
from splade_es.encoding.encoder import SpladeEncoder
from splade_es.encoding.windows import WindowPolicy
from splade_es.exceptions import ConfigurationError
from splade_es.ingest import IngestConfig, ingest
from splade_es.search import search_vector
from splade_es.sparse import stored_precision
from splade_es.tokens import TokenCodec
from tests.vectors import assert_same_vector

pytestmark = pytest.mark.integration

WINDOW = 16  # model tokens, special tokens included
OVERLAP = 4
WORDS = [
    "sparse",
    "vectors",
    "expand",
    "every",
    "passage",
    "with",
    "related",
    "vocabulary",
    "terms",
    "while",
    "the",
    "search",
    "engine",
    "indexes",
    "each",
    "document",
    "of",
    "the",
    "cluster",
    "and",
    "learned",
    "weights",
    "rank",
    "them",
]
DOCS = [
    {"_id": "long-1", "text": " ".join(WORDS[i % len(WORDS)] for i in range(70))},
    {"_id": "long-2", "text": " ".join(WORDS[(3 * i) % len(WORDS)] for i in range(41))},
    {"_id": "short", "text": "sparse search engine"},
    {"_id": "huge", "text": " ".join(WORDS[(5 * i + 1) % len(WORDS)] for i in range(400))},
]
TEXTS = [doc["text"] for doc in DOCS]
QUERIES = ["learned sparse weights", "search engine cluster", "related vocabulary"]


@pytest.fixture(scope="module")
def encoder(search_model_dir) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(search_model_dir), device="cpu", screen=False)


def policy(mode: str, max_windows: int = 64) -> WindowPolicy:
    return WindowPolicy(mode, window=WINDOW, overlap=OVERLAP, max_windows=max_windows)  # type: ignore[arg-type]


def run(cluster, index_name, encoder, mode: str, **options):
    dead = Path(tempfile.mkdtemp()) / "dead.jsonl"
    config = IngestConfig(
        dead_letter=str(dead),
        index=index_name,
        create=True,
        long_documents=policy(mode, options.pop("max_windows", 64)),
        batch_size=2,  # several encoder windows
        bulk_docs=2,
        **options,
    )
    report = ingest(cluster.client, DOCS, encoder=encoder, config=config)
    assert not report.dead_lettered, dead.read_text()
    cluster.client.indices.refresh(index=index_name)
    return report


def stored(cluster, index_name) -> dict[str, dict]:
    found = cluster.client.search(index=index_name, body={"size": 100, "query": {"match_all": {}}})
    return {hit["_id"]: hit["_source"] for hit in found["hits"]["hits"]}


def test_passages_are_indexed_nested_and_scored_by_the_best_one(cluster, index_name, encoder):
    report = run(cluster, index_name, encoder, "passages", max_windows=6)
    expected = encoder.encode_passages(TEXTS, empty="empty_vector", **window_options(6))
    builder = QueryBuilder.for_index(cluster.client, index_name)
    assert builder.passages, "ingest --create made the nested passages layout"
    codec = TokenCodec(encoder.vocab, scheme=builder.scheme)

    sources = stored(cluster, index_name)
    assert sorted(sources) == sorted(doc["_id"] for doc in DOCS)
    for d, doc in enumerate(DOCS):
        passages = sources[doc["_id"]]["splade"]
        rows = expected.passage_range(d)
        assert len(passages) == len(rows)
        for passage, p in zip(passages, rows, strict=True):
            assert_same_vector(passage["vector"], codec.encode(expected.passages, p))
            start, end = expected.spans[p].tolist()
            assert (passage["start"], passage["end"]) == (start, end)
            assert doc["text"][start:end].strip(), "a span holds text of the document"
        assert sources[doc["_id"]]["text"] == doc["text"]

    windows = expected.windows
    assert report.indexed == len(DOCS) and report.long_documents == "passages"
    assert report.over_one_window == int((windows > 1).sum()) >= 3
    assert report.hit_max_windows == report.truncated == int(expected.truncated.sum()) >= 1
    assert not expected.truncated[[d for d, doc in enumerate(DOCS) if doc["_id"] == "short"]]
    assert report.windows_mean == pytest.approx(windows.mean(), abs=1e-3)
    assert report.windows_p99 == 6

    for text in QUERIES:
        query = encoder.encode_queries([text])
        features = builder.features(query)
        hits = search_vector(cluster.client, index_name, query, builder=builder, k=10).hits
        assert hits, text
        for hit in hits:  # the best stored passage's dot product
            best = max(exact_dot(features, p["vector"]) for p in sources[hit.id]["splade"])
            assert hit.score == pytest.approx(best, rel=1e-5, abs=1e-6), (text, hit.id)


def test_maxpool_indexes_the_max_over_windows(cluster, index_name, encoder):
    report = run(cluster, index_name, encoder, "maxpool")
    expected = encoder.encode_documents(
        TEXTS, empty="empty_vector", long_documents="maxpool", **window_options(64)
    )
    builder = QueryBuilder.for_index(cluster.client, index_name)
    assert not builder.passages
    codec = TokenCodec(encoder.vocab, scheme=builder.scheme)
    sources = stored(cluster, index_name)
    for row, doc in enumerate(DOCS):
        assert_same_vector(sources[doc["_id"]]["splade"], codec.encode(expected, row))
    assert expected.windows is not None
    assert expected.truncated is not None
    assert report.long_documents == "maxpool"
    assert report.truncated == report.hit_max_windows == int(expected.truncated.sum()) == 1
    assert report.over_one_window == int((expected.windows > 1).sum())
    assert report.windows_p99 == int(expected.windows.max()) == 64


def test_truncate_counts_and_warns(cluster, index_name, encoder, caplog):
    with caplog.at_level(logging.WARNING, logger="splade_es.ingest.pipeline"):
        report = run(cluster, index_name, encoder, "truncate")
    expected = encoder.encode_documents(TEXTS, empty="empty_vector", **window_options(64))
    assert expected.truncated is not None
    assert report.truncated == int(expected.truncated.sum()) == 3
    assert report.over_one_window == 0 and report.windows_mean == 0
    assert "3 documents lost their text past the model's window" in caplog.text


def test_a_layout_that_is_not_the_jobs_is_refused(cluster, index_name, encoder):
    create_index(cluster.client, index_name, replicas=0)  # one vector per document
    with pytest.raises(ConfigurationError, match="holds one vector per document"):
        run(cluster, index_name, encoder, "passages")
    other = f"{index_name}-passages"
    create_index(cluster.client, other, replicas=0, passages=True)
    try:
        with pytest.raises(ConfigurationError, match="holds passages"):
            run(cluster, other, encoder, "maxpool")
    finally:
        cluster.client.indices.delete(index=other)


def window_options(max_windows: int) -> dict:
    return {"window": WINDOW, "overlap": OVERLAP, "max_windows": max_windows}


def exact_dot(query: dict[str, float], document: dict[str, float]) -> float:
    common = [k for k in query if k in document]
    weights = stored_precision(np.array([document[k] for k in common])).tolist()
    return math.fsum(query[k] * w for k, w in zip(common, weights, strict=True))


def test_the_cli_creates_a_passages_index_and_ingests_into_it(
    cluster, index_name, search_model_dir, tmp_path
):
    from click.testing import CliRunner

    from splade_es.cli import main

    def cli(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    where = ["--url", cluster.url, "--index", index_name]
    created = cli("create-index", *where, "--passages", "--replicas", "0")
    assert created.exit_code == 0, created.output
    assert "nested passages" in created.output

    windows = ["--window", WINDOW, "--overlap", OVERLAP, "--max-windows", 6]
    ingest_command = ["ingest", *where, "-m", search_model_dir, "--input", docs, *windows]
    wrong = cli(*ingest_command, "-q")  # truncate (the default) into a passages index
    assert wrong.exit_code == 2
    assert "holds passages" in wrong.output and "Traceback" not in wrong.output

    result = cli(*ingest_command, "--long-documents", "passages", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["indexed"] == len(DOCS) and report["long_documents"] == "passages"
    assert report["truncated"] == report["hit_max_windows"] >= 1
    assert f"{report['truncated']} document(s) lost their text past --max-windows" in " ".join(
        result.output.split()
    )

    too_long = cli(*ingest_command, "--long-documents", "passages", "--window", 10_000)
    assert too_long.exit_code == 2 and "window" in too_long.output

    cluster.client.indices.refresh(index=index_name)
    found = cli("search", *where, "-m", search_model_dir, "--json", "learned sparse weights")
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["hits"]
    assert hits and {hit["id"] for hit in hits} <= {doc["_id"] for doc in DOCS}
    for hit in hits:  # the best passage scores the document; its tokens are the best's
        best = hit["passages"][0]
        assert best["score"] == pytest.approx(hit["score"], rel=1e-6)
        assert best["start"] < best["end"] and hit["top_tokens"]
    table = cli("search", *where, "-m", search_model_dir, "learned sparse weights")
    assert table.exit_code == 0 and "best passage" in table.output
