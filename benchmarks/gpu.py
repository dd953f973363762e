"""The GPU kit: one command that measures splade-es's whole GPU path in under 8 minutes.

Sections, each bounded by a time cap (and all by ``--budget-s``), run in one process on one
device, splade-es and sentence-transformers side by side:

* encode    document docs/s for splade-tiny (``--model``) and random-weight BERT-base (12x768,
            the size of naver/splade-v3) and DistilBERT (6x768) masked-LMs, at max length 256
            and 512, fp32 / bf16 / fp16, batch sizes swept to the best, against
            sentence-transformers ``SparseEncoder.encode_document`` (MLMTransformer +
            SpladePooling on the same folder); peak GPU memory; the share of time in
            tokenization (CPU) against the model (pre-tokenized windows);
* fidelity  max |difference| of each dtype's vectors to splade-es fp32, and of
            sentence-transformers fp32 to splade-es fp32;
* ndcg      nDCG@10 on ``--data`` (SciFact) for splade-tiny fp32 vs bf16, exact in memory
            (``splade_es.evaluate.in_memory_run`` + ``score_run``);
* queries   one query per call p50 / p99, and queries/s through serve's ``MicroBatcher``
            with concurrent callers, in process;
* ingest    ``splade_es.ingest.ingest_file`` into a loopback bulk sink (a local HTTP server
            in a subprocess that acknowledges every ``_bulk`` item: the cluster is not the
            bottleneck) against encode-only ``iter_encode``, same encoder, same documents.

Writes ``gpu-results.json`` (``rows``: one object per number, with ``measure``, ``model``,
``impl``, ``dtype``, ``value``, ``unit``; plus ``machine``) and ``gpu-results.md`` to ``--out``.

    python3 benchmarks/gpu.py --out /tmp/gpu               # a GPU machine, < 8 minutes
    python3 benchmarks/gpu.py --smoke --out /tmp/smoke     # tiny sizes on the CPU, < 2 minutes

The GPU machine reaches no network: ``bash benchmarks/gpu_kit.sh`` prepares
``benchmarks/.gpu-kit`` (wheels of the packages its image lacks, a copy of splade-tiny and of
SciFact), and this script installs the wheels with ``pip --no-index`` when a package is missing.
README.md ("GPU kit") has the device command.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KIT = HERE / ".gpu-kit"
# Modules splade_es imports (the parts run here) that the GPU image does not have.
NEEDED = (
    "elasticsearch",
    "elastic_transport",
    "sniffio",
    "opensearchpy",
    "events",
    "tenacity",
    "zstandard",
    "ir_measures",
    "pytrec_eval",
    "starlette",
)
# name: (architecture, layers, hidden, heads, intermediate)
FAMILIES = {
    "distilbert": ("distilbert", 6, 768, 12, 3072),  # the seed distilbert-nq
    "bert-base": ("bert", 12, 768, 12, 3072),  # naver/splade-v3's size
}
SMOKE_FAMILIES = {
    "distilbert": ("distilbert", 2, 64, 2, 128),
    "bert-base": ("bert", 2, 64, 2, 128),
}
DTYPES = ("float32", "bfloat16", "float16")
SECTIONS = ("encode", "fidelity", "ndcg", "queries", "ingest")
# The targets for the GPU run: (model, max_length, dtype) of the throughput target.
TARGET_CONFIG = ("distilbert", 256, "bfloat16")


@dataclass(frozen=True)
class Profile:
    """Sizes and time caps. A measurement is sized from a warm-up's rate to last about
    ``measure_s``; a section stops starting new measurements once its cap has passed."""

    lengths: tuple[int, ...] = (256, 512)
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    # The first run (2026-12-04) warmed up on one batch and timed 0.6 s: at batch 512 that
    # was one or two batches of new shapes, and sweeps stopped on noise. Now 4 batches warm.
    measure_s: float = 1.0
    warm_batches: int = 4
    max_docs: int = 40_000
    fidelity_docs: int = 512
    ndcg_docs: int | None = None  # None: the whole corpus
    # max_length of the ndcg, queries and ingest sections; None: the checkpoint's own (512)
    section_length: int | None = None
    latency_queries: int = 1000
    batcher_queries: int = 4000
    batcher_callers: int = 64
    ingest_s: float = 4.0
    ingest_docs: tuple[int, int] = (2_000, 60_000)
    caps: dict[str, float] = field(
        default_factory=lambda: {
            "setup": 45,
            "encode": 210,
            "fidelity": 30,
            "ndcg": 35,
            "queries": 30,
            "ingest": 45,
        }
    )
    # The run's own deadline; imports, installing the wheels and writing the report come on
    # top (about 20 s), and a measurement started before a cap finishes: under 8 minutes.
    budget_s: float = 420.0


GPU_PROFILE = Profile()
SMOKE_PROFILE = Profile(
    lengths=(48,),
    batch_sizes=(4, 16),
    measure_s=0.05,
    warm_batches=1,
    max_docs=200,
    fidelity_docs=16,
    ndcg_docs=120,
    section_length=48,
    latency_queries=24,
    batcher_queries=48,
    batcher_callers=4,
    ingest_s=0.2,
    ingest_docs=(48, 120),
    # The caps add up to less than the budget: every section gets its first measurement
    # even on a loaded machine, where a cap cuts the rest.
    caps={"setup": 20, "encode": 30, "fidelity": 8, "ndcg": 10, "queries": 6, "ingest": 10},
    budget_s=100.0,
)


# ---------------------------------------------------------------------- offline packages
def ensure_packages(wheels: Path) -> list[str]:
    """Install the carried wheels (no index) when a module splade_es needs is missing.

    Installed into a folder put first on sys.path, so nothing of the image is replaced.
    Returns the modules that were missing.
    """
    missing = [name for name in NEEDED if not _importable(name)]
    if not missing:
        return []
    files = sorted(str(p) for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        raise SystemExit(
            f"missing modules {', '.join(missing)} and no wheels in {wheels}: "
            "run `bash benchmarks/gpu_kit.sh` where pip reaches an index"
        )
    target = Path(tempfile.gettempdir()) / "splade-es-gpu-kit-site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(target),
            *files,
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(target), os.environ.get("PYTHONPATH")])
    )
    importlib.invalidate_caches()
    still = [name for name in missing if not _importable(name)]
    if still:
        raise SystemExit(f"modules still missing after installing {wheels}: {', '.join(still)}")
    return missing


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------- time budget
class Budget:
    """The run's deadline and each section's: a section ends at its cap or the deadline."""

    def __init__(self, total_s: float) -> None:
        self.started = time.perf_counter()
        self.total_s = total_s
        self.section_end = math.inf
        self.section = ""
        self.skipped: list[dict[str, Any]] = []
        self.section_seconds: dict[str, float] = {}
        self._section_start = self.started

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def open(self, name: str, cap_s: float) -> None:
        self.close()
        self.section = name
        self._section_start = time.perf_counter()
        self.section_end = min(self._section_start + cap_s, self.started + self.total_s)

    def close(self) -> None:
        if self.section:
            self.section_seconds[self.section] = round(time.perf_counter() - self._section_start, 2)
            self.section = ""

    def expired(self) -> bool:
        return time.perf_counter() >= self.section_end

    def skip(self, what: str, why: str = "time cap") -> None:
        self.skipped.append({"section": self.section, "what": what, "why": why})
        print(f"  skipped {what}: {why}", flush=True)


# ---------------------------------------------------------------------- results
class Results:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        measure: str,
        value: float,
        unit: str,
        *,
        model: str,
        impl: str,
        dtype: str,
        **extra: Any,
    ) -> None:
        row = {
            "measure": measure,
            "model": model,
            "impl": impl,
            "dtype": dtype,
            "value": float(value),
            "unit": unit,
            **extra,
        }
        self.rows.append(row)

    def find(self, measure: str, **match: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in self.rows
            if r["measure"] == measure and all(r.get(k) == v for k, v in match.items())
        ]

    def one(self, measure: str, **match: Any) -> dict[str, Any] | None:
        found = self.find(measure, **match)
        return found[0] if found else None


def tag(model: str, impl: str, dtype: str) -> dict[str, str]:
    """What a row is about: the model, the implementation and the dtype."""
    return {"model": model, "impl": impl, "dtype": dtype}


# ---------------------------------------------------------------------- data
SYNTH_WORDS = tuple(
    [
        "the",
        "of",
        "and",
        "to",
        "in",
        "sparse",
        "vector",
        "search",
        "engine",
        "query",
        "document",
        "index",
        "cluster",
        "brain",
        "imaging",
        "tensor",
        "diffusion",
        "white",
        "matter",
        "newborn",
        "human",
        "cerebral",
        "development",
        "cost",
        "income",
        "property",
        "tax",
        "deduction",
        "depreciation",
        "section",
        "code",
        "form",
        "line",
        "garlic",
        "powder",
        "ounce",
        "tablespoon",
        "expense",
    ]
)


@dataclass
class Corpus:
    doc_ids: list[str]
    texts: list[str]
    queries: dict[str, str]  # judged queries whose relevant documents are in the corpus
    qrels: dict[str, dict[str, int]]
    query_texts: list[str]  # every query text, for the latency sections
    source: str


def load_corpus(data: str, max_docs: int | None, seed: int = 0) -> Corpus:
    """A BEIR folder (documents up to ``max_docs``; judgements restricted to them), or, for
    ``data == "synthetic"``, documents of random words whose queries are words of one of them."""
    if data == "synthetic":
        rng = random.Random(seed)
        n = max_docs or 200
        texts = [" ".join(rng.choices(SYNTH_WORDS, k=rng.randint(12, 90))) for _ in range(n)]
        doc_ids = [f"d{i}" for i in range(n)]
        queries = {f"q{i}": " ".join(rng.sample(texts[i].split(), 4)) for i in range(0, n, 4)}
        qrels = {q: {f"d{q[1:]}": 1} for q in queries}
        extra = [" ".join(rng.choices(SYNTH_WORDS, k=rng.randint(3, 12))) for _ in range(400)]
        return Corpus(doc_ids, texts, queries, qrels, list(queries.values()) + extra, "synthetic")

    from splade_es.beir import read_qrels, read_queries

    folder = Path(data)
    doc_ids, texts = [], []
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            doc_ids.append(str(doc["_id"]))
            texts.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
            if max_docs and len(texts) >= max_docs:
                break
    all_queries = read_queries(folder / "queries.jsonl")
    known = set(doc_ids)
    qrels: dict[str, dict[str, int]] = {}
    qrels_file = folder / "qrels" / "test.tsv"
    if qrels_file.exists():
        for qid, docs in read_qrels(qrels_file).items():
            kept = {d: r for d, r in docs.items() if d in known}
            if kept and qid in all_queries:
                qrels[qid] = kept
    queries = {q: all_queries[q] for q in qrels}
    return Corpus(doc_ids, texts, queries, qrels, list(all_queries.values()), str(folder))


def take(pool: Sequence[str], n: int, offset: int = 0) -> list[str]:
    """``n`` texts from ``pool`` starting at ``offset``, cycling (a measurement may need more
    documents than the corpus has)."""
    return [pool[(offset + i) % len(pool)] for i in range(n)]


# ---------------------------------------------------------------------- device helpers
class Device:
    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def is_oom(self, exc: BaseException) -> bool:
        oom = getattr(self.torch.cuda, "OutOfMemoryError", ())
        return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def machine_info(device: Device) -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
    }
    if device.cuda:
        props = torch.cuda.get_device_properties(device.name)
        info["device"] = torch.cuda.get_device_name(device.name)
        info["gpu_memory_mb"] = round(props.total_memory / 2**20)
        info["gpu_multiprocessors"] = props.multi_processor_count
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    else:
        info["device"] = f"cpu ({info['cpu']})"
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next(
                (ln.split(":", 1)[1].split() for ln in handle if ln.startswith("flags")), []
            )
    except OSError:
        return []
    return [f for f in wanted if f in flags]


# ---------------------------------------------------------------------- models
def build_random_model(
    family: str,
    shape: tuple[str, int, int, int, int],
    tokenizer_dir: Path,
    out: Path,
    texts: list[str],
    device: Device,
) -> Path:
    """A random-weight masked-LM of ``shape`` with the tokenizer of ``tokenizer_dir``, its
    output bias shifted so that about 200 vocabulary entries are active per document (as with
    trained SPLADE models; with zero bias half the vocabulary would be, which measures
    something else: the sparse output's size drives the copies and the CSR assembly)."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )

    arch, layers, hidden, heads, inter = shape
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if arch == "bert":
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
        )
        model = BertForMaskedLM(config)
    else:
        config = DistilBertConfig(
            vocab_size=vocab, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=inter
        )
        model = DistilBertForMaskedLM(config)
    model.eval().to(device.name)
    sample = tokenizer(
        texts[:32], truncation=True, max_length=256, padding=True, return_tensors="pt"
    ).to(device.name)
    sample.pop("token_type_ids", None)
    with torch.no_grad():
        logits = model(**sample).logits.float()
        pad = ~sample["attention_mask"].bool()[..., None]
        per_doc_max = logits.masked_fill(pad, -1e9).amax(1)
        active = min(200, max(1, vocab // 4))
        shift = torch.quantile(per_doc_max.flatten().cpu(), 1 - active / vocab)
        model.get_output_embeddings().bias -= shift.to(device.name)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"  built {family} {layers}x{hidden} (random) in {out}", flush=True)
    return out


def load_splade_es(folder: Path, device: Device, dtype: str, max_length: int | None = None):
    from splade_es import SpladeEncoder

    return SpladeEncoder.from_pretrained(
        str(folder), device=device.name, dtype=dtype, max_length=max_length
    )


def load_sentence_transformers(folder: Path, device: Device, dtype: str, max_length: int):
    """sentence-transformers' SPLADE stack on the same folder: MLMTransformer + SpladePooling
    (max pooling of log(1 + relu(logits)), as splade-es computes)."""
    import torch
    from sentence_transformers import SparseEncoder

    try:
        from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
    except ImportError:  # sentence-transformers 5.x
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    mlm = MLMTransformer(str(folder), max_seq_length=max_length)
    model = SparseEncoder(modules=[mlm, SpladePooling(pooling_strategy="max")], device=device.name)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.eval()
    return model


def st_to_scipy(tensor: Any):
    import scipy.sparse

    tensor = tensor.coalesce().cpu()
    idx = tensor.indices().numpy()
    values = tensor.values().float().numpy()
    return scipy.sparse.csr_matrix((values, (idx[0], idx[1])), shape=tuple(tensor.shape))


# ---------------------------------------------------------------------- timing
@dataclass
class Timed:
    rate: float  # docs/s
    docs: int
    seconds: float
    peak_mb: float | None


def time_encode(
    fn: Callable[[list[str]], Any],
    pool: Sequence[str],
    batch: int,
    device: Device,
    profile: Profile,
    offset: int = 0,
) -> Timed:
    """Warm up on ``profile.warm_batches`` batches (the first calls pay kernel selection and
    allocation for each new shape, and length-sorted batches come in many shapes), time one
    batch to size the timed call to last about ``profile.measure_s``, time it."""
    fn(take(pool, batch * profile.warm_batches, offset))
    device.sync()
    warm = take(pool, batch, offset)
    started = time.perf_counter()
    fn(warm)
    device.sync()
    estimate = batch / max(time.perf_counter() - started, 1e-6)
    n = int(min(profile.max_docs, max(2 * batch, estimate * profile.measure_s)))
    texts = take(pool, n, offset + batch)
    device.reset_peak()
    started = time.perf_counter()
    fn(texts)
    device.sync()
    seconds = time.perf_counter() - started
    return Timed(n / seconds, n, seconds, device.peak_mb())


def sweep(
    fn_for: Callable[[int], Callable[[list[str]], Any]],
    pool: Sequence[str],
    device: Device,
    profile: Profile,
    budget: Budget,
) -> tuple[int, Timed, dict[int, float]]:
    """Batch sizes in order until throughput drops (or memory runs out): the best one."""
    best: tuple[int, Timed] | None = None
    rates: dict[int, float] = {}
    for batch in profile.batch_sizes:
        if best is not None and budget.expired():
            break
        out_of_memory = False
        try:
            timed = time_encode(fn_for(batch), pool, batch, device, profile)
        except Exception as exc:
            if not device.is_oom(exc):
                raise
            out_of_memory = True
        if out_of_memory:
            # Freed here, not in the except block: its traceback still holds the tensors.
            device.free()
            rates[batch] = 0.0
            break
        rates[batch] = round(timed.rate, 2)
        if best is None or timed.rate > best[1].rate:
            best = (batch, timed)
        elif timed.rate < 0.97 * best[1].rate:
            break
    if best is None:
        raise RuntimeError("no batch size fitted in memory")
    return best[0], best[1], rates


# ---------------------------------------------------------------------- sections
@dataclass
class Context:
    args: argparse.Namespace
    profile: Profile
    device: Device
    budget: Budget
    results: Results
    corpus: Corpus
    models: dict[str, Path]  # name -> folder
    shapes: dict[str, str]  # name -> "12x768 (random)"
    tmp: Path
    errors: list[dict[str, str]] = field(default_factory=list)
    best_batch: dict[tuple[str, int, str], int] = field(default_factory=dict)


def config_order(ctx: Context) -> list[tuple[str, int, str]]:
    """The issue's throughput target first, then bf16 (the GPU default), fp32, fp16; within
    each, the smaller model first: what a short run leaves out is the least asked for."""
    dtype_rank = {"bfloat16": 0, "float32": 1, "float16": 2}
    model_rank = {name: i for i, name in enumerate(ctx.models)}
    configs = [
        (m, length, d)
        for m in ctx.models
        for length in ctx.profile.lengths
        for d in ctx.args.dtypes
    ]

    def key(c: tuple[str, int, str]) -> tuple:
        target = (c[0], c[1], c[2]) == TARGET_CONFIG or (
            ctx.args.smoke and (c[0], c[2]) == TARGET_CONFIG[::2]
        )
        return (not target, dtype_rank.get(c[2], 3), model_rank[c[0]], c[1])

    return sorted(configs, key=key)


def section_encode(ctx: Context) -> None:
    budget = ctx.budget
    loaded: dict[tuple[str, str, str], Any] = {}
    for model, length, dtype in config_order(ctx):
        label = f"{model} L{length} {dtype}"
        if budget.expired():
            budget.skip(label)
            continue
        measured: dict[str, Timed] = {}
        for impl in ("sentence-transformers", "splade-es"):
            if budget.expired():
                budget.skip(f"{label} {impl}")
                continue
            for key in [k for k in loaded if k[:2] != (model, dtype)]:
                del loaded[key]  # one model in memory at a time
            ctx.device.free()
            try:
                measured[impl] = encode_one(ctx, loaded, model, length, dtype, impl)
            except Exception as exc:
                # One configuration that fails (a dtype a kernel lacks, say) costs only itself.
                ctx.errors.append({"section": "encode", "error": f"{label} {impl}: {exc!r}"})
                traceback.print_exc()
                loaded.clear()
        if len(measured) == 2:
            ratio = measured["splade-es"].rate / measured["sentence-transformers"].rate
            ctx.results.add(
                "speedup_vs_sentence_transformers",
                ratio,
                "x",
                **tag(model, "splade-es", dtype),
                max_length=length,
            )
    loaded.clear()
    ctx.device.free()


def encode_one(ctx: Context, loaded: dict, model: str, length: int, dtype: str, impl: str) -> Timed:
    """One implementation at one (model, length, dtype): the batch sweep and its rows."""
    device, results = ctx.device, ctx.results
    handle = loaded.get((model, dtype, impl))
    if handle is None:
        folder = ctx.models[model]
        if impl == "splade-es":
            handle = load_splade_es(folder, device, dtype, length)
        else:
            handle = load_sentence_transformers(folder, device, dtype, length)
        loaded[(model, dtype, impl)] = handle
    if impl == "splade-es":
        handle.max_length = length

        def fn_for(b: int) -> Callable[[list[str]], Any]:
            return lambda texts: handle.encode_documents(texts, batch_size=b)

    else:
        handle.max_seq_length = length

        def fn_for(b: int) -> Callable[[list[str]], Any]:
            return lambda texts: handle.encode_document(
                texts, batch_size=b, convert_to_tensor=True, show_progress_bar=False
            ).cpu()

    batch, timed, rates = sweep(fn_for, ctx.corpus.texts, device, ctx.profile, ctx.budget)
    common = {"max_length": length, "batch_size": batch, "sweep": rates}
    results.add(
        "encode_docs_per_s",
        timed.rate,
        "docs/s",
        **tag(model, impl, dtype),
        docs=timed.docs,
        seconds=round(timed.seconds, 3),
        **common,
    )
    if timed.peak_mb is not None:
        results.add("gpu_peak_mb", timed.peak_mb, "MiB", **tag(model, impl, dtype), **common)
    print(
        f"  {model} L{length} {dtype:9s} {impl:22s} {timed.rate:10.1f} docs/s at batch {batch} "
        f"(sweep {rates})",
        flush=True,
    )
    if impl == "splade-es":
        ctx.best_batch[(model, length, dtype)] = batch
        if dtype != "float16" and not ctx.budget.expired():
            tokenize_share(ctx, handle, model, length, dtype, batch, timed)
    return timed


def tokenize_share(
    ctx: Context, enc: Any, model: str, length: int, dtype: str, batch: int, timed: Timed
) -> None:
    """Tokenization alone (the encoder's own tokenizer call) and the model alone (windows
    tokenized beforehand), on the documents of the timed call: which one bounds throughput.
    Uses the encoder's internals (_tokenize, _encode_window): the kit's smoke test keeps them
    honest."""
    device = ctx.device
    n = timed.docs
    texts = take(ctx.corpus.texts, n, batch)
    window = batch * 16  # iter_encode's default window
    started = time.perf_counter()
    policy = enc.window_policy() if hasattr(enc, "window_policy") else None
    extra = (policy,) if policy is not None else ()
    windows = [
        enc._tokenize(texts[i : i + window], i, "error", *extra) for i in range(0, n, window)
    ]
    tokenize_s = time.perf_counter() - started
    device.sync()
    started = time.perf_counter()
    for i, tok in zip(range(0, n, window), windows, strict=True):
        enc._encode_window(tok, len(texts[i : i + window]), batch, *extra)
    device.sync()
    model_s = time.perf_counter() - started
    common = {"max_length": length, "batch_size": batch, "docs": n}
    results = ctx.results
    results.add(
        "tokenize_docs_per_s", n / tokenize_s, "docs/s", **tag(model, "splade-es", dtype), **common
    )
    results.add(
        "model_docs_per_s", n / model_s, "docs/s", **tag(model, "splade-es", dtype), **common
    )
    results.add(
        "tokenize_share",
        tokenize_s / (tokenize_s + model_s),
        "fraction",
        **tag(model, "splade-es", dtype),
        **common,
    )
    # end to end / (tokenize + model): 1.0 = no overlap, max(t,m)/(t+m) = perfect overlap.
    results.add(
        "end_to_end_vs_serial",
        timed.seconds / timed.docs * n / (tokenize_s + model_s),
        "fraction",
        **tag(model, "splade-es", dtype),
        **common,
    )
    if device.cuda and hasattr(enc, "_queue_on_device"):
        waits = host_waits(enc, windows[0].ids[:batch])
        for name, count in waits.items():
            results.add("host_waits_per_batch", count, "waits", **tag(model, name, dtype), **common)
        print(f"  host waits per batch: {waits}", flush=True)


def host_waits(enc: Any, ids: list[list[int]]) -> dict[str, int]:
    """How often the host waits for the GPU while one batch is queued: the accelerator path
    (``_queue_on_device``, no collect) and the CPU-shaped path (``_encode_batch``, everything),
    counted by torch's sync debug mode. Uses the encoder's internals (see tokenize_share)."""
    import warnings

    import torch

    counts = {}
    for name, call in (
        ("queue_on_device", lambda: enc._queue_on_device(ids)),
        ("cpu_shaped", lambda: enc._encode_batch(ids)),
    ):
        call()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        counts[name] = sum("synchroniz" in str(w.message) for w in caught)
    return counts


def section_fidelity(ctx: Context) -> None:
    device, results, budget = ctx.device, ctx.results, ctx.budget
    length = max(ctx.profile.lengths)
    texts = ctx.corpus.texts[: ctx.profile.fidelity_docs]
    for model, folder in ctx.models.items():
        if budget.expired():
            budget.skip(f"fidelity {model}")
            continue
        device.free()
        reference = load_splade_es(folder, device, "float32", length)
        ref = reference.encode_documents(texts, batch_size=32).to_scipy()
        del reference
        scale = float(abs(ref).max()) if ref.nnz else 0.0
        common = {"max_length": length, "docs": len(texts), "max_weight": scale}
        st = load_sentence_transformers(folder, device, "float32", length)
        theirs = st_to_scipy(
            st.encode_document(
                texts, batch_size=32, convert_to_tensor=True, show_progress_bar=False
            )
        )
        del st
        results.add(
            "max_abs_diff_vs_splade_es_fp32",
            _max_abs(ref, theirs),
            "abs",
            **tag(model, "sentence-transformers", "float32"),
            **common,
        )
        for dtype in ctx.args.dtypes:
            if dtype == "float32":
                continue
            if budget.expired():
                budget.skip(f"fidelity {model} {dtype}")
                continue
            device.free()
            enc = load_splade_es(folder, device, dtype, length)
            mine = enc.encode_documents(texts, batch_size=32).to_scipy()
            del enc
            diff = _max_abs(ref, mine)
            results.add(
                "max_abs_diff_vs_fp32", diff, "abs", **tag(model, "splade-es", dtype), **common
            )
            print(
                f"  {model:12s} {dtype:9s} max |diff| to fp32 {diff:.3e} (max weight {scale:.2f})"
            )
    device.free()


def _max_abs(a: Any, b: Any) -> float:
    diff = abs(a - b)
    return float(diff.max()) if diff.nnz else 0.0


def section_ndcg(ctx: Context) -> None:
    from splade_es.evaluate import in_memory_run, score_run

    corpus, results, budget, device = ctx.corpus, ctx.results, ctx.budget, ctx.device
    if not corpus.qrels:
        budget.skip("ndcg", "no judged queries for these documents")
        return
    qids = list(corpus.queries)
    scores: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        if budget.expired():
            budget.skip(f"ndcg {dtype}")
            continue
        device.free()
        enc = load_splade_es(ctx.models["splade-tiny"], device, dtype, ctx.profile.section_length)
        batch = 128 if device.cuda else 16
        started = time.perf_counter()
        docs = enc.encode_documents(corpus.texts, batch_size=batch, empty="empty_vector")
        queries = enc.encode_queries([corpus.queries[q] for q in qids], empty="empty_vector")
        seconds = time.perf_counter() - started
        del enc
        run = in_memory_run(queries, qids, docs, corpus.doc_ids, k=100)
        scores[dtype] = score_run(run, corpus.qrels)["ndcg@10"]
        results.add(
            "ndcg@10",
            scores[dtype],
            "nDCG@10",
            **tag("splade-tiny", "splade-es", dtype),
            docs=len(corpus.texts),
            queries=len(qids),
            data=corpus.source,
            encode_seconds=round(seconds, 2),
        )
        print(f"  splade-tiny {dtype:9s} nDCG@10 {scores[dtype]:.4f} ({len(qids)} queries)")
    if len(scores) == 2:
        results.add(
            "ndcg@10_minus_fp32",
            scores["bfloat16"] - scores["float32"],
            "nDCG@10",
            **tag("splade-tiny", "splade-es", "bfloat16"),
        )
    device.free()


def section_queries(ctx: Context) -> None:
    from splade_es.serve.batcher import MicroBatcher

    device, results, budget, profile = ctx.device, ctx.results, ctx.budget, ctx.profile
    texts = ctx.corpus.query_texts
    enc = load_splade_es(ctx.models["splade-tiny"], device, "auto", profile.section_length)
    dtype = _encoder_dtype(enc)
    for q in take(texts, 30):
        enc.encode_queries([q])
    times = []
    for i, q in enumerate(take(texts, profile.latency_queries, 30)):
        if i >= 20 and budget.expired():
            break
        started = time.perf_counter()
        enc.encode_queries([q])
        times.append((time.perf_counter() - started) * 1000)
    p50, p99 = _percentiles(times, (50, 99))
    results.add(
        "query_latency_p50_ms",
        p50,
        "ms",
        **tag("splade-tiny", "splade-es", dtype),
        queries=len(times),
    )
    results.add(
        "query_latency_p99_ms",
        p99,
        "ms",
        **tag("splade-tiny", "splade-es", dtype),
        queries=len(times),
    )
    print(f"  one query per call: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(times)} queries)")

    sizes: list[int] = []

    def encode(batch: list[str]) -> Any:
        sizes.append(len(batch))
        return enc.encode_queries(batch, batch_size=len(batch))

    async def drive() -> tuple[int, float, list[float]]:
        batcher = MicroBatcher(
            encode,
            max_batch=32,
            max_wait=0.002,
            cache_size=0,
        )
        batcher.start()
        # Distinct texts (a number appended), so no cache or in-batch dedup serves them.
        pending = iter(f"{t} {i}" for i, t in enumerate(take(texts, profile.batcher_queries, 7)))
        latencies: list[float] = []
        deadline = budget.section_end

        async def caller() -> None:
            for text in pending:
                started = time.perf_counter()
                await batcher.encode([text])
                latencies.append((time.perf_counter() - started) * 1000)
                if time.perf_counter() >= deadline and len(latencies) >= 20:
                    return

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(profile.batcher_callers)))
        seconds = time.perf_counter() - started
        await batcher.close()
        return len(latencies), seconds, latencies

    done, seconds, latencies = asyncio.run(drive())
    p50, p99 = _percentiles(latencies, (50, 99))
    extra = {
        "queries": done,
        "callers": profile.batcher_callers,
        "max_batch": 32,
        "mean_batch": round(statistics.fmean(sizes), 2),
    }
    results.add(
        "batcher_queries_per_s",
        done / seconds,
        "queries/s",
        **tag("splade-tiny", "splade-es", dtype),
        **extra,
    )
    results.add(
        "batcher_latency_p50_ms", p50, "ms", **tag("splade-tiny", "splade-es", dtype), **extra
    )
    results.add(
        "batcher_latency_p99_ms", p99, "ms", **tag("splade-tiny", "splade-es", dtype), **extra
    )
    print(
        f"  MicroBatcher, {profile.batcher_callers} callers: {done / seconds:.0f} queries/s, "
        f"p50 {p50:.2f} ms"
    )


def _encoder_dtype(enc: Any) -> str:
    for param in enc.model.parameters():
        return str(param.dtype).replace("torch.", "")
    return "unknown"


def _percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    import numpy as np

    return [float(x) for x in np.percentile(np.asarray(values, dtype=float), qs)]


def section_ingest(ctx: Context) -> None:
    from splade_es import ConnectionConfig, connect
    from splade_es.ingest import IngestConfig, ingest_file

    device, results, budget, profile = ctx.device, ctx.results, ctx.budget, ctx.profile
    sink = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE, text=True)
    try:
        url = sink.stdout.readline().strip()
        for model in ("splade-tiny", "distilbert"):
            if model not in ctx.models:
                continue
            if budget.expired():
                budget.skip(f"ingest {model}")
                continue
            device.free()
            enc = load_splade_es(ctx.models[model], device, "auto", profile.section_length)
            dtype = _encoder_dtype(enc)
            length = enc.max_length
            batch = ctx.best_batch.get((model, length, dtype)) or (128 if device.cuda else 16)
            # Size from a short encode-only run, so each of the two lasts about ingest_s.
            probe = take(ctx.corpus.texts, batch * 4)
            for _ in enc.iter_encode(probe, batch_size=batch):
                pass
            device.sync()
            started = time.perf_counter()
            for _ in enc.iter_encode(probe, batch_size=batch):
                pass
            device.sync()
            rate = len(probe) / (time.perf_counter() - started)
            lo, hi = profile.ingest_docs
            n = int(min(hi, max(lo, rate * profile.ingest_s)))
            path = ctx.tmp / f"ingest-{model}.jsonl"
            with open(path, "w", encoding="utf-8") as handle:
                for i in range(n):
                    text = ctx.corpus.texts[i % len(ctx.corpus.texts)]
                    handle.write(json.dumps({"_id": f"doc-{i}", "title": "", "text": text}) + "\n")
            texts = [ctx.corpus.texts[i % len(ctx.corpus.texts)] for i in range(n)]

            started = time.perf_counter()
            encoded = sum(len(w) for w in enc.iter_encode(texts, batch_size=batch))
            device.sync()
            encode_s = time.perf_counter() - started

            client = connect(ConnectionConfig(hosts=(url,))).client
            config = IngestConfig(index=f"sink-{model}", create=True, batch_size=batch)
            started = time.perf_counter()
            report = ingest_file(client, path, encoder=enc, config=config)
            ingest_s = time.perf_counter() - started
            client.close()
            if report.indexed != n or encoded != n:
                raise RuntimeError(f"ingest indexed {report.indexed}, encoded {encoded} of {n}")
            common = {
                "docs": n,
                "batch_size": batch,
                "max_length": length,
                "bulk_workers": config.workers,
            }
            results.add(
                "encode_only_docs_per_s",
                n / encode_s,
                "docs/s",
                **tag(model, "splade-es", dtype),
                **common,
            )
            results.add(
                "ingest_docs_per_s",
                n / ingest_s,
                "docs/s",
                **tag(model, "splade-es", dtype),
                **common,
            )
            results.add(
                "ingest_vs_encode_only",
                encode_s / ingest_s,
                "x",
                **tag(model, "splade-es", dtype),
                **common,
            )
            print(
                f"  {model:12s} {dtype:9s} encode-only {n / encode_s:9.1f} docs/s, "
                f"ingest -> sink {n / ingest_s:9.1f} docs/s ({encode_s / ingest_s:.2f}x), {n} docs"
            )
            del enc
    finally:
        sink.kill()
        sink.wait()
    device.free()


# ---------------------------------------------------------------------- the bulk sink
class SinkHandler(BaseHTTPRequestHandler):
    """Answers what ``ingest`` asks (info, index exists, mapping, settings) and acknowledges
    every ``_bulk`` item as created."""

    protocol_version = "HTTP/1.1"
    # Without it every response waited ~45 ms for the client's delayed ACK (Nagle): runs 1 and
    # 2 of 2026-12-04 measured ingest with that wait in every bulk round trip.
    disable_nagle_algorithm = True

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
            mapping = {"properties": {"splade": {"type": "rank_features"}}}
            self._send(200, {index: {"mappings": mapping}})
        else:
            self._send(200, {})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "_bulk" not in self.path:
            self._send(200, {"acknowledged": True})
            return
        actions = [line for line in body.split(b"\n") if line.strip()][::2]
        items = [
            {"index": {"_id": json.loads(a)["index"].get("_id"), "status": 201}} for a in actions
        ]
        self._send(200, {"took": 0, "errors": False, "items": items})

    do_PUT = do_POST


def serve_sink() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SinkHandler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


# ---------------------------------------------------------------------- report
def targets(results: Results, gpu: bool) -> list[dict[str, Any]]:
    """The issue's four targets for a GPU run, each met / not met / not measured."""
    out = []
    model, length, dtype = TARGET_CONFIG
    rate = results.one("encode_docs_per_s", **tag(model, "splade-es", dtype), max_length=length)
    ratio = results.one(
        "speedup_vs_sentence_transformers", model=model, dtype=dtype, max_length=length
    )
    delta = results.one("ndcg@10_minus_fp32")
    ingest = [r["value"] for r in results.find("ingest_vs_encode_only")]
    checks = [
        ("DistilBERT-sized, length 256, bf16: >= 10,000 docs/s", rate, lambda v: v >= 10_000),
        ("same config: >= 5x sentence-transformers", ratio, lambda v: v >= 5),
        ("nDCG@10 bf16 within 0.002 of fp32", delta, lambda v: abs(v) <= 0.002),
    ]
    for name, row, ok in checks:
        value = None if row is None else row["value"]
        out.append({"target": name, "value": value, "met": None if value is None else ok(value)})
    out.append(
        {
            "target": "ingest >= 0.9x encode-only",
            "value": min(ingest) if ingest else None,
            "met": (min(ingest) >= 0.9) if ingest else None,
        }
    )
    if not gpu:
        for t in out:
            t["note"] = "not a GPU run: the targets are for one H200"
    return out


def markdown(report: dict[str, Any]) -> str:
    results = Results()
    results.rows = report["rows"]
    m = report["machine"]
    lines = [
        "# splade-es GPU kit results",
        "",
        f"- device: {m['device']}; torch {m['torch']} (CUDA {m['cuda']}), transformers "
        f"{m['transformers']}, sentence-transformers {m['sentence_transformers']}, Python "
        f"{m['python']}; {m['cpu_count']} CPUs ({m['cpu']}), torch threads {m['torch_threads']}",
        f"- profile: {report['profile']}; data: {report['data']}; run took "
        f"{report['seconds']:.0f} s (sections: {report['section_seconds']})",
        f"- date: {report['date']}",
        "",
        "## Document encoding (best batch size of the sweep)",
        "",
        "| model | max_len | dtype | impl | batch | docs/s | vs s-t | peak GPU MiB "
        "| sweep docs/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.find("encode_docs_per_s"):
        key = {"model": r["model"], "dtype": r["dtype"], "max_length": r["max_length"]}
        st = results.one("encode_docs_per_s", impl="sentence-transformers", **key)
        peak = results.one("gpu_peak_mb", impl=r["impl"], **key)
        vs = f"{r['value'] / st['value']:.2f}x" if st else ""
        peak_text = f"{peak['value']:.0f}" if peak else ""
        sweep_text = ", ".join(f"{b}: {v:.0f}" for b, v in r["sweep"].items())
        lines.append(
            f"| {r['model']} | {r['max_length']} | {r['dtype']} | {r['impl']} | "
            f"{r['batch_size']} | {r['value']:.1f} | {vs} | {peak_text} | {sweep_text} |"
        )
    lines += [
        "",
        "## Tokenization (CPU) vs model (device), splade-es at its best batch",
        "",
        "| model | max_len | dtype | batch | tokenize alone docs/s | model alone docs/s | "
        "tokenize share | end to end / (tokenize + model) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results.find("tokenize_share"):
        key = {k: r[k] for k in ("model", "dtype", "max_length")}
        tok = results.one("tokenize_docs_per_s", **key)
        mod = results.one("model_docs_per_s", **key)
        e2e = results.one("end_to_end_vs_serial", **key)
        lines.append(
            f"| {r['model']} | {r['max_length']} | {r['dtype']} | {r['batch_size']} | "
            f"{tok['value']:.0f} | {mod['value']:.0f} | {r['value']:.2f} | {e2e['value']:.2f} |"
        )
    lines += [
        "",
        "## Fidelity",
        "",
        "| model | max_len | compared | dtype | max abs diff | max weight |",
        "|---|---|---|---|---|---|",
    ]
    for r in results.find("max_abs_diff_vs_splade_es_fp32") + results.find("max_abs_diff_vs_fp32"):
        what = (
            "sentence-transformers vs splade-es fp32"
            if r["impl"] == "sentence-transformers"
            else "splade-es vs splade-es fp32"
        )
        lines.append(
            f"| {r['model']} | {r['max_length']} | {what} | {r['dtype']} | {r['value']:.2e} | "
            f"{r['max_weight']:.2f} |"
        )
    lines += ["", "| model | dtype | nDCG@10 | docs | queries |", "|---|---|---|---|---|"]
    for r in results.find("ndcg@10"):
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['value']:.4f} | {r['docs']} | {r['queries']} |"
        )
    delta = results.one("ndcg@10_minus_fp32")
    if delta:
        lines += ["", f"bf16 minus fp32 nDCG@10: {delta['value']:+.4f}"]
    lines += [
        "",
        "## Queries (splade-tiny, the default dtype of the device)",
        "",
        "| measure | dtype | value | unit |",
        "|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r["measure"].startswith(("query_latency", "batcher_")):
            lines.append(f"| {r['measure']} | {r['dtype']} | {r['value']:.2f} | {r['unit']} |")
    lines += [
        "",
        "## Ingest into a loopback bulk sink vs encode-only",
        "",
        "| model | dtype | docs | batch | encode-only docs/s | ingest docs/s | ingest / encode |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.find("ingest_vs_encode_only"):
        key = {"model": r["model"], "dtype": r["dtype"]}
        enc = results.one("encode_only_docs_per_s", **key)
        ing = results.one("ingest_docs_per_s", **key)
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['docs']} | {r['batch_size']} | "
            f"{enc['value']:.1f} | {ing['value']:.1f} | {r['value']:.2f}x |"
        )
    lines += ["", "## Targets (issue 27)", "", "| target | value | met |", "|---|---|---|"]
    for t in report["targets"]:
        value = "not measured" if t["value"] is None else f"{t['value']:.4g}"
        met = {None: "n/a", True: "yes", False: "**no**"}[t["met"]]
        lines.append(f"| {t['target']} | {value} | {met} |")
    if report["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- {e['section']}: {e['error']}" for e in report["errors"]]
    if report["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s['section']}: {s['what']} ({s['why']})" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", help="folder for gpu-results.json and gpu-results.md")
    parser.add_argument(
        "--model",
        help="splade-tiny folder (also the tokenizer of the random models); default "
        "benchmarks/.gpu-kit/splade-tiny, else ../shared/models/splade-tiny",
    )
    parser.add_argument(
        "--data",
        help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv), or 'synthetic'; "
        "default benchmarks/.gpu-kit/scifact, else ../shared/data/scifact, else synthetic",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, < 2 minutes on a CPU")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma list of " + ",".join(SECTIONS)
    )
    parser.add_argument("--families", default=",".join(FAMILIES), help="random models to add")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--budget-s", type=float, help="whole-run time budget (seconds)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's own; 1 with --smoke, because on a "
        "shared 2-core machine 2 threads run ~10x slower than 1 under contention)",
    )
    parser.add_argument("--wheels", default=str(KIT / "whl"), help="wheels to install offline")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.families = [f for f in args.families.split(",") if f]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for name, given, allowed in (
        ("--sections", args.sections, SECTIONS),
        ("--families", args.families, tuple(FAMILIES)),
        ("--dtypes", args.dtypes, DTYPES),
    ):
        bad = [x for x in given if x not in allowed]
        if bad:
            parser.error(f"{name}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    if not args.sink and not args.out:
        parser.error("--out is required")
    return args


def _default_path(given: str | None, *candidates: Path) -> str | None:
    if given:
        return given
    return next((str(c) for c in candidates if c.is_dir()), None)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.sink:
        serve_sink()
        return {}
    started_wall = time.time()
    installed = ensure_packages(Path(args.wheels))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    threads = args.threads or (1 if args.smoke else None)
    if threads:
        torch.set_num_threads(threads)
    model_dir = _default_path(
        args.model, KIT / "splade-tiny", REPO.parent / "shared/models/splade-tiny"
    )
    if model_dir is None or not Path(model_dir).is_dir():
        raise SystemExit(f"no splade-tiny folder (--model): {model_dir}")
    data = (
        _default_path(args.data, KIT / "scifact", REPO.parent / "shared/data/scifact")
        or "synthetic"
    )
    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = Device(device_name)
    profile = SMOKE_PROFILE if args.smoke else GPU_PROFILE
    if args.budget_s:
        profile = replace(profile, budget_s=args.budget_s)
    if not device.cuda and not args.smoke:
        print("note: no GPU: this runs the GPU profile on the CPU, which takes long", flush=True)
    budget = Budget(profile.budget_s)
    results = Results()
    errors: list[dict[str, str]] = []
    info = machine_info(device)
    print(
        f"device {info['device']}, torch {info['torch']}, {info['cpu_count']} CPUs; "
        f"installed offline: {installed or 'nothing'}",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="splade-es-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        budget.open("setup", profile.caps["setup"])
        corpus = load_corpus(data, profile.ndcg_docs)
        models = {"splade-tiny": Path(model_dir)}
        shapes = {"splade-tiny": "real checkpoint"}
        families = SMOKE_FAMILIES if args.smoke else FAMILIES
        for family in args.families:
            shape = families[family]
            models[family] = build_random_model(
                family, shape, Path(model_dir), tmp / family, corpus.texts, device
            )
            shapes[family] = f"{shape[1]}x{shape[2]} (random)"
        ctx = Context(args, profile, device, budget, results, corpus, models, shapes, tmp, errors)
        runners = {
            "encode": section_encode,
            "fidelity": section_fidelity,
            "ndcg": section_ndcg,
            "queries": section_queries,
            "ingest": section_ingest,
        }
        for name in SECTIONS:
            if name not in args.sections:
                continue
            budget.open(name, profile.caps[name])
            print(f"[{budget.elapsed():6.1f} s] {name}", flush=True)
            if budget.expired():
                budget.skip(name, "the run's budget is spent")
                continue
            try:
                runners[name](ctx)
            except Exception as exc:
                # A GPU loan is short: one failing section must not cost the others.
                errors.append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
                traceback.print_exc()
                device.free()
        budget.close()

    report = {
        "device": info["device"],
        "torch": info["torch"],
        "machine": info,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started_wall)),
        "profile": "smoke" if args.smoke else "gpu",
        "data": corpus.source,
        "models": {name: {"folder": str(p), "shape": shapes[name]} for name, p in models.items()},
        "seconds": round(budget.elapsed(), 1),
        "section_seconds": budget.section_seconds,
        "rows": results.rows,
        "skipped": budget.skipped,
        "errors": errors,
        "targets": targets(results, device.cuda),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-results.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "gpu-results.md").write_text(text)
    print(text, flush=True)
    return report


if __name__ == "__main__":
    main()
