"""Issue 7: Ray Data (local cluster) and Spark (local[2]) encode and index against the test
cluster: every input document exactly once, vectors identical to single-machine encoding, and
a worker killed mid-run is retried by the engine without duplicates."""

from __future__ import annotations

import json
import os
import sys

import pytest

from splade_es import ConnectionConfig, SpladeEncoder
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
