"""Issue 7: Ray Data (local cluster) and Spark (local[2]) encode and index against the test
cluster: every input document exactly once, vectors identical to single-machine encoding, and
a worker killed mid-run is retried by the engine without duplicates. Issue 24: long documents
through both (maxpool and passages), with the summaries' window counts."""

from __future__ import annotations

import json
import logging
import math
import os
import sys

import numpy as np
import pytest

from splade_es import ConnectionConfig, QueryBuilder, SpladeEncoder
from splade_es.encoding.windows import WindowPolicy
from splade_es.exceptions import ConfigurationError
from splade_es.scaleout import CRASH_ONCE_ENV
from splade_es.tokens import TokenCodec
from tests.integration.corpus import document_text, make_documents
from tests.vectors import assert_same_vector

pytestmark = pytest.mark.integration

N_DOCS = 120


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture(scope="module")
def docs():
    # Ray/Spark rows: BEIR-style ids; one row without text to exercise dead letters.
    rows = [
        {"_id": d["id"], "title": d["title"], "text": d["text"], "lang": d["lang"]}
        for d in make_documents(N_DOCS, seed=31)
    ]
    rows.append({"_id": "no-text", "title": "", "text": "", "lang": "en"})
    return rows


def expected_vectors(encoder, docs) -> dict[str, dict[str, float]]:
    good = [d for d in docs if d["text"]]
    batch = encoder.encode_documents([document_text(d) for d in good])
    codec = TokenCodec(encoder.vocab)
    return {d["_id"]: codec.encode(batch, i) for i, d in enumerate(good)}


def assert_index_holds_exactly(client, index, expected):
    client.indices.refresh(index=index)
    body = {"query": {"match_all": {}}, "size": 10000}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    ids = [h["_id"] for h in hits]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == set(expected)
    for hit in hits:
        assert_same_vector(hit["_source"]["splade"], expected[hit["_id"]], what=hit["_id"])


@pytest.fixture
def crash_marker(tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    return marker


# ---------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


def test_ray_ingest_indexes_every_document_once_despite_a_crashed_worker(
    cluster, index_name, encoder, docs, search_model_dir, crash_marker, ray_local, tmp_path
):
    from splade_es.ray import ingest

    ray_local.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 2**20,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    dataset = ray_local.data.from_items(docs)
    summary = ingest(
        dataset,
        index=index_name,
        model=str(search_model_dir),
        client_config=ConnectionConfig(hosts=(cluster.url,)),
        create=True,
        workers=2,
        rows_per_task=25,
        dead_letter=str(tmp_path / "dead.jsonl"),
    )
    assert crash_marker.exists(), "the fault was not injected"
    assert summary.total.read == N_DOCS + 1
    assert summary.total.indexed == N_DOCS and summary.total.dead_lettered == 1
    assert sum(w.read for w in summary.workers.values()) == N_DOCS + 1
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [d["id"] for d in dead] == ["no-text"]  # once, with the id that was read
    assert_index_holds_exactly(cluster.client, index_name, expected_vectors(encoder, docs))


# ---------------------------------------------------------------------- Spark
@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2,3]")  # 2 cores, a failed task is retried
        .appName("splade-es-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    yield session
    session.stop()


def test_spark_encode_gives_the_single_machine_vectors(spark, encoder, docs, search_model_dir):
    from splade_es import spark as splade_spark

    df = spark.createDataFrame(docs[:N_DOCS]).repartition(3)
    encoded = splade_spark.encode(df, model=str(search_model_dir), text_cols=["title", "text"])
    rows = {row["_id"]: row["splade"] for row in encoded.collect()}
    want = expected_vectors(encoder, docs[:N_DOCS])
    assert set(rows) == set(want)
    for doc_id, vector in rows.items():
        assert_same_vector(vector, want[doc_id], what=doc_id)


def test_spark_write_indexes_every_document_once_despite_a_crashed_worker(
    cluster, index_name, encoder, docs, search_model_dir, spark, crash_marker, tmp_path
):
    from splade_es import spark as splade_spark

    df = spark.createDataFrame(docs).repartition(4)
    summary = splade_spark.write(
        df,
        index=index_name,
        model=str(search_model_dir),
        client_config=ConnectionConfig(hosts=(cluster.url,)),
        create=True,
        bulk_docs=10,
        dead_letter_dir=str(tmp_path / "dead"),
    )
    assert crash_marker.exists(), "the fault was not injected"
    assert summary.total.read == N_DOCS + 1
    assert summary.total.indexed == N_DOCS and summary.total.dead_lettered == 1
    assert [d["id"] for d in summary.dead_letters] == ["no-text"]
    assert_index_holds_exactly(cluster.client, index_name, expected_vectors(encoder, docs))


# ---------------------------------------------------------------------- long documents (issue 24)
# The tiny search model with 16-token windows (14 content tokens, 4 shared): a dozen words
# make a long document. Each scale-out path is compared with what the encoder makes of the
# same texts in memory (encode_documents maxpool / encode_passages), and its summary with the
# windows and truncation those batches report.
WINDOW, OVERLAP, MAX_WINDOWS = 16, 4, 6


@pytest.fixture(scope="module")
def long_docs():
    rows = []
    for i in range(14):
        parts = make_documents(1 + (i * 7) % 16, seed=500 + i)
        rows.append(
            {
                "_id": f"long-{i}",
                "title": parts[0]["title"],
                "text": " ".join(p["text"] for p in parts),
            }
        )
    rows.append({"_id": "short", "title": "tax", "text": "depreciation"})
    return rows


def window_options() -> dict:
    return {"window": WINDOW, "overlap": OVERLAP, "max_windows": MAX_WINDOWS}


def expected_passages(encoder, docs):
    """Per id, the passages ingest would index (vector keyed as the index keys them, span)."""
    batch = encoder.encode_passages([document_text(d) for d in docs], **window_options())
    codec = TokenCodec(encoder.vocab)
    out = {}
    for i, doc in enumerate(docs):
        out[doc["_id"]] = [
            (codec.encode(batch.passages, p), *map(int, batch.spans[p]))
            for p in batch.passage_range(i)
        ]
    return out, batch


def assert_long_document_counts(summary, windows, truncated, mode):
    """The summary's counts are the encoder's: windows per document and truncation."""
    windows = np.asarray(windows)
    assert summary.long_documents == mode
    assert summary.total.truncated == int(np.count_nonzero(truncated)) >= 1
    assert summary.total.hit_max_windows == summary.total.truncated
    assert summary.total.over_one_window == int((windows > 1).sum()) >= 10
    assert summary.total.windows == int(windows.sum())
    assert summary.windows_mean == pytest.approx(windows.mean(), abs=1e-3)
    assert summary.windows_p99 == int(np.sort(windows)[math.ceil(0.99 * len(windows)) - 1])
    assert summary.windows_p99 == MAX_WINDOWS
    assert summary.to_json()["total"]["windows"] == int(windows.sum())


def test_ray_ingest_indexes_passages_nested_and_counts_windows(
    cluster, index_name, encoder, long_docs, search_model_dir, ray_local
):
    from splade_es.ray import ingest

    ray_local.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 2**20,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    summary = ingest(
        ray_local.data.from_items(long_docs),
        index=index_name,
        model=str(search_model_dir),
        client_config=ConnectionConfig(hosts=(cluster.url,)),
        create=True,
        workers=2,
        rows_per_task=4,  # several actors' batches to merge
        long_documents="passages",
        **window_options(),
    )
    want, batch = expected_passages(encoder, long_docs)
    assert summary.total.read == summary.total.indexed == len(long_docs)
    assert summary.total.batches >= 4
    assert_long_document_counts(summary, batch.windows, batch.truncated, "passages")

    assert QueryBuilder.for_index(cluster.client, index_name).passages
    cluster.client.indices.refresh(index=index_name)
    body = {"query": {"match_all": {}}, "size": 100}
    hits = cluster.client.search(index=index_name, body=body)["hits"]["hits"]
    assert sorted(h["_id"] for h in hits) == sorted(want)
    for hit in hits:
        stored = hit["_source"]["splade"]
        assert len(stored) == len(want[hit["_id"]]) >= 1
        for passage, (vector, start, end) in zip(stored, want[hit["_id"]], strict=True):
            assert (passage["start"], passage["end"]) == (start, end)
            assert_same_vector(passage["vector"], vector, what=hit["_id"])


def test_spark_encode_gives_maxpool_vectors_and_passage_structs(
    spark, encoder, long_docs, search_model_dir
):
    from pyspark.sql.types import MapType

    from splade_es import spark as splade_spark

    df = spark.createDataFrame(long_docs).repartition(3)
    texts = [document_text(d) for d in long_docs]
    codec = TokenCodec(encoder.vocab)

    pooled = splade_spark.encode(
        df,
        model=str(search_model_dir),
        text_cols=["title", "text"],
        long_documents="maxpool",
        **window_options(),
    )
    assert isinstance(pooled.schema["splade"].dataType, MapType)
    want = encoder.encode_documents(texts, long_documents="maxpool", **window_options())
    assert want.windows is not None and int(want.windows.max()) == MAX_WINDOWS
    got = {row["_id"]: row["splade"] for row in pooled.collect()}
    assert set(got) == {d["_id"] for d in long_docs}
    for i, doc in enumerate(long_docs):
        assert_same_vector(got[doc["_id"]], codec.encode(want, i), what=doc["_id"])
    # Not the first window alone: maxpool read the rest of the text.
    first = encoder.encode_documents(texts, window=WINDOW, long_documents="truncate")
    assert got["long-1"] != codec.encode(first, 1)

    passages = splade_spark.encode(
        df,
        model=str(search_model_dir),
        text_cols=["title", "text"],
        output_col="passages",
        long_documents="passages",
        **window_options(),
    )
    assert passages.schema["passages"].dataType == splade_spark.passages_spark_type()
    assert passages.schema["passages"].dataType.simpleString() == (
        "array<struct<vector:map<string,float>,start:bigint,end:bigint>>"
    )
    expected, _ = expected_passages(encoder, long_docs)
    rows = {row["_id"]: row for row in passages.collect()}
    for doc_id, want_passages in expected.items():
        assert rows[doc_id]["splade_error"] is None
        got_passages = rows[doc_id]["passages"]
        assert len(got_passages) == len(want_passages)
        for passage, (vector, start, end) in zip(got_passages, want_passages, strict=True):
            assert (passage["start"], passage["end"]) == (start, end)
            assert_same_vector(passage["vector"], vector, what=doc_id)


def test_spark_write_indexes_maxpool_vectors_and_counts_windows(
    cluster, index_name, encoder, long_docs, search_model_dir, spark, caplog
):
    from splade_es import spark as splade_spark

    df = spark.createDataFrame(long_docs).repartition(3)
    with caplog.at_level(logging.WARNING, logger="splade_es.scaleout"):
        summary = splade_spark.write(
            df,
            index=index_name,
            model=str(search_model_dir),
            client_config=ConnectionConfig(hosts=(cluster.url,)),
            create=True,
            bulk_docs=4,
            long_documents=WindowPolicy("maxpool", window=WINDOW, overlap=OVERLAP),
            max_windows=MAX_WINDOWS,  # replaces the policy's own (64)
        )
    # Never silent: the job's total, on the driver.
    said = f"{summary.total.truncated} documents lost their text past max_windows"
    assert said in caplog.text
    texts = [document_text(d) for d in long_docs]
    want = encoder.encode_documents(texts, long_documents="maxpool", **window_options())
    assert want.windows is not None and want.truncated is not None
    assert summary.total.read == summary.total.indexed == len(long_docs)
    assert_long_document_counts(summary, want.windows, want.truncated, "maxpool")
    codec = TokenCodec(encoder.vocab)
    expected = {d["_id"]: codec.encode(want, i) for i, d in enumerate(long_docs)}
    assert_index_holds_exactly(cluster.client, index_name, expected)


def test_spark_write_indexes_passages_nested(
    cluster, index_name, encoder, long_docs, search_model_dir, spark
):
    from splade_es import spark as splade_spark

    summary = splade_spark.write(
        spark.createDataFrame(long_docs).repartition(2),
        index=index_name,
        model=str(search_model_dir),
        client_config=ConnectionConfig(hosts=(cluster.url,)),
        create=True,
        long_documents="passages",
        **window_options(),
    )
    want, batch = expected_passages(encoder, long_docs)
    assert summary.total.indexed == len(long_docs)
    assert_long_document_counts(summary, batch.windows, batch.truncated, "passages")
    assert QueryBuilder.for_index(cluster.client, index_name).passages
    cluster.client.indices.refresh(index=index_name)
    body = {"query": {"match_all": {}}, "size": 100}
    hits = cluster.client.search(index=index_name, body=body)["hits"]["hits"]
    assert sorted(h["_id"] for h in hits) == sorted(want)
    for hit in hits:
        stored = hit["_source"]["splade"]
        assert [(p["start"], p["end"]) for p in stored] == [w[1:] for w in want[hit["_id"]]]
        for passage, (vector, _, _) in zip(stored, want[hit["_id"]], strict=True):
            assert_same_vector(passage["vector"], vector, what=hit["_id"])


def test_spark_write_refuses_passages_into_a_one_vector_index(
    cluster, index_name, search_model_dir, spark, long_docs
):
    from splade_es import create_index
    from splade_es import spark as splade_spark

    create_index(cluster.client, index_name, replicas=0)
    with pytest.raises(ConfigurationError, match="holds one vector per document"):
        splade_spark.write(
            spark.createDataFrame(long_docs[:2]),
            index=index_name,
            model=str(search_model_dir),
            client_config=ConnectionConfig(hosts=(cluster.url,)),
            long_documents="passages",
        )
