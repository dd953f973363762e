"""Issue 4's relevance bar: through the cluster, nDCG@10 on SciFact within 0.002 of the exact
in-memory computation, with the real splade-tiny checkpoint.

Needs ``SPLADE_ES_TEST_MODEL`` (a checkpoint folder) and the BEIR data in
``SPLADE_ES_TEST_DATA`` (default: ``../shared/data`` next to the repository); CI sets both.

To keep the suite quick on the emulator (about 0.5 s a query over the whole corpus), the test
takes the first ``SPLADE_ES_EVAL_QUERIES`` judged queries (default 60) and the first
``SPLADE_ES_EVAL_DOCS`` documents (default 1,500) plus every judged document; set both to
``all`` for the whole collection. ``benchmarks/relevance.py`` prints the full comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splade_es import QueryBuilder, SpladeEncoder, create_index
from splade_es.beir import beir_paths, read_corpus, read_qrels, read_queries
from splade_es.evaluate import evaluate, in_memory_run, score_run
from tests.integration.corpus import bulk_index

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scifact() -> Path:
    folder = (
        Path(os.environ.get("SPLADE_ES_TEST_DATA", ROOT.parent / "shared" / "data")) / "scifact"
    )
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"no SciFact data at {folder} (set SPLADE_ES_TEST_DATA)")
    return folder


def test_cluster_ndcg_matches_exact_in_memory_ndcg(cluster, index_name, real_model_dir, scifact):
    corpus_path, queries_path, qrels_path = beir_paths(scifact)
    docs = [
        {"id": d["_id"], "title": d.get("title", ""), "text": d.get("text", "")}
        for d in read_corpus(corpus_path)
    ]
    queries, qrels = read_queries(queries_path), read_qrels(qrels_path)
    judged = [qid for qid in qrels if qid in queries]
    n_queries = os.environ.get("SPLADE_ES_EVAL_QUERIES", "60")
    n_docs = os.environ.get("SPLADE_ES_EVAL_DOCS", "1500")
    if n_queries != "all":
        judged = judged[: int(n_queries)]
    if n_docs != "all":
        wanted = {doc for qid in judged for doc in qrels[qid]}
        docs = [d for i, d in enumerate(docs) if i < int(n_docs) or d["id"] in wanted]
    qrels = {qid: qrels[qid] for qid in judged}
    encoder = SpladeEncoder.from_pretrained(str(real_model_dir))
    vectors = encoder.encode_documents(
        [f"{d['title']} {d['text']}".strip() for d in docs], batch_size=32
    )
    create_index(cluster.client, index_name, replicas=0)
    builder = QueryBuilder.for_index(cluster.client, index_name)
    bulk_index(cluster.client, index_name, docs, vectors, builder.codec(vectors.vocab))

    report = evaluate(
        cluster.client, index_name, queries, qrels, encoder=encoder, builder=builder, k=100
    )
    exact_run = in_memory_run(
        encoder.encode_queries([queries[q] for q in judged]),
        judged,
        vectors,
        [d["id"] for d in docs],
        k=100,
    )
    exact = score_run(exact_run, {q: qrels[q] for q in judged})
    got, want = report.metrics, exact
    print(
        f"\nSciFact ({len(docs)} docs, {report.queries} queries) on {cluster.label}: "
        f"cluster nDCG@10={got['ndcg@10']:.4f} MRR@10={got['mrr@10']:.4f} "
        f"R@100={got['recall@100']:.4f}; in-memory exact nDCG@10={want['ndcg@10']:.4f} "
        f"MRR@10={want['mrr@10']:.4f} R@100={want['recall@100']:.4f}"
    )
    assert report.queries == len(judged)
    assert report.metrics["ndcg@10"] > 0.3  # a trained model, not noise
    assert abs(report.metrics["ndcg@10"] - exact["ndcg@10"]) <= 0.002
    assert abs(report.metrics["recall@100"] - exact["recall@100"]) <= 0.01
