"""Write-path enrichment: documents/s through ``splade-es serve --enrich`` with a client's bulk
helper, against ``splade-es ingest`` of the same documents, same machine, one run.

    python benchmarks/enrich.py --model ../shared/models/splade-tiny \
        --corpus ../shared/data/scifact/corpus.jsonl --docs 2000 --node 2.19.6

1. ``ingest``: ``splade_es.ingest.ingest`` (encode + bulk, its defaults) into index A.
2. ``proxy, helpers.bulk``: opensearch-py ``helpers.bulk`` (chunks of ``--chunk`` documents)
   through ``splade-es serve --enrich`` (a separate process, as deployed) into index B.
3. ``proxy, parallel_bulk``: the same with ``helpers.parallel_bulk`` (``--threads`` threads),
   as a loader that keeps several bulks in flight, into index C.

Every run starts from an empty index; the table gives documents/s and the ratio to ingest
(the issue's target: >= 0.8x). At the end each index must hold every document with a
non-empty vector. The cluster: ``--url``, a real OpenSearch node (``--node``), or an
``osmem-server`` emulator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import opensearchpy
import opensearchpy.helpers
from rich.console import Console
from rich.table import Table

# Appended, not prepended: the repository's tests/ (the node harness) must be importable, but a
# splade_es put first on PYTHONPATH (benchmarks/revisions.py) must stay the one imported.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from splade_es import SpladeEncoder, create_index
from splade_es.ingest import IngestConfig, ingest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_documents(path: str | None, n: int) -> list[dict]:
    docs: list[dict] = []
    if path and Path(path).exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                docs.append({"id": str(row["_id"]), "title": row.get("title") or "",
                             "text": row.get("text") or ""})  # fmt: skip
                if len(docs) == n:
                    break
    while len(docs) < n:  # no corpus: generated text
        i = len(docs)
        docs.append({"id": f"g{i}", "title": f"document {i}", "text": "tax law income " * 20})
    return docs


@contextlib.contextmanager
def serve(model: str, url: str, pattern: str, threads: int) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "splade_es.cli", "serve", "--url", url, "--model", model,
        "--listen", f"127.0.0.1:{port}", "--enrich", pattern, "--log-level", "warning",
        *(["--threads", str(threads)] if threads else []),
    ]  # fmt: skip
    # A file, not a pipe: nobody reads the proxy's log while the run goes on.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(log.read().decode()[-2000:])
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 1),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("splade-es serve did not start")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=60)


@contextlib.contextmanager
def cluster_url(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
    elif args.node:
        from tests.engines import opensearch_node

        with opensearch_node.run(args.node) as url:
            yield url
    else:
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


def check(client: opensearchpy.OpenSearch, index: str, n: int) -> str:
    """ "ok" when the index holds all ``n`` documents, each with a non-empty vector
    (``rank_features`` fields answer no ``exists`` query: the documents are read back)."""
    client.indices.refresh(index=index)
    hits = list(opensearchpy.helpers.scan(client, index=index, query={"query": {"match_all": {}}}))
    with_vector = sum(1 for h in hits if h["_source"].get("splade"))
    return "ok" if len(hits) == n == with_vector else f"{len(hits)}/{n}, {with_vector} vectors"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    shared = Path(__file__).resolve().parents[2] / "shared" / "models" / "splade-tiny"
    parser.add_argument(
        "--model",
        default=os.environ.get("SPLADE_ES_TEST_MODEL")
        or (str(shared) if shared.is_dir() else None),
    )
    parser.add_argument("--corpus", help="a BEIR corpus.jsonl (else generated documents)")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500, help="documents per bulk request")
    parser.add_argument("--threads", type=int, default=2, help="parallel_bulk threads")
    parser.add_argument(
        "--serve-threads", type=int, default=0, help="serve --threads (0: its default)"
    )
    parser.add_argument("--url", help="a cluster (default: an osmem emulator started here)")
    parser.add_argument("--node", metavar="VERSION", help="start a real OpenSearch node")
    args = parser.parse_args()
    if not args.model:
        parser.error("--model is required (or set SPLADE_ES_TEST_MODEL)")
    docs = load_documents(args.corpus, args.docs)
    encoder = SpladeEncoder.from_pretrained(args.model)
    console = Console()
    rows: list[tuple[str, float, str]] = []
    failed = False
    with cluster_url(args) as url:
        direct = opensearchpy.OpenSearch(url, timeout=300)
        names = {"ingest": "bench-enrich-ingest", "bulk": "bench-enrich-bulk",
                 "parallel": "bench-enrich-parallel"}  # fmt: skip
        for name in names.values():
            direct.indices.delete(index=name, ignore_unavailable=True)
            create_index(direct, name, replicas=0)
        try:
            started = time.perf_counter()
            ingest(
                direct,
                [{**d, "_id": d["id"]} for d in docs],
                encoder=encoder,
                config=IngestConfig(index=names["ingest"], add_id_field=False),
            )
            rows.append(("splade-es ingest", time.perf_counter() - started, names["ingest"]))
            with serve(args.model, url, "bench-enrich-*", args.serve_threads) as proxy:
                app = opensearchpy.OpenSearch(proxy, timeout=300)
                app.index(index=names["bulk"], id="warm", body={"title": "warm", "text": "up"})
                app.delete(index=names["bulk"], id="warm")
                actions = [{"_index": names["bulk"], "_id": d["id"], "_source": d} for d in docs]
                started = time.perf_counter()
                opensearchpy.helpers.bulk(app, actions, chunk_size=args.chunk, max_retries=10)
                rows.append(("serve --enrich, helpers.bulk", time.perf_counter() - started,
                             names["bulk"]))  # fmt: skip
                actions = [{**a, "_index": names["parallel"]} for a in actions]
                started = time.perf_counter()
                for ok, item in opensearchpy.helpers.parallel_bulk(
                    app, actions, chunk_size=args.chunk, thread_count=args.threads
                ):
                    assert ok, item
                rows.append((f"serve --enrich, parallel_bulk x{args.threads}",
                             time.perf_counter() - started, names["parallel"]))  # fmt: skip
            table = Table(title=f"{len(docs):,} documents, {Path(args.model).name}, {url}")
            for column in ("path", "seconds", "docs/s", "vs ingest", "check"):
                table.add_column(column, justify="left" if column == "path" else "right")
            baseline = len(docs) / rows[0][1]
            for label, seconds, index in rows:
                rate = len(docs) / seconds
                ratio = f"{rate / baseline:.2f}x"
                checked = check(direct, index, len(docs))
                failed |= checked != "ok"
                table.add_row(label, f"{seconds:.1f}", f"{rate:,.0f}", ratio, checked)
            console.print(table)
        finally:
            for name in names.values():
                direct.indices.delete(index=name, ignore_unavailable=True)
    if failed:
        sys.exit("an index is missing documents or vectors (see check)")


if __name__ == "__main__":
    main()
