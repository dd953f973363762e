"""Scale-out overhead: Ray Data and Spark (local mode) with 1 and 2 workers, beside the
single-process ``ingest``, all into the same loopback stand-in cluster (acknowledges every
bulk item at once, so the cluster is not what is measured).

On a 2-core machine 2 workers cannot beat 1 (the encoder already uses both cores); the
point is the overhead of the engines. Times include each worker loading the model; Ray and
Spark start-up are excluded (printed separately).

    python benchmarks/scaleout.py --model ../shared/models/splade-tiny \
        --data ../shared/data/scifact --docs 600
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def load_rows(data: Path, n: int) -> list[dict]:
    rows = []
    with open(data / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            rows.append(
                {"_id": str(doc["_id"]), "title": doc.get("title", ""), "text": doc.get("text", "")}
            )
            if len(rows) >= n:
                break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("SPLADE_ES_TEST_MODEL"))
    parser.add_argument("--data", default=os.environ.get("SPLADE_ES_BENCH_DATA"))
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--engines", default="single,ray,spark")
    args = parser.parse_args()
    if not args.model or not args.data:
        parser.error("--model and --data are required")

    from rich.console import Console
    from rich.table import Table

    from splade_es import ConnectionConfig, SpladeEncoder, connect
    from splade_es.ingest import IngestConfig, ingest

    rows = load_rows(Path(args.data), args.docs)
    sink = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ingest.py")), "--worker", "sink"],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = sink.stdout.readline().strip()
    config = ConnectionConfig(hosts=(url,))
    results: list[tuple[str, int, float, float]] = []  # (engine, workers, seconds, start-up)
    engines = args.engines.split(",")
    try:
        if "single" in engines:
            started = time.perf_counter()
            encoder = SpladeEncoder.from_pretrained(args.model, device="cpu")
            report = ingest(
                connect(config).client, rows, encoder=encoder, config=IngestConfig(index="single")
            )
            assert report.indexed == len(rows)
            results.append(
                ("single process (splade-es ingest)", 1, time.perf_counter() - started, 0.0)
            )
        if "ray" in engines:
            import ray

            from splade_es.ray import ingest as ray_ingest

            started = time.perf_counter()
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=200 * 2**20,
            )
            startup = time.perf_counter() - started
            for workers in (1, 2):
                started = time.perf_counter()
                summary = ray_ingest(
                    ray.data.from_items(rows),
                    index=f"ray{workers}",
                    model=args.model,
                    client_config=config,
                    workers=workers,
                    rows_per_task=100,
                    gpus_per_worker=0,
                )
                assert summary.total.indexed == len(rows)
                results.append(
                    ("Ray Data (local)", workers, time.perf_counter() - started, startup)
                )
            ray.shutdown()
        if "spark" in engines:
            os.environ["PYSPARK_PYTHON"] = sys.executable
            from pyspark.sql import SparkSession

            from splade_es import spark as splade_spark

            for workers in (1, 2):
                started = time.perf_counter()
                session = (
                    SparkSession.builder.master(f"local[{workers}]")
                    .appName("splade-es-bench")
                    .config("spark.ui.enabled", "false")
                    .getOrCreate()
                )
                df = session.createDataFrame(rows).repartition(max(2, workers * 2)).cache()
                df.count()
                startup = time.perf_counter() - started
                started = time.perf_counter()
                summary = splade_spark.write(
                    df,
                    index=f"spark{workers}",
                    model=args.model,
                    client_config=config,
                    device="cpu",
                )
                assert summary.total.indexed == len(rows)
                results.append(("Spark (local)", workers, time.perf_counter() - started, startup))
                session.stop()
    finally:
        sink.kill()

    base = len(rows) / results[0][2]
    table = Table(
        title=f"{len(rows)} docs from {Path(args.data).name}, {Path(args.model).name}, "
        f"CPU, {os.cpu_count()} cores"
    )
    for col in ("engine", "workers", "seconds", "docs/s", "vs single process", "engine start-up s"):
        table.add_column(col, justify="right")
    for engine, workers, seconds, startup in results:
        rate = len(rows) / seconds
        table.add_row(
            engine,
            str(workers),
            f"{seconds:.1f}",
            f"{rate:.1f}",
            f"{rate / base:.2f}x",
            f"{startup:.1f}" if startup else "",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
