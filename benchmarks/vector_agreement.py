"""How far apart are two encodings of one text? The measurement behind ``VECTOR_TOLERANCE``.

float32 results depend on the shape of the computation: a text encoded alone, padded inside a
batch, packed without padding in a micro-batch (serve), through FastForward or transformers'
forward, with the bf16 screen or the plain fp32 head; and on the CPU's kernels. This script
encodes the same texts every way, compares each with the formula computed in float64 (the
model's own weights, one text at a time) and with the text encoded alone, and prints, in units
of the vector's largest weight (``splade_es.sparse.vector_difference``):

* the largest and the 99th-percentile difference over the texts;
* how many texts' non-zero sets differ from the reference, and the largest weight that is
  present on one side only (a logit that rounds to either side of zero).

    python benchmarks/vector_agreement.py --model ../shared/models/splade-tiny \\
        --data ../shared/data/scifact --n 200
    python benchmarks/vector_agreement.py --random-bert-base --data ../shared/data/scifact --n 40

``--random-bert-base`` builds a random-weight 12x768 BERT masked-LM (the size of
naver/splade-v3) with splade-tiny's vocabulary size, to see whether depth changes the picture.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def load_texts(folder: Path, n: int) -> tuple[list[str], list[str]]:
    def first(path: Path, count: int) -> list[dict]:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line, _ in zip(handle, range(count), strict=False)]

    docs = [f"{d.get('title', '')} {d['text']}".strip() for d in first(folder / "corpus.jsonl", n)]
    queries = [q["text"] for q in first(folder / "queries.jsonl", n)]
    return docs, queries


def random_bert_base(folder: Path, tokenizer_from: str | None) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    BertForMaskedLM(config).save_pretrained(folder)
    if not tokenizer_from:
        raise SystemExit("--random-bert-base takes splade-tiny's tokenizer: give --model too")
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return folder


def reference(model_dir: str, texts: list[str], max_length: int) -> list[dict[int, float]]:
    """The SPLADE formula in float64, one text at a time: max over positions of
    log(1 + relu(logits))."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).double().eval()
    rows = []
    for text in texts:
        batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            weights = torch.log1p(torch.relu(model(**batch).logits[0])).amax(0)
        nonzero = torch.nonzero(weights).flatten().tolist()
        rows.append({i: float(weights[i]) for i in nonzero})
    return rows


def as_ids(batch, i: int) -> dict[int, float]:
    ids, weights = batch.row(i)
    return {int(k): float(w) for k, w in zip(ids, weights, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("SPLADE_ES_TEST_MODEL"))
    parser.add_argument("--data", required=True, help="a BEIR folder (corpus + queries)")
    parser.add_argument("--n", type=int, default=200, help="documents and queries each")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--random-bert-base", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from splade_es import SpladeEncoder
    from splade_es.sparse import VECTOR_TOLERANCE, vector_difference

    docs, queries = load_texts(Path(args.data), args.n)
    workdir = tempfile.TemporaryDirectory()
    model_dir = args.model
    if args.random_bert_base:
        model_dir = str(random_bert_base(Path(workdir.name), args.model))
    if not model_dir:
        parser.error("--model (or SPLADE_ES_TEST_MODEL) is required")

    def load(screen: bool, fast_forward: bool) -> SpladeEncoder:
        encoder = SpladeEncoder.from_pretrained(
            model_dir, device="cpu", screen=screen, max_length=args.max_length
        )
        if not fast_forward:
            encoder.fast_forward = None  # transformers' own forward
        return encoder

    encoders = {
        "plain (transformers forward, fp32 head)": load(screen=False, fast_forward=False),
        "FastForward, fp32 head": load(screen=False, fast_forward=True),
        "FastForward + bf16 screen (forced on)": load(screen=True, fast_forward=True),
    }

    def keyset_stats(got: list[dict], want: list[dict]) -> tuple[int, float]:
        texts, largest = 0, 0.0
        for a, b in zip(got, want, strict=True):
            one_sided = a.keys() ^ b.keys()
            if one_sided:
                texts += 1
                scale = max(max(a.values(), default=0.0), max(b.values(), default=0.0))
                worst = max(a.get(k, 0.0) + b.get(k, 0.0) for k in one_sided)
                largest = max(largest, worst / scale)
        return texts, largest

    console = Console(width=200)  # a table, not a squeezed one, in files and pipes too
    model_name = "random BERT-base" if args.random_bert_base else Path(model_dir).name
    title = (
        f"vector agreement: {escape(model_name)}"
        f", {torch.get_num_threads()} threads, max length {args.max_length}; "
        f"units: the vector's largest weight; VECTOR_TOLERANCE = {VECTOR_TOLERANCE:g}"
    )
    table = Table(title=title)
    for column in (
        "texts",
        "forward / head",
        "call shape",
        "max diff vs float64",
        "p99 vs float64",
        "max diff vs alone",
        "texts with other non-zeros",
        "largest one-sided weight",
    ):
        table.add_column(column, justify="right" if column != "forward / head" else "left")

    worst_overall = 0.0
    for kind, texts in (("documents", docs), ("queries", queries)):
        exact = reference(model_dir, texts, args.max_length)
        for name, encoder in encoders.items():
            alone = [as_ids(encoder.encode_documents([t]), 0) for t in texts]
            batched_batch = encoder.encode_documents(texts, batch_size=32)
            batched = [as_ids(batched_batch, i) for i in range(len(texts))]
            shape = "padded batches of 32" if kind == "documents" else "micro-batches of 32"
            for label, got in (("alone", alone), (shape, batched)):
                diffs = np.array([vector_difference(g, e) for g, e in zip(got, exact, strict=True)])
                vs_alone = max(vector_difference(g, a) for g, a in zip(got, alone, strict=True))
                texts_other, one_sided = keyset_stats(got, exact)
                worst_overall = max(worst_overall, float(diffs.max()), vs_alone)
                table.add_row(
                    kind,
                    name,
                    label,
                    f"{diffs.max():.2e}",
                    f"{np.quantile(diffs, 0.99):.2e}",
                    f"{vs_alone:.2e}",
                    f"{texts_other}/{len(texts)}",
                    f"{one_sided:.2e}",
                )
    console.print(table)
    verdict = "within" if worst_overall <= VECTOR_TOLERANCE else "OUTSIDE"
    console.print(
        f"largest difference of all: {worst_overall:.2e} of the largest weight, "
        f"{verdict} VECTOR_TOLERANCE ({VECTOR_TOLERANCE:g}), "
        f"margin {VECTOR_TOLERANCE / max(worst_overall, 1e-30):.0f}x"
    )
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        "unknown CPU",
    )
    fast = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in cpuinfo]
    console.print(
        f"CPU: {escape(cpu)}; flags: {', '.join(fast) or 'no AVX-512'}; torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
