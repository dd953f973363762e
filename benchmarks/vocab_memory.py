"""Peak memory of encoding with a 250,002-piece vocabulary (XLM-R's) vs BERT's 30,522 (issue 26).

Two random-weight models of the same body (``--hidden``, ``--layers``) that differ only in
their vocabulary: an XLM-R-shaped one over the 250k SentencePiece (Unigram) vocabulary of
tests/model_zoo.py and a BERT one over 30,522 WordPiece ids. Each measurement runs in a fresh
process and reads its own peak RSS (VmHWM): after loading, then after encoding ``--docs``
documents of ``--length`` tokens (``encode_documents``, batch ``--batch-size``). The growth
is what encoding adds on top of the loaded model; splade-es pools through vocabulary blocks
(``SpladeHead``), so it should not grow with the vocabulary. For contrast, the same documents
through transformers' forward with the SPLADE formula on the logits (the batch x length x
vocabulary block that splade-es never holds).

    python benchmarks/vocab_memory.py                 # 128 documents of 256 tokens, batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import NormalDist
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build(kind: str, folder: Path, hidden: int, layers: int, length: int) -> None:
    import torch
    import transformers as tf

    from tests.model_zoo import XLMR_VOCAB, _wordpiece, xlmr_tokenizer

    torch.manual_seed(0)
    shape = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "intermediate_size": hidden * 4,
    }
    if kind == "xlmr-250k":
        tokenizer = xlmr_tokenizer()
        model: object = tf.XLMRobertaForMaskedLM(
            tf.XLMRobertaConfig(vocab_size=XLMR_VOCAB, max_position_embeddings=length + 2, **shape)
        )
    else:
        tokenizer = _wordpiece(30_522)
        model = tf.BertForMaskedLM(
            tf.BertConfig(vocab_size=30_522, max_position_embeddings=length, **shape)
        )
    with torch.no_grad():
        bias = model.get_output_embeddings().bias  # type: ignore[attr-defined]
        bias.copy_(active_bias(bias.shape[0]))
    tokenizer.model_max_length = length
    model.save_pretrained(folder)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(folder)


def active_bias(vocab: int, terms: int = 200) -> Any:
    """An output bias under which about ``terms`` of ``vocab`` ids are active for any text (a
    random model's logits are near 0 before it): trained SPLADE models keep ~100-300 terms."""
    import torch

    return torch.randn(vocab) - NormalDist().inv_cdf(1 - terms / vocab)


def worker(args: argparse.Namespace) -> None:
    """In a fresh process: load, read VmHWM, encode, read VmHWM again."""
    import random

    import torch

    from tests.conftest import WORDS

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(args.length)) for _ in range(args.docs)]
    if args.impl == "splade-es":
        from splade_es import SpladeEncoder

        encoder = SpladeEncoder.from_pretrained(args.model, device="cpu", max_length=args.length)
        loaded = peak_rss_mb()
        vectors = encoder.encode_documents(texts, batch_size=args.batch_size)
        nnz = float(vectors.nnz_per_row.mean())
    else:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForMaskedLM.from_pretrained(args.model, dtype=torch.float32).eval()
        loaded = peak_rss_mb()
        total = 0
        with torch.inference_mode():
            for start in range(0, len(texts), args.batch_size):
                batch = tokenizer(
                    texts[start : start + args.batch_size],
                    truncation=True,
                    max_length=args.length,
                    padding=True,
                    return_tensors="pt",
                )
                logits = model(**batch).logits
                weights = torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
                total += int((weights.amax(dim=1) > 0).sum())
        nnz = total / len(texts)
    print(json.dumps({"loaded_mb": loaded, "peak_mb": peak_rss_mb(), "nnz": nnz}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=128)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="splade-es", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        worker(args)
        return
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory(prefix="vocab-memory-") as tmp:
        for kind in ("bert-30k", "xlmr-250k"):
            folder = Path(tmp) / kind
            build(kind, folder, args.hidden, args.layers, args.length)
            for impl in ("splade-es", "transformers"):
                command = [
                    sys.executable, __file__, "--worker", "--impl", impl, "--model", str(folder),
                    "--docs", str(args.docs), "--length", str(args.length),
                    "--batch-size", str(args.batch_size),
                ]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
                report = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append((kind, impl, report))
                print(kind, impl, report, flush=True)
    print(
        f"\n{args.docs} documents of {args.length} tokens, batch {args.batch_size}, body "
        f"{args.layers} layers x {args.hidden} hidden, fp32 CPU, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    header = (
        f"{'vocabulary':<12}{'implementation':<16}{'RSS loaded MB':>15}{'peak MB':>10}"
        f"{'growth MB':>11}{'growth / BERT':>15}{'terms/doc':>11}"
    )
    print(header)
    print("-" * len(header))
    base = {impl: r["peak_mb"] - r["loaded_mb"] for kind, impl, r in rows if kind == "bert-30k"}
    for kind, impl, r in rows:
        growth = r["peak_mb"] - r["loaded_mb"]
        print(
            f"{kind:<12}{impl:<16}{r['loaded_mb']:>15.0f}{r['peak_mb']:>10.0f}{growth:>11.0f}"
            f"{growth / max(base[impl], 1.0):>14.2f}x{r['nnz']:>11.0f}"
        )


if __name__ == "__main__":
    main()
