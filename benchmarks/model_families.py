"""Encoding speed per model family (issue 26): splade-es ``SpladeEncoder`` vs transformers' plain
forward with the reference SPLADE pooling, on random-weight base-size BERT, RoBERTa, XLM-R and
ModernBERT models built locally (tests/model_zoo.py: the published base models' layer shapes
and vocabulary sizes), side by side in one run.

    python benchmarks/model_families.py                      # 64 documents of 256 tokens
    python benchmarks/model_families.py --docs 128 --families roberta,xlm-roberta

Per family, in interleaved rounds (the order rotating, so a noisy minute on a shared machine
hits every row alike), documents/s of:

* ``transformers``: ``AutoModelForMaskedLM`` on padded batches of ``--batch-size``, then
  ``max over positions of log1p(relu(logits))`` (the masked positions left out): the formula,
  as a user writes it with transformers alone;
* ``splade-es``: ``SpladeEncoder.encode_documents`` (FastForward for BERT, transformers'
  forward for the others; the pooling head that never holds the batch x length x vocabulary
  logits);
* ``splade-es, no FastForward`` (BERT only): the same encoder with FastForward off, i.e. what
  the other families run. Its ratio to ``splade-es`` is what FastForward gains on a model of
  this size; RoBERTa and XLM-R are BERT's layers (post-norm, GELU, the same attention) with
  other embeddings, so this is also what extending FastForward to them could gain.

And the one-query latency (``encode_queries([q])``, p50 over ``--queries`` queries of ~10
words), where FastForward's saving of transformers' per-call Python matters most, with and
without FastForward for BERT. The vectors of splade-es and of the reference are compared
(largest difference relative to the document's largest weight).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from splade_es import SpladeEncoder
from tests.model_zoo import WORDS, realistic_model

FAMILIES = ("bert", "roberta", "xlm-roberta", "modernbert")


def texts_of(count: int, words: int, seed: int) -> list[str]:
    """Documents long enough to fill ``--length`` tokens in every family's tokenizer."""
    from tests.conftest import WORDS as ENGLISH

    vocabulary = [*ENGLISH, *WORDS]
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocabulary) for _ in range(words)) for _ in range(count)]


class Reference:
    """transformers' forward + the SPLADE formula on padded batches."""

    def __init__(self, folder: Path, length: int) -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForMaskedLM.from_pretrained(str(folder), dtype=torch.float32)
        self.model.eval()
        self.length = length

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=self.length,
                padding=True,
                return_tensors="pt",
            )
            logits = self.model(**batch).logits
            weights = logits.relu_().log1p_()  # in place: [B, L, V] is the batch's largest block
            weights *= batch["attention_mask"].unsqueeze(-1)
            rows.append(weights.amax(dim=1).numpy())
        return np.concatenate(rows)


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def largest_difference(got: np.ndarray, expected: np.ndarray) -> float:
    scale = np.maximum(np.abs(expected).max(axis=1, keepdims=True), 1e-12)
    return float((np.abs(got - expected) / scale).max())


def query_p50_ms(encoder: SpladeEncoder, queries: list[str]) -> float:
    encoder.encode_queries(queries[:3])
    times = []
    for query in queries:
        start = time.perf_counter()
        encoder.encode_queries([query])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_family(family: str, folder: Path, args: argparse.Namespace) -> dict[str, object]:
    texts = texts_of(args.docs, args.length * 2, seed=1)
    queries = texts_of(args.queries, 10, seed=2)
    reference = Reference(folder, args.length)
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu", max_length=args.length)
    plain = None
    if encoder.fast_forward is not None:
        plain = SpladeEncoder.from_pretrained(str(folder), device="cpu", max_length=args.length)
        plain.fast_forward = None
    rows: dict[str, list[float]] = {"transformers": [], "splade-es": []}
    if plain is not None:
        rows["splade-es, no FastForward"] = []
    runs = {
        "transformers": lambda: reference.encode(texts, args.batch_size),
        "splade-es": lambda: encoder.encode_documents(texts, batch_size=args.batch_size),
        "splade-es, no FastForward": lambda: (
            plain.encode_documents(texts, batch_size=args.batch_size) if plain else None
        ),
    }
    warm = texts[:2]
    reference.encode(warm, 2)
    encoder.encode_documents(warm)
    if plain is not None:
        plain.encode_documents(warm)
    outputs: dict[str, object] = {}
    names = list(rows)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            seconds, outputs[name] = timed(runs[name])
            rows[name].append(len(texts) / seconds)
    expected = outputs["transformers"]
    got = outputs["splade-es"].to_scipy().toarray()  # type: ignore[union-attr]
    result: dict[str, object] = {
        "family": family,
        "vocab": len(encoder.vocab),
        "fast_forward": encoder.fast_forward is not None,
        "docs_per_s": {name: statistics.median(v) for name, v in rows.items()},
        "difference": largest_difference(got[:, : expected.shape[1]], expected),  # type: ignore[union-attr]
        "query_ms": query_p50_ms(encoder, queries),
    }
    if plain is not None:
        result["query_ms_no_ff"] = query_p50_ms(plain, queries)
    return result


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    print(
        f"\n{args.docs} documents of {args.length} tokens, batch {args.batch_size}, "
        f"{args.rounds} interleaved round(s), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load:.1f} at the end\n"
    )
    header = (
        f"{'family':<12}{'vocab':>9}{'FastForward':>13}{'transformers':>14}{'splade-es':>11}"
        f"{'ratio':>7}{'no FF':>8}{'FF gain':>9}{'query p50 ms':>14}{'no FF':>8}{'max diff':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        speeds = r["docs_per_s"]
        ratio = speeds["splade-es"] / speeds["transformers"]
        no_ff = speeds.get("splade-es, no FastForward")
        gain = f"{speeds['splade-es'] / no_ff:.2f}x" if no_ff else "-"
        no_ff_text = f"{no_ff:.2f}" if no_ff else "-"
        query_no_ff = f"{r['query_ms_no_ff']:.1f}" if "query_ms_no_ff" in r else "-"
        print(
            f"{r['family']:<12}{r['vocab']:>9,}{'yes' if r['fast_forward'] else 'no':>13}"
            f"{speeds['transformers']:>14.2f}{speeds['splade-es']:>11.2f}{ratio:>6.2f}x"
            f"{no_ff_text:>8}{gain:>9}{r['query_ms']:>14.1f}{query_no_ff:>8}"
            f"{r['difference']:>10.1e}"
        )
    print(
        "\ndocs/s: median of rounds. ratio: splade-es / transformers. FF gain: splade-es with"
        " FastForward / without (BERT; the other families run without it). max diff: largest"
        " |splade-es - reference| / the document's largest reference weight."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    results = []
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory(prefix=f"family-{family}-") as tmp:
            folder = realistic_model(family, Path(tmp) / family)
            result = run_family(family, folder, args)
            print(result, flush=True)
            results.append(result)
    print_table(results, args)


if __name__ == "__main__":
    main()
