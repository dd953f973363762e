"""``splade-es serve`` on loopback: translation throughput and latency with and without
micro-batching, the in-process encoder for reference, and the passthrough overhead.

    python benchmarks/serve.py --model ../shared/models/splade-tiny \
        --queries ../shared/data/scifact/queries.jsonl

1. ``POST /_splade/query`` (engine mode: no cluster reads) at concurrency 1, 8, 32, 128 against
   ``splade-es serve --max-batch 32`` and ``--max-batch 1``; the query cache is off and every
   text is distinct, so every request is encoded.
2. ``SpladeEncoder.encode_queries([text])`` in a loop, in process (no HTTP).
3. A plain ``match`` search sent straight to the cluster and through the proxy, one at a time,
   with each of uvicorn's HTTP parsers (serve runs h11: httptools drops the body of a request
   offering an h2c upgrade, see ``serve.app.SERVER_OPTIONS``).
4. ``--only long``: encoding a 12 MB text (``"token " * 2,000,000``, issue 28) and its first
   part, in process: the encoder tokenizes a bounded prefix, so both take about as long.
5. ``--only hol``: head-of-line blocking. One client sends long texts (0.8 MB each, 16 at a
   time) to ``/_splade/encode`` while another sends one-word queries one after another; the
   small queries' latency with and without the flood.

``--only`` picks sections (translate, passthrough, long, hol; default all).

The cluster is an ``osmem-server`` emulator started here unless ``--url`` names one. Each
proxy runs in its own process (``python -m splade_es.cli serve``); the load comes from this
process (aiohttp). Every level is bounded by ``--requests`` and ``--seconds``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

LEVELS = (1, 8, 32, 128)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_queries(path: Path | None, n: int) -> list[str]:
    texts: list[str] = []
    if path is not None and path.exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                texts.append(json.loads(line)["text"])
    base = list(dict.fromkeys(texts)) or ["what is the tax depreciation of a rental property"]
    # Distinct texts, so that no request can be served by a cache.
    return [f"{base[i % len(base)]} {i}" for i in range(n)]


# serve's app under uvicorn with the HTTP parser named (the CLI always runs h11).
_WITH_PARSER = """
import sys, uvicorn
from splade_es.connect import ConnectionConfig
from splade_es.serve import ServeConfig, create_app
from splade_es.serve.app import SERVER_OPTIONS
url, model, port, http = sys.argv[1:]
config = ServeConfig(connection=ConnectionConfig(hosts=(url,)), model=model, cache_size=0)
options = {**SERVER_OPTIONS, "http": http}
uvicorn.run(create_app(config), host="127.0.0.1", port=int(port), log_level="warning", **options)
"""


@contextlib.contextmanager
def serve(
    model: str,
    url: str,
    max_batch: int,
    max_wait_ms: float,
    threads: int | None = None,
    parser: str | None = None,
) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "splade_es.cli", "serve", "--url", url, "--model", model,
        "--listen", f"127.0.0.1:{port}", "--max-batch", str(max_batch),
        "--max-wait-ms", str(max_wait_ms), "--cache-size", "0", "--log-level", "warning",
    ]  # fmt: skip
    if threads:
        command += ["--threads", str(threads)]
    if parser:
        command = [sys.executable, "-c", _WITH_PARSER, url, model, str(port), parser]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listen = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-2000:])
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("splade-es serve did not start")
            time.sleep(0.2)
        yield listen
    finally:
        process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        process.wait(timeout=60)


async def load(
    url: str, path: str, bodies: list[bytes], concurrency: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    cursor = iter(bodies)
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in cursor:
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                async with session.post(
                    url + path, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{path}: {response.status}")
                latencies.append(time.perf_counter() - started)

        # Warm the connections and the model before timing.
        warm = [
            session.post(url + path, data=b, headers={"Content-Type": "application/json"})
            for b in bodies[:concurrency]
        ]
        for request in warm:
            async with request as response:
                await response.read()
        cursor = iter(bodies[concurrency:])
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summary(latencies, elapsed)


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "rps": len(ordered) / elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def in_process(model: str, texts: list[str], seconds: float, threads: int) -> dict[str, float]:
    import torch

    from splade_es import SpladeEncoder

    torch.set_num_threads(threads)
    encoder = SpladeEncoder.from_pretrained(model)
    for text in texts[:20]:
        encoder.encode_queries([text])
    latencies = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    for text in texts[20:]:
        t = time.perf_counter()
        encoder.encode_queries([text])
        latencies.append(time.perf_counter() - t)
        if t > deadline:
            break
    return summary(latencies, time.perf_counter() - started)


async def passthrough(cluster: str, proxy: str, n: int) -> tuple[dict, dict]:
    body = json.dumps({"query": {"match": {"title": "tax"}}, "size": 10}).encode()
    headers = {"Content-Type": "application/json"}
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for base in (cluster, proxy):
            for _ in range(20):  # warm-up
                async with session.post(f"{base}/bench/_search", data=body, headers=headers) as r:
                    await r.read()
            latencies = []
            started = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                async with session.post(f"{base}/bench/_search", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - t)
            results.append(summary(latencies, time.perf_counter() - started))
    return results[0], results[1]


def long_text_rows(model: str, seconds: float) -> list[tuple[str, dict[str, float]]]:
    """Encoding the issue's 12 MB text and its first part (the prefix the model reads)."""
    from splade_es import SpladeEncoder

    encoder = SpladeEncoder.from_pretrained(model)
    text = "token " * 2_000_000
    part = text[: 8 * encoder.max_length]
    encoder.encode_queries(["warm up"])
    rows = []
    for name, sample in ((f"encode_queries([{len(text)} characters])", text), (
        f"encode_queries([its first {len(part)} characters])", part,
    )):  # fmt: skip
        latencies = []
        started = time.perf_counter()
        while len(latencies) < 20 and time.perf_counter() - started < seconds:
            t = time.perf_counter()
            encoder.encode_queries([sample])
            latencies.append(time.perf_counter() - t)
        rows.append((name, summary(latencies, time.perf_counter() - started)))
    return rows


async def head_of_line(proxy: str, n_small: int, seconds: float) -> tuple[dict, dict, float]:
    """Small queries' latency alone, then while a flood of long texts runs."""
    base = "token tax law depreciation " * 30_000  # 0.8 MB, under --max-text-chars
    long_texts = (f"{i} {base}" for i in range(400))  # made one at a time
    async with aiohttp.ClientSession() as session:

        async def encode(text: str) -> float:
            started = time.perf_counter()
            async with session.post(f"{proxy}/_splade/encode", json={"texts": [text]}) as r:
                await r.read()
                assert r.status == 200, r.status
            return time.perf_counter() - started

        async def small_queries(tag: str) -> dict[str, float]:
            latencies = []
            started = time.perf_counter()
            for i in range(n_small):
                latencies.append(await encode(f"tax law {tag} {i}"))
                if time.perf_counter() - started > seconds:
                    break
            return summary(latencies, time.perf_counter() - started)

        alone = await small_queries("alone")
        queue = long_texts
        stop = False

        async def flooder() -> int:
            sent = 0
            for text in queue:
                if stop:
                    break
                await encode(text)
                sent += 1
            return sent

        flood = [asyncio.ensure_future(flooder()) for _ in range(16)]
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        flooded = await small_queries("flooded")
        elapsed = time.perf_counter() - started
        stop = True
        sent = sum(await asyncio.gather(*flood))
    return alone, flooded, sent / elapsed


def prepare_index(url: str) -> None:
    from opensearchpy import OpenSearch, helpers

    client = OpenSearch(hosts=[url])
    if not client.indices.exists(index="bench"):
        client.indices.create(index="bench")
        docs = [{"_index": "bench", "_id": str(i), "title": f"tax law {i}"} for i in range(200)]
        helpers.bulk(client, docs, refresh=True)
    client.close()


@contextlib.contextmanager
def cluster_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from osmem_server import OsmemServer

    with OsmemServer.start(japanese=False) as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--queries", type=Path, help="BEIR queries.jsonl for realistic texts")
    parser.add_argument("--url", help="cluster URL (default: an osmem emulator started here)")
    parser.add_argument("--requests", type=int, default=2000, help="max requests per level")
    parser.add_argument("--seconds", type=float, default=10.0, help="max seconds per level")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument(
        "--threads", type=int, help="the proxy's torch threads (default: serve's own default)"
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    parser.add_argument(
        "--only",
        default="translate,passthrough,long,hol",
        help="sections to run: translate, passthrough, long, hol",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    levels = [int(x) for x in args.levels.split(",")]
    texts = load_queries(args.queries, args.requests * (len(levels) + 1) * 2 + 200)
    rows = [
        "| measurement | concurrency | requests | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, c: object, s: dict[str, float]) -> None:
        line = f"| {name} | {c} | {s['n']} | {s['rps']:.1f} | {s['p50']:.2f} | {s['p99']:.2f} |"
        rows.append(line)
        print(line, flush=True)

    print("\n".join(rows), flush=True)
    offset = 0
    notes = []
    if "long" in only:
        for name, stats in long_text_rows(args.model, args.seconds):
            row(name, 1, stats)
    with cluster_url(args.url) as url:
        prepare_index(url)
        if "hol" in only:
            with serve(args.model, url, 32, args.max_wait_ms, args.threads) as proxy:
                alone, flooded, rate = asyncio.run(
                    head_of_line(proxy, min(args.requests, 200), args.seconds)
                )
            row("one-word /_splade/encode, alone", 1, alone)
            row(f"one-word /_splade/encode, during a flood ({rate:.1f} long texts/s)", 1, flooded)
        if "passthrough" in only:
            for parser in ("h11", "httptools"):
                with serve(args.model, url, 32, args.max_wait_ms, parser=parser) as proxy:
                    direct, proxied = asyncio.run(passthrough(url, proxy, min(args.requests, 500)))
                row("match query, direct to cluster", 1, direct)
                row(f"match query, through the proxy ({parser})", 1, proxied)
                notes.append(
                    f"Passthrough overhead with {parser} (p50, proxy - direct): "
                    f"{proxied['p50'] - direct['p50']:.2f} ms"
                )
        for max_batch in (32, 1) if "translate" in only else ():
            with serve(args.model, url, max_batch, args.max_wait_ms, args.threads) as proxy:
                for c in levels:
                    chunk = texts[offset : offset + args.requests + c]
                    offset += len(chunk)
                    bodies = [
                        json.dumps(
                            {"text": t, "engine": "opensearch", "version": "2.19.0", "k": 10}
                        ).encode()
                        for t in chunk
                    ]
                    stats = asyncio.run(load(proxy, "/_splade/query", bodies, c, args.seconds))
                    row(f"/_splade/query, --max-batch {max_batch}", c, stats)
        for threads in sorted({1, os.cpu_count() or 1}) if "translate" in only else ():
            stats = in_process(args.model, texts[offset:], args.seconds, threads)
            row(f"encode_queries([text]) in process, {threads} torch thread(s)", 1, stats)
    rows.append("")
    rows.extend(notes)
    print("\n".join(notes))
    if args.output:
        args.output.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
