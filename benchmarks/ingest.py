"""End-to-end ingestion throughput versus encode-only throughput, in one run.

Same model, same documents, same batch size, each measurement in a fresh subprocess (peak RSS
is its own):

* ``encode-only``      ``SpladeEncoder.iter_encode`` over the texts, nothing else;
* ``ingest -> sink``   ``splade_es.ingest.ingest_file`` into a loopback stand-in cluster that
                       acknowledges every bulk item at once: the pipeline's own overhead
                       (reading, JSON, bulk requests, checkpointing) when the cluster is not
                       the bottleneck;
* ``ingest -> osmem``  the same into the osmem emulator (on this machine it shares the CPU
                       with the encoder, so it is a bottleneck);
* ``ingest -> URL``    the same into ``--url`` when given (a real cluster).

    python benchmarks/ingest.py --model ../shared/models/splade-tiny \
        --data ../shared/data/scifact --docs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_input(data: Path, n: int, out: Path) -> int:
    count = 0
    with open(data / "corpus.jsonl", encoding="utf-8") as src, open(out, "w") as dst:
        for line in src:
            dst.write(line)
            count += 1
            if count >= n:
                break
    return count


# ---------------------------------------------------------------------- the stand-in cluster
class SinkHandler(BaseHTTPRequestHandler):
    """Answers just what ``ingest`` asks: info, index exists, mapping, settings, _bulk."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._send(200)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/":
            self._send(200, {"version": {"distribution": "opensearch", "number": "2.19.0"}})
        elif path.endswith("/_mapping"):
            index = path.strip("/").split("/")[0]
            props = {"splade": {"type": "rank_features"}}
            self._send(200, {index: {"mappings": {"properties": props}}})
        else:
            self._send(200, {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        lines = [x for x in self.rfile.read(length).split(b"\n") if x.strip()]
        items = [
            {"index": {"_id": json.loads(a)["index"]["_id"], "status": 201}} for a in lines[::2]
        ]
        self._send(200, {"took": 0, "errors": False, "items": items})

    do_PUT = do_POST


def serve_sink() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SinkHandler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


# ---------------------------------------------------------------------- workers
def encode_worker(args: argparse.Namespace) -> dict:
    from splade_es import SpladeEncoder
    from splade_es.ingest.sources import read_source

    texts = [
        f"{r.doc.get('title', '')} {r.doc.get('text', '')}".strip() for r in read_source(args.input)
    ]
    encoder = SpladeEncoder.from_pretrained(args.model, device=args.device)
    started = time.perf_counter()
    done = sum(len(w) for w in encoder.iter_encode(texts, batch_size=args.batch_size))
    return {"docs": done, "seconds": time.perf_counter() - started}


def ingest_worker(args: argparse.Namespace) -> dict:
    from splade_es import ConnectionConfig, SpladeEncoder, connect
    from splade_es.ingest import IngestConfig, ingest_file

    encoder = SpladeEncoder.from_pretrained(args.model, device=args.device)
    client = connect(ConnectionConfig(hosts=(args.url,))).client
    config = IngestConfig(
        index=args.index,
        create=True,
        batch_size=args.batch_size,
        workers=args.workers,
        checkpoint=str(Path(args.input).with_suffix(f".{args.index}.ck")),
    )
    started = time.perf_counter()
    report = ingest_file(client, args.input, encoder=encoder, config=config)
    return {"docs": report.indexed, "seconds": time.perf_counter() - started}


def run_child(extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"worker failed: {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_process(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    url = proc.stdout.readline().strip()
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("SPLADE_ES_TEST_MODEL"))
    parser.add_argument(
        "--data", default=os.environ.get("SPLADE_ES_BENCH_DATA"), help="BEIR folder"
    )
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--url", help="also ingest into this cluster (a real one)")
    parser.add_argument("--skip-emulator", action="store_true")
    parser.add_argument("--worker", choices=["encode", "ingest", "sink"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--index", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "sink":
        return serve_sink()
    if args.worker:
        result = encode_worker(args) if args.worker == "encode" else ingest_worker(args)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    if not args.model or not args.data:
        parser.error(
            "--model and --data (or SPLADE_ES_TEST_MODEL / SPLADE_ES_BENCH_DATA) are required"
        )

    from rich.console import Console
    from rich.table import Table

    common = ["--model", args.model, "--batch-size", str(args.batch_size), "--device", args.device]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "input.jsonl"
        n = write_input(Path(args.data), args.docs, source)
        common += ["--input", str(source), "--workers", str(args.workers)]
        rows.append(("encode-only", run_child(["--worker", "encode", *common])))
        sink, sink_url = start_process([sys.executable, __file__, "--worker", "sink"])
        try:
            rows.append(
                (
                    "ingest -> sink",
                    run_child(
                        ["--worker", "ingest", "--url", sink_url, "--index", "sink", *common]
                    ),
                )
            )
        finally:
            sink.kill()
        if not args.skip_emulator:
            code = (
                "from osmem_server import OsmemServer; import sys\n"
                "with OsmemServer.start(japanese=False) as s:\n"
                "    print(s.url, flush=True); sys.stdin.read()"
            )
            emulator, url = start_process([sys.executable, "-c", code])
            try:
                rows.append(
                    (
                        "ingest -> osmem emulator",
                        run_child(
                            ["--worker", "ingest", "--url", url, "--index", "osmem", *common]
                        ),
                    )
                )
            finally:
                emulator.stdin.close()
                emulator.wait(timeout=30)
        if args.url:
            rows.append(
                (
                    f"ingest -> {args.url}",
                    run_child(
                        [
                            "--worker",
                            "ingest",
                            "--url",
                            args.url,
                            "--index",
                            "splade-es-bench",
                            *common,
                        ]
                    ),
                )
            )

    base = rows[0][1]["docs"] / rows[0][1]["seconds"]
    table = Table(
        title=f"ingestion of {n} docs from {Path(args.data).name}, batch {args.batch_size}, "
        f"{args.workers} bulk workers, device {args.device}"
    )
    for col in ("pipeline", "docs", "seconds", "docs/s", "vs encode-only", "peak RSS MB"):
        table.add_column(col, justify="right")
    for label, res in rows:
        rate = res["docs"] / res["seconds"]
        table.add_row(
            label,
            str(res["docs"]),
            f"{res['seconds']:.1f}",
            f"{rate:.1f}",
            f"{rate / base:.2f}x",
            f"{res['peak_rss_mb']:.0f}",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
