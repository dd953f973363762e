"""One query per call: ``encode_queries([text])`` latency, splade-es against its baselines.

Rows, all in one process and interleaved round by round (so that a noisy minute hits every row
alike), each at 1 and 2 torch threads:

* sentence-transformers ``SparseEncoder.encode_query([text])`` on the same checkpoint;
* splade-es with transformers' forward and the block-by-block bf16 screen (its path before
  the fast paths: ``fast_forward`` and the fused screen switched off on the loaded encoder);
* splade-es as shipped (``FastForward`` + ``FusedScreen``).

It also checks that splade-es and sentence-transformers give the same vectors (same non-zero
token ids, values within float rounding) for every query timed. ``--batch-sizes 8,32`` adds a
table of several queries per call (a micro-batch, as ``serve`` forms them), same rows.

    python benchmarks/query_latency.py --model ../shared/models/splade-tiny \\
        --queries ../shared/data/scifact/queries.jsonl --n 600
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def load_queries(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line, _ in zip(handle, range(n), strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("SPLADE_ES_TEST_MODEL"))
    parser.add_argument("--queries", required=True, help="BEIR queries.jsonl")
    parser.add_argument("--n", type=int, default=600, help="queries timed per row")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to run")
    parser.add_argument(
        "--batch-sizes", default="", help="also time calls of this many queries, e.g. 8,32"
    )
    args = parser.parse_args()
    if not args.model:
        parser.error("--model (or SPLADE_ES_TEST_MODEL) is required")

    import numpy as np
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from sentence_transformers import SparseEncoder

    from splade_es import SpladeEncoder

    queries = load_queries(Path(args.queries), args.n + 30)
    warmup, timed = queries[:30], queries[30:]
    reference = SparseEncoder(args.model, device="cpu")
    shipped = SpladeEncoder.from_pretrained(args.model, device="cpu")
    previous = SpladeEncoder.from_pretrained(args.model, device="cpu")
    previous.fast_forward = None  # transformers' forward
    previous.head.fused = None  # the block-by-block screen
    if shipped.fast_forward is None or shipped.head.fused is None:
        print("note: a fast path is unavailable here (model kind, or no oneDNN bf16 on this CPU)")

    rows: dict[str, Callable[[list[str]], object]] = {
        "sentence-transformers encode_query": lambda qs: reference.encode_query(
            qs, batch_size=len(qs)
        ),
        "splade-es, transformers forward + block screen": lambda qs: previous.encode_queries(
            qs, batch_size=len(qs)
        ),
        "splade-es (FastForward + FusedScreen)": lambda qs: shipped.encode_queries(
            qs, batch_size=len(qs)
        ),
    }
    thread_counts = [int(t) for t in args.threads.split(",")]
    times: dict[tuple[str, int], list[float]] = {
        (name, t): [] for name in rows for t in thread_counts
    }
    per_round = max(1, len(timed) // args.rounds)
    with torch.inference_mode():
        for round_start in range(0, len(timed), per_round):
            chunk = timed[round_start : round_start + per_round]
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for name, encode in rows.items():
                    for q in warmup[:5]:
                        encode([q])
                    for q in chunk:
                        start = time.perf_counter()
                        encode([q])
                        times[(name, threads)].append((time.perf_counter() - start) * 1000)

    # Same vectors: token ids exactly, weights within float rounding.
    worst, same_support = 0.0, 0
    for q in timed:
        mine = shipped.encode_queries([q])
        ids, weights = mine.row(0)
        theirs = reference.encode_query([q], convert_to_tensor=True).coalesce()
        their_ids = theirs.indices()[-1].numpy()
        their_weights = theirs.values().float().numpy()
        order = np.argsort(their_ids)
        if np.array_equal(ids, their_ids[order]):
            same_support += 1
            if len(ids):
                worst = max(worst, float(np.abs(weights - their_weights[order]).max()))

    tokens = statistics.mean(len(shipped.tokenizer(q)["input_ids"]) for q in timed)
    table = Table(
        title=f"encode one query per call: {escape(Path(args.model).name)}, {len(timed)} queries "
        f"({tokens:.1f} tokens on average), {args.rounds} interleaved rounds"
    )
    for column in ("implementation", "torch threads", "p50 ms", "p90 ms", "min ms", "vs s-t p50"):
        table.add_column(column, justify="right")
    for threads in thread_counts:
        base = statistics.median(times[("sentence-transformers encode_query", threads)])
        for name in rows:
            sample = sorted(times[(name, threads)])
            p50 = statistics.median(sample)
            table.add_row(
                name,
                str(threads),
                f"{p50:.2f}",
                f"{sample[int(0.9 * (len(sample) - 1))]:.2f}",
                f"{sample[0]:.2f}",
                f"{base / p50:.2f}x",
            )
    console = Console(width=140)
    console.print(table)
    console.print(
        f"same non-zero ids as sentence-transformers: {same_support}/{len(timed)} queries; "
        f"largest weight difference {worst:.2e}"
    )
    sizes = [int(n) for n in args.batch_sizes.split(",") if n]
    if sizes:
        console.print(batch_table(rows, timed, sizes, thread_counts))


def batch_table(rows, texts: list[str], sizes: list[int], thread_counts: list[int]):
    """ms per call and per query for calls of ``sizes`` queries (distinct texts each call)."""
    import torch
    from rich.table import Table

    table = Table(title="several queries per call (a micro-batch): p50 over the calls")
    for column in ("implementation", "torch threads", "queries/call", "ms/call", "ms/query"):
        table.add_column(column, justify="right")
    with torch.inference_mode():
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for size in sizes:
                calls = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]
                for name, encode in rows.items():
                    encode(calls[0])  # warm-up (and kernel compilation for this shape)
                    spent = []
                    for call in calls[1:]:
                        start = time.perf_counter()
                        encode(call)
                        spent.append((time.perf_counter() - start) * 1000)
                    p50 = statistics.median(spent)
                    table.add_row(name, str(threads), str(size), f"{p50:.2f}", f"{p50 / size:.3f}")
    return table


if __name__ == "__main__":
    main()
