"""Relevance through the cluster versus the exact in-memory SPLADE ranking, in one run.

Ingests a BEIR collection with ``splade_es.ingest`` (into the osmem emulator, a real in-process
OpenSearch node with ``--node 2.19`` / ``--node 3.3``, or ``--url``),
runs every judged query through the cluster with ``splade_es.evaluate``, and scores the same
queries exactly in memory (full-precision dot products over all documents). The two SPLADE
rows should agree to within the engines' 9-bit storage precision.

    python benchmarks/relevance.py --model ../shared/models/splade-tiny \
        --data ../shared/data/scifact [--modes splade,bm25,hybrid] [--url http://... | --node 2.19]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splade_es import ConnectionConfig, QueryBuilder, SpladeEncoder, connect
from splade_es.beir import beir_paths, read_corpus, read_qrels, read_queries
from splade_es.evaluate import evaluate, in_memory_run, score_run
from splade_es.ingest import IngestConfig, ingest_file


@contextmanager
def emulator():
    code = (
        "from osmem_server import OsmemServer; import sys\n"
        "with OsmemServer.start(japanese=False) as s:\n"
        "    print(s.url, flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("SPLADE_ES_TEST_MODEL"))
    parser.add_argument("--data", default=os.environ.get("SPLADE_ES_BENCH_DATA"))
    parser.add_argument("--modes", default="splade,bm25")
    parser.add_argument("--url", help="a cluster to use instead of the osmem emulator")
    parser.add_argument(
        "--node",
        metavar="VERSION",
        help="start a real OpenSearch node of this version (tests/engines/opensearch-node)",
    )
    parser.add_argument("--index", default="splade-es-relevance")
    args = parser.parse_args()
    if not args.model or not args.data:
        parser.error("--model and --data are required")
    corpus_path, queries_path, qrels_path = beir_paths(args.data)
    queries, qrels = read_queries(queries_path), read_qrels(qrels_path)
    judged = [q for q in qrels if q in queries]
    encoder = SpladeEncoder.from_pretrained(args.model)

    started = time.perf_counter()
    docs = list(read_corpus(corpus_path))
    doc_vectors = encoder.encode_documents(
        [f"{d.get('title', '')} {d.get('text', '')}".strip() for d in docs]
    )
    exact = score_run(
        in_memory_run(
            encoder.encode_queries([queries[q] for q in judged]),
            judged,
            doc_vectors,
            [str(d["_id"]) for d in docs],
            k=100,
        ),
        {q: qrels[q] for q in judged},
    )
    in_memory_seconds = time.perf_counter() - started

    with _cluster_url(args) as url:
        cluster = connect(ConnectionConfig(hosts=(url,)))
        client = cluster.client
        if client.indices.exists(index=args.index):
            client.indices.delete(index=args.index)
        report = ingest_file(
            client,
            corpus_path,
            encoder=encoder,
            config=IngestConfig(index=args.index, create=True),
        )
        client.indices.refresh(index=args.index)
        builder = QueryBuilder.for_index(client, args.index)
        results = {}
        for mode in args.modes.split(","):
            results[mode] = evaluate(
                client, args.index, queries, qrels, encoder=encoder, builder=builder, mode=mode
            )
        where = cluster.description + (
            " (real node, in-process)" if args.node else "" if args.url else " (osmem emulator)"
        )

    table = Table(
        title=f"{Path(args.data).name}: {len(docs)} docs ({report.indexed} indexed), "
        f"{len(judged)} judged queries, {Path(args.model).name}, cluster {where}"
    )
    for col in ("run", "nDCG@10", "MRR@10", "R@100", "search p50 ms", "search p95 ms"):
        table.add_column(col, justify="right")
    table.add_row(
        "SPLADE exact, in memory",
        f"{exact['ndcg@10']:.4f}",
        f"{exact['mrr@10']:.4f}",
        f"{exact['recall@100']:.4f}",
        "",
        "",
    )
    for mode, result in results.items():
        table.add_row(
            f"{mode} through the cluster",
            f"{result.metrics['ndcg@10']:.4f}",
            f"{result.metrics['mrr@10']:.4f}",
            f"{result.metrics['recall@100']:.4f}",
            f"{result.latency_ms['search'].p50:.1f}",
            f"{result.latency_ms['search'].p95:.1f}",
        )
    console = Console(width=150)
    console.print(table)
    if "splade" in results:
        gap = results["splade"].metrics["ndcg@10"] - exact["ndcg@10"]
        console.print(
            f"cluster - exact nDCG@10 = {gap:+.5f} (in-memory run {in_memory_seconds:.0f} s)"
        )


@contextmanager
def _cluster_url(args: argparse.Namespace):
    if args.url:
        yield args.url
    elif args.node:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.engines import opensearch_node

        with opensearch_node.run(args.node) as url:
            yield url
    else:
        with emulator() as url:
            yield url


if __name__ == "__main__":
    main()
