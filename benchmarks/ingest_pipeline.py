"""The cluster's own ingest pipeline calling ``splade-es serve`` (what ``splade-es register``
sets up) against ``splade-es ingest``, same documents, same machine, one run (issue 23).

    python benchmarks/ingest_pipeline.py --data ../shared/data/scifact --docs 500

1. ``splade-es ingest``: ``splade_es.ingest.ingest`` (encode in this process + bulk, its
   defaults; ``--batch-size`` sets its encoder batch) into index A.
2. ``pipeline``: opensearch-py's ``helpers.bulk`` of the raw documents (chunks of ``--chunk``)
   straight to the cluster, into index B whose ``index.default_pipeline`` is the pipeline
   ``register`` created: the node joins the text fields, neural-search's ``sparse_encoding``
   sends them through an ml-commons remote model to serve's ``/_splade/embed/document`` (a
   separate process, with an API key file, as deployed), and indexes the answers.

The two alternate over ``--rounds`` (A then B, then B then A, ...), each from an empty index;
the table gives the medians and the ratio pipeline / ingest (the issue's target: >= 0.7x on a
CPU). ``check``: every document of both indices has a non-empty vector and A's and B's vectors
of each document are the same by ``splade_es.sparse``'s rule (``VECTOR_TOLERANCE`` of the
largest weight; ``_source`` holds the weights as sent, so the fields' storage precision does not
enter). The second table explains the pipeline's per-call overhead from serve's
``/_splade/metrics`` over the pipeline's run (calls, texts per call, time per call, how many
were in flight, the model time of serve's document queue; the rest of the run is the cluster's)
and from the same texts sent to ``/_splade/embed/document`` directly, one call at a time, in
batches of the pipeline's ``batch_size``.

The cluster: ``--url`` (register changes its ml-commons connector settings and leaves them so;
what it created is unregistered at the end) or, by default, the in-process OpenSearch 2.19.6
node with ml-commons of ``tests/engines/opensearch_node.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import opensearchpy
import opensearchpy.helpers
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

# Appended, not prepended: the repository's tests/ (the node harness) must be importable, but a
# splade_es put first on PYTHONPATH (benchmarks/revisions.py) must stay the one imported.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from splade_es import SpladeEncoder, create_index, defaults
from splade_es.documents import document_text
from splade_es.ingest import IngestConfig, ingest
from splade_es.register import RegisterConfig, Registration, register, unregister
from splade_es.sparse import VECTOR_TOLERANCE, vector_difference

NAME = "bench-pipeline"
FIELDS = defaults.TEXT_FIELDS
SPARSE_FIELD = defaults.VECTOR_FIELD
NODE_VERSION = "2.19.6"


# ---------------------------------------------------------------------- inputs
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shared = Path(__file__).resolve().parents[2] / "shared" / "models" / "splade-tiny"
    parser.add_argument(
        "--model",
        default=os.environ.get("SPLADE_ES_TEST_MODEL") or str(shared),
        help="a local SPLADE checkpoint folder (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("SPLADE_ES_BENCH_DATA"),
        help="a BEIR folder (its corpus.jsonl); else generated documents",
    )
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=500, help="documents per helpers.bulk")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.BATCH_SIZE,
        help="ingest's encoder batch (default: ingest's, %(default)s)",
    )
    parser.add_argument("--url", help=f"a cluster (default: an OpenSearch {NODE_VERSION} node)")
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for splade-es serve (repeatable), e.g. --serve-arg=--threads=2",
    )
    args = parser.parse_args()
    if not Path(args.model, "config.json").is_file():
        parser.error(
            f"no SPLADE checkpoint at {args.model} (no config.json there): pass --model FOLDER "
            "or set SPLADE_ES_TEST_MODEL"
        )
    if min(args.docs, args.rounds, args.chunk, args.batch_size) < 1:
        parser.error("--docs, --rounds, --chunk and --batch-size must be at least 1")
    return args


def load_documents(data: str | None, n: int) -> list[dict[str, str]]:
    """The first ``n`` documents of a BEIR corpus (``id``, ``title``, ``text``), topped up
    with generated ones when there is no corpus or it is shorter."""
    docs: list[dict[str, str]] = []
    corpus = Path(data, "corpus.jsonl") if data else None
    if corpus is not None and not corpus.is_file():
        raise SystemExit(f"--data {data}: no corpus.jsonl there")
    if corpus is not None:
        with corpus.open(encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                docs.append({"id": str(row["_id"]), "title": row.get("title") or "",
                             "text": row.get("text") or ""})  # fmt: skip
                if len(docs) == n:
                    break
    words = ("tax", "law", "income", "deduction", "garlic", "powder", "brain", "imaging")
    while len(docs) < n:
        i = len(docs)
        text = " ".join(words[(i + j) % len(words)] for j in range(60 + i % 120))
        docs.append({"id": f"g{i}", "title": f"document {i}", "text": text})
    return docs


# ---------------------------------------------------------------------- serve
class Serve:
    """A ``splade-es serve`` process on 127.0.0.1 with an API key file (the key is never
    printed); its ``/_splade/embed/document`` and ``/_splade/metrics``."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.api_key = key

    def embed_documents(self, texts: list[str]) -> list[dict[str, float]]:
        body = json.dumps({"inputs": texts}).encode()
        request = urllib.request.Request(
            f"{self.url}/_splade/embed/document",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        with urllib.request.urlopen(request, timeout=600) as answer:
            vectors: list[dict[str, float]] = json.load(answer)
        return vectors

    def counters(self) -> dict[str, float]:
        """The embed endpoint's figures so far (a round takes differences)."""
        with urllib.request.urlopen(f"{self.url}/_splade/metrics", timeout=30) as answer:
            text = answer.read().decode()
        found = dict.fromkeys(COUNTERS.values(), 0.0)
        found["failed_calls"] = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                for (name, label, wanted), counter in COUNTERS.items():
                    if sample.name == name and labels.get(label, "") == wanted:
                        found[counter] += sample.value
                        if counter == "calls" and labels["status"] != "2xx":
                            found["failed_calls"] += sample.value
        return found


# (sample, label, its value) of serve's /_splade/metrics -> what this benchmark calls it.
COUNTERS = {
    ("splade_es_requests_total", "route", "embed_document"): "calls",
    ("splade_es_embed_texts_total", "kind", "document"): "texts",
    ("splade_es_request_seconds_sum", "route", "embed_document"): "call_seconds",
    # serve's document queue: one model call per batch of up to --bulk-batch documents.
    ("splade_es_enrich_encode_seconds_count", "", ""): "model_batches",
    ("splade_es_enrich_encode_seconds_sum", "", ""): "model_seconds",
}


@contextlib.contextmanager
def serve(model: str, cluster: str, extra: list[str]) -> Iterator[Serve]:
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        keys = Path(tmp, "serve.keys")
        keys.write_text(f"# the cluster's key\n{key}\n")
        port = free_port()
        command = [
            sys.executable, "-m", "splade_es.cli", "serve", "--model", model, "--url", cluster,
            "--listen", f"127.0.0.1:{port}", "--api-key-file", str(keys),
            "--log-level", "warning", *extra,
        ]  # fmt: skip
        # A file, not a pipe: nobody reads serve's log while the run goes on.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            served = Serve(f"http://127.0.0.1:{port}", key)
            wait_until_up(process, served, log)
            yield served
        finally:
            process.terminate()
            process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_up(process: subprocess.Popen[bytes], served: Serve, log: Any) -> None:
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"splade-es serve exited: {log.read().decode()[-2000:]}")
        health = f"{served.url}/_splade/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=5) as answer:
            if json.load(answer).get("model_loaded"):
                return
        if time.monotonic() > deadline:
            raise SystemExit("splade-es serve did not load its model in 180 s")
        time.sleep(0.3)


# ---------------------------------------------------------------------- the cluster
@contextlib.contextmanager
def cluster_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.engines import opensearch_node

    try:
        with opensearch_node.run(NODE_VERSION) as started:
            yield started
    except opensearch_node.NodeUnavailable as exc:
        raise SystemExit(f"cannot run the OpenSearch {NODE_VERSION} node here: {exc}") from exc


@contextlib.contextmanager
def registered(client: opensearchpy.OpenSearch, served: Serve) -> Iterator[Registration]:
    """``splade_es.register`` pointing the cluster at ``served`` (cluster settings applied);
    what it created is unregistered afterwards."""
    config = RegisterConfig(
        serve_url=served.url,
        api_key=served.api_key,
        name=NAME,
        text_fields=FIELDS,
        sparse_field=SPARSE_FIELD,
        apply_settings=True,
    )
    registration = register(client, config)
    try:
        yield registration
    finally:
        unregister(client, config)


def pipeline_batch_size(client: opensearchpy.OpenSearch, pipeline: str) -> int | None:
    """The ``batch_size`` of the pipeline's ``sparse_encoding`` processor, as stored."""
    body = client.ingest.get_pipeline(id=pipeline)[pipeline]
    for processor in body["processors"]:
        if "sparse_encoding" in processor:
            size = processor["sparse_encoding"].get("batch_size")
            return int(size) if size is not None else None
    return None


def fresh_indices(client: opensearchpy.OpenSearch, pipeline: str) -> tuple[str, str]:
    """Empty index A (for ingest) and B (``index.default_pipeline``: the registered one)."""
    by_ingest, by_pipeline = f"{NAME}-ingest", f"{NAME}-pipeline"
    for index in (by_ingest, by_pipeline):
        client.indices.delete(index=index, ignore_unavailable=True)
        create_index(client, index, sparse_field=SPARSE_FIELD, replicas=0)
    client.indices.put_settings(index=by_pipeline, body={"index.default_pipeline": pipeline})
    return by_ingest, by_pipeline


# ---------------------------------------------------------------------- the measurements
@dataclass
class Round:
    """One round's figures: wall seconds of each path, serve's counters over the pipeline's
    bulk, and the check of both indices."""

    ingest_s: float
    pipeline_s: float
    direct_s: float
    calls: dict[str, float]
    check: str
    worst_difference: float


def by_ingest(
    client: opensearchpy.OpenSearch,
    index: str,
    docs: list[dict[str, str]],
    encoder: Any,
    batch_size: int,
) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        dead = Path(tmp, "dead.jsonl")
        config = IngestConfig(
            index=index,
            id_field="id",
            text_fields=FIELDS,
            sparse_field=SPARSE_FIELD,
            batch_size=batch_size,
            dead_letter=str(dead),
        )
        started = time.perf_counter()
        report = ingest(client, docs, encoder=encoder, config=config)
        seconds = time.perf_counter() - started
        if report.indexed != len(docs):
            first = dead.read_text().splitlines()[:1] if dead.exists() else []
            raise SystemExit(
                f"ingest indexed {report.indexed} of {len(docs)} documents; first refusal: "
                f"{first[0][:500] if first else '?'}"
            )
    return seconds


def by_pipeline(
    client: opensearchpy.OpenSearch, index: str, docs: list[dict[str, str]], chunk: int
) -> float:
    actions = ({"_index": index, "_id": d["id"], "_source": d} for d in docs)
    started = time.perf_counter()
    _, errors = opensearchpy.helpers.bulk(
        client, actions, chunk_size=chunk, max_retries=3, raise_on_error=False
    )
    seconds = time.perf_counter() - started
    if errors:
        first = json.dumps(errors[0])[:500]
        raise SystemExit(f"the pipeline's bulk failed {len(errors)} documents; first: {first}")
    return seconds


def by_serve_directly(served: Serve, texts: list[str], batch: int) -> float:
    """The pipeline's texts through serve's embed endpoint in batches of the pipeline's
    ``batch_size``, one call at a time, without the cluster."""
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        served.embed_documents(texts[start : start + batch])
    return time.perf_counter() - started


def vectors_of(client: opensearchpy.OpenSearch, index: str) -> dict[str, dict[str, float]]:
    client.indices.refresh(index=index)
    hits = opensearchpy.helpers.scan(client, index=index, query={"query": {"match_all": {}}})
    return {hit["_id"]: hit["_source"].get(SPARSE_FIELD) or {} for hit in hits}


def compare(
    client: opensearchpy.OpenSearch, index_a: str, index_b: str, ids: list[str]
) -> tuple[str, float]:
    """("ok", worst difference) when both indices hold a non-empty vector for every id and
    each pair is the same vector (``splade_es.sparse``'s rule); else what is wrong."""
    a, b = vectors_of(client, index_a), vectors_of(client, index_b)
    problems = []
    for label, found in (("A", a), ("B", b)):
        missing = sum(1 for i in ids if not found.get(i))
        if missing or len(found) != len(ids):
            problems.append(f"{label}: {len(found)} docs, {missing} without a vector")
    common = [i for i in ids if a.get(i) and b.get(i)]
    differences = [vector_difference(a[i], b[i]) for i in common]
    worst = max(differences, default=0.0)
    unequal = sum(1 for d in differences if d > VECTOR_TOLERANCE)
    if unequal:
        problems.append(f"{unequal} vectors differ")
    return ("; ".join(problems) or "ok"), worst


def one_round(
    number: int,
    client: opensearchpy.OpenSearch,
    served: Serve,
    pipeline: str,
    docs: list[dict[str, str]],
    encoder: Any,
    args: argparse.Namespace,
    batch: int,
) -> Round:
    """Both paths into fresh indices (ingest first in odd rounds, the pipeline first in even
    ones), then the same texts straight to serve, then the check."""
    index_a, index_b = fresh_indices(client, pipeline)
    seconds: dict[str, float] = {}
    calls: dict[str, float] = {}
    for path in ("ingest", "pipeline") if number % 2 else ("pipeline", "ingest"):
        if path == "ingest":
            seconds[path] = by_ingest(client, index_a, docs, encoder, args.batch_size)
        else:
            before = served.counters()
            seconds[path] = by_pipeline(client, index_b, docs, args.chunk)
            after = served.counters()
            calls = {k: after[k] - before[k] for k in after}
    texts = [document_text(d, FIELDS, i) for i, d in enumerate(docs, 1)]
    direct = by_serve_directly(served, texts, batch)
    check, worst = compare(client, index_a, index_b, [d["id"] for d in docs])
    print(
        f"round {number}: ingest {seconds['ingest']:.1f} s, pipeline {seconds['pipeline']:.1f} s, "
        f"serve directly {direct:.1f} s, {int(calls['calls'])} calls; check {check}",
        flush=True,
    )
    return Round(seconds["ingest"], seconds["pipeline"], direct, calls, check, worst)


def warm_up(client: opensearchpy.OpenSearch, served: Serve, pipeline: str, encoder: Any) -> None:
    """The first call of each path (the model's first forward, ml-commons' HTTP client) is
    not what is measured."""
    encoder.encode_documents(["warm up the encoder"])
    served.embed_documents(["warm up serve"])
    _, index_b = fresh_indices(client, pipeline)
    client.index(index=index_b, id="warm", body={"title": "warm", "text": "up"}, refresh=True)


# ---------------------------------------------------------------------- the report
def median(rounds: list[Round], figure: str) -> float:
    return statistics.median(getattr(r, figure) for r in rounds)


def median_call(rounds: list[Round], counter: str) -> float:
    return statistics.median(r.calls[counter] for r in rounds)


def throughput_table(rounds: list[Round], n: int, batch_size: int, title: str) -> Table:
    table = Table(title=title)
    for column in ("path", "seconds per round", "median s", "docs/s", "vs ingest"):
        table.add_column(column, justify="left" if column == "path" else "right")
    baseline = n / median(rounds, "ingest_s")
    rows = (
        (f"splade-es ingest (encodes here, batch {batch_size}; bulk)", "ingest_s"),
        ("helpers.bulk -> ingest pipeline -> serve", "pipeline_s"),
    )
    for label, figure in rows:
        seconds = median(rounds, figure)
        each = " ".join(f"{getattr(r, figure):.1f}" for r in rounds)
        rate = n / seconds
        table.add_row(label, each, f"{seconds:.1f}", f"{rate:.1f}", f"{rate / baseline:.2f}x")
    checks = sorted({r.check for r in rounds})
    worst = max(r.worst_difference for r in rounds)
    table.caption = (
        f"check: {' / '.join(checks)} (every document of A and B has a non-empty vector; A's "
        f"and B's vector of each document differ by at most {worst:.1e} of its largest weight, "
        f"the rule allows {VECTOR_TOLERANCE:g})"
    )
    return table


def overhead_table(rounds: list[Round], n: int, batch: int | None, chunk: int) -> Table:
    table = Table(title="the pipeline's calls to serve (medians per run)")
    table.add_column("figure", justify="left")
    table.add_column("value", justify="right")
    wall = median(rounds, "pipeline_s")
    calls = median_call(rounds, "calls")
    busy = median_call(rounds, "call_seconds")
    batches = median_call(rounds, "model_batches")
    texts = median_call(rounds, "texts")
    direct = median(rounds, "direct_s")
    bulks = -(-n // chunk)
    model = median_call(rounds, "model_seconds")
    rows = [
        ("sparse_encoding batch_size (as stored)", str(batch)),
        ("helpers.bulk requests (chunk)", f"{bulks} ({chunk} docs)"),
        ("serve calls (failed)", f"{calls:.0f} ({median_call(rounds, 'failed_calls'):.0f})"),
        ("texts per call, mean", f"{texts / max(calls, 1):.1f}"),
        ("serve's time per call, mean", f"{busy / max(calls, 1):.2f} s"),
        ("calls in flight, mean (call time / run)", f"{busy / wall:.2f}"),
        (
            "serve's document queue: batches (texts each), model time",
            f"{batches:.0f} ({texts / max(batches, 1):.1f}), {model:.1f} s = {model / wall:.0%}",
        ),
        ("the rest: bulk, script, ml-commons, indexing", f"{wall - model:.1f} s"),
        (
            f"same texts to /_splade/embed/document directly, batches of {batch or 1}",
            f"{direct:.1f} s = {n / direct:.1f} docs/s = "
            f"{median(rounds, 'ingest_s') / direct:.2f}x ingest",
        ),
        ("pipeline vs the same texts directly", f"{direct / wall:.2f}x"),
    ]
    for figure, value in rows:
        table.add_row(figure, value)
    return table


def main() -> None:
    args = parse_args()
    docs = load_documents(args.data, args.docs)
    source = Path(args.data).name if args.data else "generated"
    encoder = SpladeEncoder.from_pretrained(args.model)
    console = Console(width=140)
    with cluster_url(args.url) as url, serve(args.model, url, args.serve_arg) as served:
        client = opensearchpy.OpenSearch(url, timeout=600)
        version = client.info()["version"]["number"]
        with registered(client, served) as registration:
            pipeline = str(registration.outputs["ingest_pipeline"])
            for action in registration.actions:
                print(f"register: {action}", flush=True)
            batch = pipeline_batch_size(client, pipeline)
            warm_up(client, served, pipeline, encoder)
            rounds = [
                one_round(i, client, served, pipeline, docs, encoder, args, batch or 1)
                for i in range(1, args.rounds + 1)
            ]
            for index in (f"{NAME}-ingest", f"{NAME}-pipeline"):
                client.indices.delete(index=index, ignore_unavailable=True)
    title = (
        f"{len(docs):,} documents ({source}), {Path(args.model).name}, OpenSearch {version}, "
        f"{args.rounds} rounds"
    )
    console.print(throughput_table(rounds, len(docs), args.batch_size, title))
    console.print(overhead_table(rounds, len(docs), batch, args.chunk))
    if any(r.check != "ok" for r in rounds):
        sys.exit("an index is missing documents or vectors, or A and B differ (see check)")


if __name__ == "__main__":
    main()
