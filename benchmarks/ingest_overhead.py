"""Ingest's own cost per document: ``ingest_file`` with an encoder that costs ~nothing.

The encoder stand-in (``NullEncoder``, a ``DocumentEncoder``) hands out precomputed realistic
vectors (splade-tiny's of SciFact documents: ~290 non-zeros each over BERT's 30,522 tokens;
random ones, 300 a row, without the model) in the windows ``SpladeEncoder.iter_encode`` uses
(16 batches). The cluster is ``benchmarks/gpu.py``'s loopback bulk sink (a subprocess that
acknowledges every item), with TCP_NODELAY (``SINK``). What is left is the pipeline: reading,
the text rule, vectors -> JSON, bulk chunking, sending, the ledger. Rows:

* ``null: chunks, no sending``  ``document_chunks``: input -> bulk chunks, nothing sent;
* ``null: ingest -> sink``      ``ingest_file``: the pipeline's ceiling in docs/s;
* ``<model>: encode-only`` / ``ingest -> sink``  the real encoder (``--device``), same docs,
  and their ratio (the target: ingest >= 0.9x encode-only).

``--profile`` adds the functions that took the most time of their own, in every thread
(cProfile per thread; a thread waiting for the GIL charges the function it is in).
``--revisions A B`` runs the rows for each revision in its own process, ``--rounds`` times,
alternating, and prints the medians side by side: a git revision, ``WORKTREE`` (this tree) or
a folder holding a ``splade_es`` package.

    python benchmarks/ingest_overhead.py --docs 20000 --profile
    python benchmarks/ingest_overhead.py --revisions 71b7ebf WORKTREE --rounds 3
    python benchmarks/ingest_overhead.py --device cuda --real-docs 12000 --real-batch-size 512
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
# gpu.py's sink, answering with TCP_NODELAY: its handler writes the headers and the body of a
# response in two sends, and with Nagle's algorithm the body waits for the client's delayed ACK
# (~40 ms a request on Linux loopback, whatever its size).
SINK = f"""import sys; sys.path.insert(0, {str(HERE)!r}); import gpu
from http.server import ThreadingHTTPServer
class Sink(gpu.SinkHandler):
    disable_nagle_algorithm = True
server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(f"http://127.0.0.1:{{server.server_address[1]}}", flush=True)
server.serve_forever()
"""


class NullEncoder:
    """A ``DocumentEncoder`` whose vectors cost nothing: the rows of ``pool``, cycled."""

    name = "null"

    def __init__(self, pool: Any) -> None:
        self.pool, self.vocab, self._made = pool, pool.vocab, {}

    def encode_queries(self, texts: list[str], **options: Any) -> Any:
        return self._rows(len(texts))

    encode_documents = encode_queries

    def iter_encode(
        self, texts: Iterable[str], *, batch_size: int = 32, window: int | None = None, **_: Any
    ) -> Iterator[Any]:
        source = iter(texts)
        while chunk := list(islice(source, window or batch_size * 16)):
            yield self._rows(len(chunk))

    def _rows(self, n: int) -> Any:
        if n not in self._made:
            from splade_es.sparse import SparseBatch

            rows = self.pool.to_scipy()[np.arange(n) % len(self.pool)]
            rows.sort_indices()
            self._made[n] = SparseBatch(
                rows.indptr.astype(np.int64), rows.indices.astype(np.int32), rows.data, self.vocab
            )
        return self._made[n]


def texts_of(data: Path | None, n: int) -> list[str]:
    """The first ``n`` SciFact documents as title + text (synthetic ones without data)."""
    if data is None or not (data / "corpus.jsonl").exists():
        rng = np.random.default_rng(0)
        return [" ".join(f"w{w}" for w in rng.integers(0, 5000, 200)) for _ in range(n)]
    with open(data / "corpus.jsonl", encoding="utf-8") as handle:
        docs = [json.loads(line) for line in islice(handle, n)]
    return [f"{doc.get('title', '')} {doc['text']}".strip() for doc in docs]


def make_pool(args: argparse.Namespace, out: Path) -> None:
    """The stand-in's vectors: the model's of ``--sample-docs`` documents, or random ones."""
    if args.model:
        from splade_es import SpladeEncoder

        encoder = SpladeEncoder.from_pretrained(str(args.model), device=args.device)
        batch = encoder.encode_documents(texts_of(args.data, args.sample_docs), batch_size=32)
        tokens, special = list(encoder.vocab), sorted(encoder.vocab.special_ids)
        indptr, indices, values = batch.indptr, batch.indices, batch.values
    else:
        rng = np.random.default_rng(0)
        tokens, special = [f"tok{i}" for i in range(30522)], [0, 100, 101, 102, 103]
        rows = [np.sort(rng.choice(30522, 300, replace=False)) for _ in range(args.sample_docs)]
        indptr, indices = np.arange(len(rows) + 1) * 300, np.concatenate(rows)
        values = rng.gamma(1.5, 0.4, len(indices)).astype(np.float32)
    np.savez(out, indptr=indptr, indices=indices, values=values, special=np.asarray(special))
    out.with_suffix(".json").write_text(json.dumps(tokens), encoding="utf-8")


def load_pool(path: Path) -> Any:
    from splade_es.sparse import SparseBatch, Vocabulary

    saved = np.load(path)
    tokens = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    vocab = Vocabulary(tokens, special_ids=saved["special"].tolist())
    return SparseBatch(saved["indptr"], saved["indices"], saved["values"], vocab=vocab)


def write_input(texts: list[str], n: int, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            doc = {"_id": f"doc-{i}", "title": "", "text": texts[i % len(texts)]}
            handle.write(json.dumps(doc) + "\n")
    return path


def timed(rows: dict[str, float], name: str, docs: int, fn: Any) -> None:
    started = time.perf_counter()
    fn()
    rows[name] = docs / (time.perf_counter() - started)
    print(f"  {name:32s} {docs:7d} docs {rows[name]:9.1f} docs/s", file=sys.stderr, flush=True)


def chunks_only(path: Path, encoder: Any, config: Any) -> int:
    """Input -> bulk chunks (``document_chunks``), nothing sent: the documents chunked."""
    from splade_es.ingest.pipeline import document_chunks
    from splade_es.ingest.sources import read_source
    from splade_es.ingest.stages import JobLedger
    from splade_es.tokens import TokenCodec

    ledger, codec = JobLedger(config), TokenCodec(encoder.vocab, scheme="token")
    chunks = document_chunks(read_source(path), lambda: False, ledger, encoder, codec, config)
    return sum(len(chunk) for chunk in chunks)


def ingest_once(url: str, path: Path, encoder: Any, batch_size: int) -> None:
    from splade_es import ConnectionConfig, connect
    from splade_es.ingest import IngestConfig, ingest_file

    client = connect(ConnectionConfig(hosts=(url,))).client
    config = IngestConfig(index="sink", create=True, batch_size=batch_size)
    try:
        report = ingest_file(client, path, encoder=encoder, config=config)
    finally:
        client.close()
    assert report.indexed == report.read, report


def profiled(fn: Any) -> pstats.Stats:
    """cProfile of ``fn()``, in this thread and in every thread started meanwhile."""
    profiles, run = [cProfile.Profile()], threading.Thread.run

    def run_profiled(thread: threading.Thread) -> None:
        profiles.append(cProfile.Profile())
        profiles[-1].runcall(run, thread)

    threading.Thread.run = run_profiled  # type: ignore[method-assign]
    try:
        profiles[0].runcall(fn)
    finally:
        threading.Thread.run = run  # type: ignore[method-assign]
    return pstats.Stats(*profiles)


def print_profile(stats: Any, docs: int, top: int) -> None:
    """The functions with the most time of their own (waits for locks, queues, sockets out)."""
    waits = ("acquire", "wait", "'get'", "poll", "select", "recv_into", "sleep", "join")
    found = [
        (own, calls, f"{Path(file).name}:{line} {name}")
        for (file, line, name), (_, calls, own, _, _) in stats.stats.items()
        if not any(w in name for w in waits)
    ]
    print(f"\n{'us/doc':>8} {'calls':>9}  function (own time, all threads)", file=sys.stderr)
    for own, calls, where in sorted(found, reverse=True)[:top]:
        print(f"{own / docs * 1e6:8.1f} {calls:9d}  {where}", file=sys.stderr)


def measure(args: argparse.Namespace) -> dict[str, float]:
    rows: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ingest-overhead-"))
    texts = texts_of(args.data, min(max(args.docs, args.real_docs), 5183))
    null, path = NullEncoder(load_pool(args.pool)), write_input(texts, args.docs, tmp / "in.jsonl")
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    try:
        url = sink.stdout.readline().strip()  # type: ignore[union-attr]
        null_chunks = lambda: chunks_only(path, null, null_config(args))  # noqa: E731
        timed(rows, "null: chunks, no sending", args.docs, null_chunks)
        null_ingest = lambda: ingest_once(url, path, null, args.batch_size)  # noqa: E731
        if args.profile:
            print_profile(profiled(null_ingest), args.docs, args.top)
        timed(rows, "null: ingest -> sink", args.docs, null_ingest)
        if args.real_docs and args.model:
            real_rows(args, rows, url, texts, tmp)
    finally:
        sink.kill()
        sink.wait()
    return rows


def null_config(args: argparse.Namespace) -> Any:
    from splade_es.ingest import IngestConfig

    return IngestConfig(index="sink", batch_size=args.batch_size)


def real_rows(
    args: argparse.Namespace, rows: dict[str, float], url: str, texts: list[str], tmp: Path
) -> None:
    """The real encoder: encode-only ``iter_encode`` and ``ingest_file`` of the same docs."""
    from splade_es import SpladeEncoder

    encoder = SpladeEncoder.from_pretrained(str(args.model), device=args.device)
    n, batch, name = args.real_docs, args.real_batch_size, args.model.name
    real = [texts[i % len(texts)] for i in range(n)]
    path = write_input(texts, n, tmp / "real.jsonl")
    for _ in encoder.iter_encode(real[: batch * 4], batch_size=batch):  # warm-up
        pass
    encode_only = lambda: [len(w) for w in encoder.iter_encode(real, batch_size=batch)]  # noqa: E731
    timed(rows, f"{name}: encode-only", n, encode_only)
    timed(rows, f"{name}: ingest -> sink", n, lambda: ingest_once(url, path, encoder, batch))
    rows[f"{name}: ingest / encode-only"] = (
        rows[f"{name}: ingest -> sink"] / rows[f"{name}: encode-only"]
    )


def compare(args: argparse.Namespace) -> None:
    """Each revision's rows in a process of its own (its package first on PYTHONPATH)."""
    scratch, roots = Path(tempfile.mkdtemp(prefix="ingest-overhead-revs-")), {}
    for rev in args.revisions:
        folder = Path(rev).resolve() if Path(rev).is_dir() else None
        roots[rev] = REPO if rev == "WORKTREE" else folder
        if roots[rev] is None:
            roots[rev] = scratch / rev
            add = ["worktree", "add", "--detach", "-f", str(roots[rev]), rev]
            subprocess.run(["git", "-C", str(REPO), *add], check=True, capture_output=True)
    results: dict[str, list[dict[str, float]]] = {rev: [] for rev in args.revisions}
    chosen = {k: v for k, v in vars(args).items() if k in CHILD and v is not None}
    options = [f"--{k.replace('_', '-')}={v}" for k, v in chosen.items()]
    try:
        for round_no in range(args.rounds):
            for rev in args.revisions[:: 1 if round_no % 2 == 0 else -1]:
                print(f"round {round_no + 1}: {rev}", file=sys.stderr, flush=True)
                path = os.pathsep.join(
                    filter(None, [str(roots[rev]), os.environ.get("PYTHONPATH")])
                )
                cmd = [sys.executable, __file__, *options, "--json"]
                env = {**os.environ, "PYTHONPATH": path}
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{rev} failed:\n{done.stderr[-3000:]}")
                results[rev].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  {json.dumps(results[rev][-1])}", file=sys.stderr, flush=True)
    finally:
        for root in roots.values():
            if root.parent == scratch:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root)])
    print(f"\nmedians of {args.rounds} rounds; docs: {args.docs} null, {args.real_docs} real")
    print("| row | " + " | ".join(args.revisions) + " | last / first |")
    print("|---|" + "---|" * (len(args.revisions) + 1))
    for row in results[args.revisions[0]][0]:
        medians = [statistics.median(r[row] for r in results[rev]) for rev in args.revisions]
        cells = " | ".join(f"{m:.2f}x" if "/ encode" in row else f"{m:.0f}" for m in medians)
        print(f"| {row} | {cells} | {medians[-1] / medians[0]:.2f} |")


CHILD = ("docs", "batch_size", "model", "data", "device", "real_docs", "real_batch_size", "pool")


def parse_args(argv: list[str]) -> argparse.Namespace:
    model, data = SHARED / "models" / "splade-tiny", SHARED / "data" / "scifact"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--docs", type=int, default=20_000, help="documents of the null rows")
    add("--batch-size", type=int, default=512, help="batch of the null rows (window: 16 of them)")
    add("--model", type=Path, default=model if model.exists() else None, help="model folder")
    add("--data", type=Path, default=data if data.exists() else None, help="a BEIR folder")
    add("--device", default="cpu", help="the model's device (cpu, cuda)")
    add("--sample-docs", type=int, default=256, help="documents whose vectors are cycled")
    add("--real-docs", type=int, default=256, help="documents of the model's rows (0: none)")
    add("--real-batch-size", type=int, default=32, help="batch of the model's rows")
    add("--profile", action="store_true", help="print the top functions (cProfile)")
    add("--top", type=int, default=20, help="functions --profile prints")
    add("--revisions", nargs="+", help="revisions to compare: git, WORKTREE or a package folder")
    add("--rounds", type=int, default=2, help="rounds of --revisions")
    add("--pool", type=Path, help=argparse.SUPPRESS)
    add("--json", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.pool is None:
        args.pool = Path(tempfile.mkdtemp(prefix="ingest-overhead-pool-")) / "pool.npz"
        make_pool(args, args.pool)
    if args.revisions:
        compare(args)
        return
    rows = measure(args)
    if args.json:
        print(json.dumps(rows))
        return
    print("\n| row | docs/s | us/doc |\n|---|---|---|")
    for row, value in rows.items():
        cost = "" if "/ encode" in row else f"{1e6 / value:.1f}"
        print(f"| {row} | {value:.2f} | {cost} |")


if __name__ == "__main__":
    main()
