"""Encoding speed and fidelity: splade-es SpladeEncoder vs sentence-transformers SparseEncoder.

Same model, same texts, same machine, same max_length, one run; each measurement in a fresh
subprocess so peak memory is its own. Prints docs/s, the ratio, the max absolute difference
between the two sets of vectors, and peak RSS (and peak GPU memory on CUDA).

    python benchmarks/encode.py --model ../shared/models/splade-tiny --data ../shared/data/scifact
    python benchmarks/encode.py ... --families mini,small,distilbert   # random-weight models
    python benchmarks/encode.py ... --stream 20000                     # memory over a long stream
    python benchmarks/encode.py ... --queries 300    # one-query latency: inference-free vs siamese
    python benchmarks/encode.py ... --onnx --docs 200  # vs ONNX Runtime: rounds in one process
    python benchmarks/encode.py ... --long-documents truncate,maxpool,passages --window 128

Random-weight models of the larger families get their output bias shifted so that about 200
vocabulary entries are active per document, as with trained SPLADE models (with zero bias,
half the vocabulary would be active and the comparison would measure something else).

The ONNX Runtime table (``--onnx``) runs in one process, each implementation in turn on the same
documents, round after round (the order rotating), so that a noisy minute hits every row alike:
sentence-transformers ``SparseEncoder`` (MLMTransformer + SpladePooling) on torch; the same
SparseEncoder with its transformer replaced by an ``onnxruntime`` CPU session of the masked-LM
exported by ``torch.onnx.export`` (the peer a CPU user tries next; sentence-transformers' own
``backend="onnx"`` does not load with transformers 5); splade-es; and splade-es without the bf16
screen where the CPU turns it on. It needs ``pip install onnx onnxruntime onnxscript``.
``--threads`` sets torch's and ONNX Runtime's intra-op threads alike; ``--load N`` starts N
busy processes for the duration (contention on purpose); ``OMP_WAIT_POLICY=passive`` in the
environment changes how torch's OpenMP threads wait.

The long-documents table (``--long-documents truncate,maxpool,passages --window W``) runs in
one process on the same documents, the modes in interleaved rounds (the order rotating), the
model reading ``W`` tokens in every mode (truncate: the first ``W``; maxpool and passages:
windows of ``W``, ``--overlap`` tokens shared). Per mode: docs/s, windows/s (windows encoded per
second) and windows per document; the check that maxpool costs no more than the windows it
encodes (its windows/s within 10% of truncate's docs/s: both are W-token forward passes), and
that the vectors agree (maxpool = the elementwise max of the passages; a document of one
window is the same vector in every mode; by ``splade_es.sparse.same_vector``).

The query latency table (``--queries N``) times ``encode_queries([q])``, one query per call as
a search does, in one process: the checkpoint itself (siamese: a forward pass per query), and
the same checkpoint in OpenSearch's document-only layout (``idf.json`` beside it, IDF weights
computed from the corpus): a token weight lookup, no forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse

FAMILIES = {  # name: (architecture, layers, hidden, heads, intermediate)
    "mini": ("bert", 4, 256, 4, 1024),  # SPLADE-BERT-Mini, 11M
    "small": ("bert", 4, 512, 8, 2048),  # splade-small, 29M
    "distilbert": ("distilbert", 6, 768, 12, 3072),  # splade-distilbert, 67M
}


def load_texts(data_dir: Path, n: int) -> list[str]:
    texts = []
    with open(data_dir / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
            if len(texts) >= n:
                break
    return texts


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Unlike getrusage's ru_maxrss, it is not inherited from
    the parent across fork + exec, so each worker reports only its own memory."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(device: str) -> dict:
    out = {"peak_rss_mb": peak_rss_mb()}
    if device.startswith("cuda"):
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def worker(args: argparse.Namespace) -> None:
    """Runs in a subprocess: encode, time, write vectors to args.out (npz)."""
    import torch

    texts = load_texts(Path(args.data), args.docs)
    if args.impl == "splade-es":
        from splade_es import SpladeEncoder

        enc = SpladeEncoder.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, max_length=args.max_length
        )
        enc.encode_documents(texts[:8], batch_size=args.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        matrix = enc.encode_documents(texts, batch_size=args.batch_size).to_scipy()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    else:
        from sentence_transformers import SparseEncoder

        model = SparseEncoder(args.model, device=args.device)
        model.max_seq_length = args.max_length
        if args.dtype in ("bfloat16", "float16"):
            model = model.to(getattr(torch, args.dtype))
        model.encode_document(texts[:8], batch_size=args.batch_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        emb = model.encode_document(texts, batch_size=args.batch_size, convert_to_tensor=True)
        emb = emb.coalesce().cpu()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        idx, val = emb.indices().numpy(), emb.values().float().numpy()
        matrix = scipy.sparse.csr_matrix((val, (idx[0], idx[1])), shape=tuple(emb.shape))
    scipy.sparse.save_npz(args.out, matrix.tocsr())
    print(
        json.dumps(
            {
                "docs_per_s": len(texts) / elapsed,
                "nnz": matrix.nnz / len(texts),
                **peak_memory(args.device),
            }
        )
    )


def stream_worker(args: argparse.Namespace) -> None:
    """Encode a long stream through iter_encode, sampling RSS as it goes."""
    from splade_es import SpladeEncoder

    base = load_texts(Path(args.data), 2000)
    enc = SpladeEncoder.from_pretrained(args.model, device=args.device, max_length=args.max_length)

    def texts():
        for i in range(args.stream):
            yield base[i % len(base)]

    samples, done, start = [], 0, time.perf_counter()
    for window in enc.iter_encode(texts(), batch_size=args.batch_size):
        done += len(window)
        if done % 2000 < len(window):
            samples.append((done, peak_rss_mb()))
    print(json.dumps({"samples": samples, "docs_per_s": done / (time.perf_counter() - start)}))


def load_queries(data_dir: Path, n: int) -> list[str]:
    with open(data_dir / "queries.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line, _ in zip(handle, range(n), strict=False)]


def corpus_idf(model: str, texts: list[str]) -> dict[str, float]:
    """log(N / df) per token of the corpus: the kind of table document-only models ship."""
    import math
    from collections import Counter

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    df = Counter()
    for ids in tokenizer(texts, add_special_tokens=False, truncation=True)["input_ids"]:
        df.update(set(ids))
    tokens = tokenizer.convert_ids_to_tokens(list(df))
    return {t: math.log(len(texts) / df[i]) + 1.0 for t, i in zip(tokens, df, strict=True)}


def query_latency(args: argparse.Namespace, tmp: Path) -> list[tuple[str, dict]]:
    """p50 / p95 / mean milliseconds of ``encode_queries([q])``, siamese vs inference-free."""
    import shutil
    import statistics

    from splade_es import SpladeEncoder

    queries = load_queries(Path(args.data), args.queries)
    doc_only = tmp / "doc-only"
    shutil.copytree(args.model, doc_only)
    idf = corpus_idf(args.model, load_texts(Path(args.data), 5000))
    (doc_only / "idf.json").write_text(json.dumps(idf))
    rows = []
    for label, path in (("siamese", args.model), ("inference-free", str(doc_only))):
        encoder = SpladeEncoder.from_pretrained(path, device=args.device)
        assert encoder.mode == label, (encoder.mode, label)
        for q in queries[:20]:
            encoder.encode_queries([q])  # warm-up
        times, nnz = [], 0
        for q in queries:
            start = time.perf_counter()
            batch = encoder.encode_queries([q])
            times.append((time.perf_counter() - start) * 1000)
            nnz += int(batch.nnz_per_row[0])
        times.sort()
        rows.append(
            (
                label,
                {
                    "p50": statistics.median(times),
                    "p95": times[int(0.95 * (len(times) - 1))],
                    "mean": statistics.fmean(times),
                    "nnz": nnz / len(queries),
                },
            )
        )
    return rows


def run_child(extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"worker failed: {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_random_model(family: str, tokenizer_dir: Path, out_dir: Path, data: Path) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )

    arch, layers, hidden, heads, inter = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    if arch == "bert":
        model = BertForMaskedLM(
            BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=inter,
            )
        )
    else:
        model = DistilBertForMaskedLM(
            DistilBertConfig(
                vocab_size=tokenizer.vocab_size,
                dim=hidden,
                n_layers=layers,
                n_heads=heads,
                hidden_dim=inter,
            )
        )
    model.eval()
    sample = tokenizer(
        load_texts(data, 16), truncation=True, max_length=256, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**sample).logits
        per_doc_max = logits.masked_fill(~sample["attention_mask"].bool()[..., None], -1e9).amax(1)
        shift = torch.quantile(per_doc_max.flatten().float(), 1 - 200 / logits.shape[-1])
        model.get_output_embeddings().bias -= shift
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------- ONNX Runtime peer
def cpu_header() -> str:
    """The CPU, the flags that decide the fast paths, and how loaded the machine is."""
    model, flags = "unknown", set()
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    shown = " ".join(f"{f}{'+' if f in flags else '-'}" for f in wanted)
    return f"{model}, {os.cpu_count()} CPUs, flags {shown}"


def sentence_transformers_stack(model: str, max_length: int):
    """sentence-transformers' SPLADE stack on a masked-LM folder: MLMTransformer + SpladePooling
    (max of log(1 + relu(logits)) over the tokens)."""
    from sentence_transformers import SparseEncoder

    try:
        from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling
    except ImportError:  # sentence-transformers 5.x
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    mlm = MLMTransformer(model, max_seq_length=max_length)
    return SparseEncoder(modules=[mlm, SpladePooling(pooling_strategy="max")], device="cpu")


def export_onnx(model: str, path: Path) -> str:
    """The masked-LM (input ids, attention mask -> logits) as ONNX, batch and length dynamic.
    A fresh copy of the model is exported: the exporter may leave the one it traces altered."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    class Logits(torch.nn.Module):
        def __init__(self, mlm: torch.nn.Module) -> None:
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits

    mlm = AutoModelForMaskedLM.from_pretrained(model, dtype=torch.float32).eval()
    sample = AutoTokenizer.from_pretrained(model)(
        ["an example input", "two"], padding=True, return_tensors="pt"
    )
    inputs = (sample["input_ids"], sample["attention_mask"])
    wrapper = Logits(mlm).eval()
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    try:  # torch's default exporter (torch.export + onnxscript)
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
        shapes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
        torch.onnx.export(wrapper, inputs, str(path), dynamic_shapes=shapes, dynamo=True, **names)
        return "torch.onnx.export (dynamo)"
    except Exception as exc:  # older torch, or no onnxscript: the TorchScript exporter
        print(f"note: the dynamo exporter failed ({type(exc).__name__}); using TorchScript's")
        axes = {name: {0: "batch", 1: "length"} for name in ("input_ids", "attention_mask")}
        torch.onnx.export(
            wrapper,
            inputs,
            str(path),
            dynamic_axes=axes,
            dynamo=False,
            opset_version=17,
            **names,
        )
        return "torch.onnx.export (TorchScript)"


def onnx_stack(model: str, max_length: int, onnx_path: Path, threads: int):
    """The sentence-transformers stack with its transformer's forward replaced by an ONNX
    Runtime CPU session: same tokenization, same pooling, only the masked-LM differs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    stack = sentence_transformers_stack(model, max_length)
    transformer = stack[0]

    def forward(features: dict, **_: object) -> dict:
        feed = {
            "input_ids": features["input_ids"].numpy().astype(np.int64),
            "attention_mask": features["attention_mask"].numpy().astype(np.int64),
        }
        logits = session.run(["logits"], feed)[0]
        return {**features, "token_embeddings": torch.from_numpy(logits)}

    transformer.forward = forward  # nn.Module.__call__ looks forward up on the instance
    return stack


def st_matrix(tensor) -> scipy.sparse.csr_matrix:
    tensor = tensor.coalesce().cpu()
    idx, val = tensor.indices().numpy(), tensor.values().float().numpy()
    return scipy.sparse.csr_matrix((val, (idx[0], idx[1])), shape=tuple(tensor.shape))


def start_load(n: int, seconds: float) -> list[subprocess.Popen]:
    """``n`` busy processes (pure Python spin), each ending by itself after ``seconds``."""
    spin = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]


def onnx_comparison(args: argparse.Namespace):
    """docs/s per implementation over interleaved rounds, the ratio to sentence-transformers
    (median of the per-round ratios: robust to a load that changes between rounds) and the
    largest weight difference to sentence-transformers' vectors."""
    import statistics

    import onnxruntime as ort
    import torch
    from rich.markup import escape
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    from splade_es import SpladeEncoder

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    texts = load_texts(Path(args.data), args.docs)
    batch, max_len = args.batch_size, args.max_length
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "mlm.onnx"
        exporter = export_onnx(args.model, onnx_path)
        reference = sentence_transformers_stack(args.model, max_len)
        onnx = onnx_stack(args.model, max_len, onnx_path, threads)
        shipped = SpladeEncoder.from_pretrained(args.model, device="cpu", max_length=max_len)
        impls = {
            "sentence-transformers (torch)": lambda docs: st_matrix(
                reference.encode_document(docs, batch_size=batch, convert_to_tensor=True)
            ),
            "sentence-transformers + ONNX Runtime": lambda docs: st_matrix(
                onnx.encode_document(docs, batch_size=batch, convert_to_tensor=True)
            ),
            "splade-es": lambda docs: shipped.encode_documents(docs, batch_size=batch).to_scipy(),
        }
        if shipped.head.screen:  # this CPU turns the screen on: show what it is worth
            plain = SpladeEncoder.from_pretrained(
                args.model, device="cpu", max_length=max_len, screen=False
            )
            impls["splade-es, bf16 screen off"] = lambda docs: plain.encode_documents(
                docs, batch_size=batch
            ).to_scipy()
        load = start_load(args.load, seconds=1800) if args.load else []
        load_before = os.getloadavg()[0]
        try:
            for encode in impls.values():  # first calls allocate and pick kernels
                encode(texts[:batch])
            seconds: dict[str, list[float]] = {name: [] for name in impls}
            vectors: dict[str, scipy.sparse.csr_matrix] = {}
            names = list(impls)
            for round_no in range(args.rounds):
                shift = round_no % len(names)  # each implementation takes each place in turn
                for name in names[shift:] + names[:shift]:
                    started = time.perf_counter()
                    vectors[name] = impls[name](texts)
                    seconds[name].append(time.perf_counter() - started)
        finally:
            for proc in load:
                proc.kill()
                proc.wait()
        load_after = os.getloadavg()[0]

    base = "sentence-transformers (torch)"
    policy = os.environ.get("OMP_WAIT_POLICY")
    wait = f", OMP_WAIT_POLICY={escape(policy)}" if policy else ""
    title = (
        f"{escape(Path(args.model).name)}, {len(texts)} documents of "
        f"{escape(Path(args.data).name)}, max_length {max_len}, batch {batch}, "
        f"{args.rounds} interleaved rounds; torch {torch.__version__} ({threads} threads{wait})"
        f", onnxruntime {ort.__version__} ({threads} intra-op threads), {exporter}\n"
        f"{escape(cpu_header())}; load average {load_before:.1f} -> {load_after:.1f}"
        f"{f', {args.load} busy processes started' if args.load else ''}"
    )
    table = Table(title=title)
    for col in (
        "implementation",
        "docs/s (median)",
        "min-max",
        "vs s-t (median of rounds)",
        "max |diff| vs s-t",
        "same non-zero ids",
    ):
        table.add_column(col, justify="right")
    ref = vectors[base]
    for name in impls:
        rates = [len(texts) / s for s in seconds[name]]
        ratios = [b / s for b, s in zip(seconds[base], seconds[name], strict=True)]
        diff = abs(vectors[name] - ref)
        same = sum(
            np.array_equal(vectors[name][i].indices, ref[i].indices) for i in range(len(texts))
        )
        table.add_row(
            name,
            f"{statistics.median(rates):.1f}",
            f"{min(rates):.1f}-{max(rates):.1f}",
            f"{statistics.median(ratios):.2f}x",
            f"{diff.max() if diff.nnz else 0.0:.2e}",
            f"{same}/{len(texts)}",
        )
    return table


# ---------------------------------------------------------------------- long documents
def long_document_encoders(enc, args: argparse.Namespace) -> dict:
    """mode -> encode(texts) -> (vectors, windows encoded), every mode at ``args.window``."""
    batch, window, overlap = args.batch_size, args.window, args.overlap

    def truncate(docs):
        return enc.encode_documents(docs, batch_size=batch), len(docs)

    def maxpool(docs):
        out = enc.encode_documents(
            docs, batch_size=batch, long_documents="maxpool", window=window, overlap=overlap
        )
        return out, int(out.windows.sum())

    def passages(docs):
        out = enc.encode_passages(docs, batch_size=batch, window=window, overlap=overlap)
        return out, len(out.passages)

    chosen = {"truncate": truncate, "maxpool": maxpool, "passages": passages}
    modes = [m.strip() for m in args.long_documents.split(",") if m.strip()]
    unknown = [m for m in modes if m not in chosen]
    if unknown or not modes:
        raise SystemExit(
            f"--long-documents: {', '.join(unknown) or 'nothing'}: choose from {', '.join(chosen)}"
        )
    return {m: chosen[m] for m in dict.fromkeys(modes)}


def long_document_rounds(impls: dict, texts: list[str], rounds: int):
    """Seconds per mode per round (each mode takes each place in turn), the last vectors and
    windows encoded per mode."""
    for encode in impls.values():  # first calls allocate and pick kernels
        encode(texts[:8])
    seconds: dict[str, list[float]] = {name: [] for name in impls}
    vectors, windows = {}, {}
    names = list(impls)
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            vectors[name], windows[name] = impls[name](texts)
            seconds[name].append(time.perf_counter() - started)
    return seconds, vectors, windows


def long_document_vector_check(vectors: dict) -> list[str]:
    """maxpool = the elementwise max of the passages; one-window documents the same in every
    mode (the suite's rule, ``same_vector``)."""
    from splade_es.encoding.windows import max_pool
    from splade_es.sparse import same_vector

    lines = []
    pooled, passages = vectors.get("maxpool"), vectors.get("passages")
    if pooled is not None and passages is not None:
        same = sum(
            same_vector(
                pooled.to_dict(d),
                dict_of(
                    max_pool([passages.passages.row(p) for p in passages.passage_range(d)]),
                    pooled.vocab,
                ),
            )
            for d in range(len(pooled))
        )
        lines.append(f"maxpool = elementwise max of the passages: {same}/{len(pooled)} documents")
    modes = list(vectors.values())
    single = [
        d
        for d in range(len(modes[0]))
        if all(windows_of(v, d) == 1 and not truncated_of(v, d) for v in modes)
    ]
    same = sum(
        all(same_vector(one_vector(modes[0], d), one_vector(v, d)) for v in modes) for d in single
    )
    lines.append(f"documents of one window, the same vector in every mode: {same}/{len(single)}")
    return lines


def dict_of(row, vocab) -> dict[str, float]:
    ids, weights = row
    return {vocab[i]: float(w) for i, w in zip(ids.tolist(), weights.tolist(), strict=True)}


def windows_of(vectors, d: int) -> int:
    if hasattr(vectors, "passages"):
        return len(vectors.passage_range(d))
    return 1 if vectors.windows is None else int(vectors.windows[d])


def truncated_of(vectors, d: int) -> bool:
    return bool(vectors.truncated[d]) if vectors.truncated is not None else False


def one_vector(vectors, d: int) -> dict[str, float]:
    """Document ``d``'s vector (a passages batch: its first passage)."""
    if hasattr(vectors, "passages"):
        return vectors.passages.to_dict(vectors.passage_range(d)[0])
    return vectors.to_dict(d)


def long_document_comparison(args: argparse.Namespace):
    """docs/s and windows/s per long-documents mode over interleaved rounds, windows per
    document, the maxpool cost check and the vector check."""
    import statistics

    import torch
    from rich.markup import escape
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    from splade_es import SpladeEncoder

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = load_texts(Path(args.data), args.docs)
    enc = SpladeEncoder.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_length=args.window
    )
    policy = enc.window_policy("maxpool", window=args.window, overlap=args.overlap)
    impls = long_document_encoders(enc, args)
    load_before = os.getloadavg()[0]
    seconds, vectors, windows = long_document_rounds(impls, texts, args.rounds)
    load_after = os.getloadavg()[0]
    title = (
        f"{escape(Path(args.model).name)}, {len(texts)} documents of "
        f"{escape(Path(args.data).name)}, windows of {policy.window} tokens (overlap "
        f"{policy.overlap}), batch {args.batch_size}, {args.device} ({args.dtype}), "
        f"{args.rounds} interleaved rounds; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)\n{escape(cpu_header())}; load average "
        f"{load_before:.1f} -> {load_after:.1f}"
    )
    table = Table(title=title)
    for col in (
        "mode",
        "docs/s (median)",
        "min-max",
        "windows/doc",
        "windows/s (median)",
        "windows/s / truncate docs/s",
    ):
        table.add_column(col, justify="right")
    base = seconds.get("truncate")
    ratios = {}
    for name in impls:
        rates = [len(texts) / s for s in seconds[name]]
        per_window = [windows[name] / s for s in seconds[name]]
        if base:  # per round: this mode's windows/s over truncate's docs/s of the same round
            ratios[name] = statistics.median(
                windows[name] * b / (len(texts) * s)
                for b, s in zip(base, seconds[name], strict=True)
            )
        table.add_row(
            name,
            f"{statistics.median(rates):.1f}",
            f"{min(rates):.1f}-{max(rates):.1f}",
            f"{windows[name] / len(texts):.2f}",
            f"{statistics.median(per_window):.1f}",
            f"{ratios[name]:.2f}" if name in ratios else "",
        )
    notes = [
        f"round {r + 1}: " + ", ".join(f"{name} {seconds[name][r]:.1f} s" for name in impls)
        for r in range(args.rounds)
    ]
    notes += long_document_vector_check(vectors)
    if "maxpool" in ratios:
        verdict = "ok" if ratios["maxpool"] >= 0.9 else "FAILS"
        notes.append(
            f"check: maxpool windows/s / truncate docs/s = {ratios['maxpool']:.2f} (median of "
            f"rounds; within 10%: >= 0.90): {verdict}"
        )
    return table, notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("SPLADE_ES_TEST_MODEL"),
        help="splade-tiny folder (also the tokenizer for random models)",
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("SPLADE_ES_BENCH_DATA"),
        help="BEIR folder with corpus.jsonl",
    )
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--families", default="", help="comma list of: " + ",".join(FAMILIES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stream", type=int, default=0, help="also stream N docs, sampling RSS")
    parser.add_argument(
        "--queries", type=int, default=0, help="also time N one-query encodes (queries.jsonl)"
    )
    parser.add_argument("--queries-only", action="store_true", help="only the query latency table")
    parser.add_argument(
        "--onnx", action="store_true", help="only the ONNX Runtime table (one process, rounds)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (--onnx, --long-documents)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch and ONNX Runtime threads (--onnx, --long-documents)"
    )
    parser.add_argument(
        "--load", type=int, default=0, help="busy processes to run alongside (--onnx)"
    )
    parser.add_argument(
        "--long-documents",
        help="only the long-documents table: a comma list of truncate,maxpool,passages",
    )
    parser.add_argument(
        "--window", type=int, default=128, help="model tokens per window (--long-documents)"
    )
    parser.add_argument(
        "--overlap", type=int, help="content tokens shared by windows (--long-documents)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return stream_worker(args) if args.stream_worker else worker(args)
    if not args.model or not args.data:
        parser.error(
            "--model and --data (or SPLADE_ES_TEST_MODEL / SPLADE_ES_BENCH_DATA) are required"
        )

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    if args.onnx:
        console.print(onnx_comparison(args))
        return
    if args.long_documents:
        table, notes = long_document_comparison(args)
        console.print(table)
        for note in notes:
            console.print(note)
        return
    if args.queries:
        with tempfile.TemporaryDirectory() as tmp:
            rows = query_latency(args, Path(tmp))
        latency = Table(
            title=f"query encoding, one query per call, {args.queries} scifact queries, "
            f"{args.device}, torch threads {_threads()}"
        )
        for col in ("model", "mode", "p50 ms", "p95 ms", "mean ms", "tokens/query", "p50 ratio"):
            latency.add_column(col, justify="right")
        base = rows[0][1]["p50"]
        for label, res in rows:
            latency.add_row(
                Path(args.model).name,
                label,
                f"{res['p50']:.3f}",
                f"{res['p95']:.3f}",
                f"{res['mean']:.3f}",
                f"{res['nnz']:.1f}",
                f"{base / res['p50']:.0f}x faster" if label != "siamese" else "1x",
            )
        console.print(latency)
        if args.queries_only:
            return

    table = Table(
        title=f"SPLADE document encoding on {args.device} ({args.dtype}), batch {args.batch_size}"
    )
    for col in (
        "model",
        "docs",
        "max_len",
        "impl",
        "docs/s",
        "ratio",
        "max |diff|",
        "nnz/doc",
        "peak RSS MB",
        "peak GPU MB",
    ):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        models = [("splade-tiny", args.model, args.docs, args.max_length)]
        for fam in filter(None, args.families.split(",")):
            path = make_random_model(fam, Path(args.model), Path(tmp) / fam, Path(args.data))
            n = max(24, args.docs // {"mini": 2, "small": 4, "distilbert": 8}[fam])
            models.append((f"{fam} (random)", str(path), n, min(args.max_length, 256)))
        for label, path, n, max_len in models:
            results, matrices = {}, {}
            for impl in ("sentence-transformers", "splade-es"):
                out = str(Path(tmp) / f"{impl}.npz")
                results[impl] = run_child(
                    [
                        "--impl",
                        impl,
                        "--model",
                        path,
                        "--data",
                        args.data,
                        "--docs",
                        str(n),
                        "--device",
                        args.device,
                        "--dtype",
                        args.dtype,
                        "--batch-size",
                        str(args.batch_size),
                        "--max-length",
                        str(max_len),
                        "--out",
                        out,
                    ]
                )
                matrices[impl] = scipy.sparse.load_npz(out)
            diff = abs(matrices["splade-es"] - matrices["sentence-transformers"]).max()
            base = results["sentence-transformers"]["docs_per_s"]
            for impl, res in results.items():
                table.add_row(
                    label,
                    str(n),
                    str(max_len),
                    impl,
                    f"{res['docs_per_s']:.1f}",
                    f"{res['docs_per_s'] / base:.2f}x",
                    f"{diff:.2e}" if impl == "splade-es" else "",
                    f"{res['nnz']:.0f}",
                    f"{res['peak_rss_mb']:.0f}",
                    f"{res.get('peak_gpu_mb', float('nan')):.0f}",
                )
    console.print(table)
    if args.stream:
        res = run_child(
            [
                "--stream-worker",
                "--model",
                args.model,
                "--data",
                args.data,
                "--stream",
                str(args.stream),
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                "128",
            ]
        )
        stream = Table(title=f"peak RSS while streaming {args.stream} docs (max_length 128)")
        stream.add_column("docs encoded", justify="right")
        stream.add_column("peak RSS MB", justify="right")
        for done, rss in res["samples"]:
            stream.add_row(f"{done:,}", f"{rss:.0f}")
        console.print(stream)
        console.print(f"stream throughput: {res['docs_per_s']:.1f} docs/s")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
