"""Metrics, in-memory reference runs and BEIR readers."""

from __future__ import annotations

import io
import math

import pytest

from splade_es.beir import read_qrels, read_queries
from splade_es.evaluate import Latency, in_memory_run, overlap_at, score_run
from splade_es.exceptions import InputError
from splade_es.sparse import SparseBatch, Vocabulary


def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d9": 1}}
    run = {"q1": {"d2": 3.0, "d1": 2.0, "d3": 1.0}, "q2": {"d5": 1.0}}
    metrics = score_run(run, qrels)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert metrics["ndcg@10"] == pytest.approx((dcg / idcg + 0.0) / 2)
    assert metrics["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["recall@100"] == pytest.approx((1.0 + 0.0) / 2)


def test_a_judged_query_without_results_counts_as_a_miss():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert score_run({"q1": {"d1": 1.0}}, qrels)["ndcg@10"] == pytest.approx(0.5)


def test_in_memory_run_is_the_exact_dot_product_ranking():
    vocab = Vocabulary(["a", "b", "c"])
    docs = SparseBatch.from_rows([([0], [1.0]), ([0, 1], [0.5, 3.0]), ([2], [9.0])], vocab=vocab)
    queries = SparseBatch.from_rows([([0, 1], [2.0, 1.0])], vocab=vocab)
    run = in_memory_run(queries, ["q"], docs, ["d0", "d1", "d2"], k=2)
    assert run == {"q": {"d1": 4.0, "d0": 2.0}}  # d2 shares no token: not retrieved


def test_latency_percentiles():
    lat = Latency.of([float(i) for i in range(1, 101)])
    assert lat.p50 == pytest.approx(50.5) and lat.p95 == pytest.approx(95.05)


def test_beir_readers_and_their_errors():
    queries = read_queries(io.StringIO('{"_id": "1", "text": "a b"}\n\n{"_id": 2, "text": "c"}\n'))
    assert queries == {"1": "a b", "2": "c"}
    with pytest.raises(InputError, match=r"line 1.*'text'"):
        read_queries(io.StringIO('{"_id": "1"}\n'))
    with pytest.raises(InputError, match="line 2: invalid JSON"):
        read_queries(io.StringIO('{"_id": "1", "text": "x"}\n{oops\n'))
    qrels = read_qrels(io.StringIO("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n"))
    assert qrels == {"q1": {"d1": 1, "d2": 2}}
    assert read_qrels(io.StringIO("q1 0 d1 1\n")) == {"q1": {"d1": 1}}
    with pytest.raises(InputError, match="not an integer"):
        read_qrels(io.StringIO("query-id\tcorpus-id\tscore\nq\td\tx\n"))


def test_overlap_counts_shared_top_documents_of_the_reference():
    reference = {"q1": {"a": 3.0, "b": 2.0}, "q2": {"c": 1.0}, "q3": {}}
    assert overlap_at(reference, reference) == 1.0  # short result lists are not penalised
    run = {"q1": {"b": 5.0, "z": 1.0}, "q2": {"y": 1.0}}
    assert overlap_at(run, reference, k=10) == pytest.approx((1 / 2 + 0) / 2)
