"""``splade-es encode``: documents -> SPLADE vectors in a JSONL file (no cluster)."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import click
from rich.table import Table

from ..documents import document_id, document_text, parse_fields, read_jsonl
from .app import err_console, fail_cleanly, main, model_option, print_table, progress_display


@main.command()
@model_option()
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="JSONL file of documents.",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSONL file to write ('-' for stdout): one {id, vector, truncated} object a line.",
)
@click.option(
    "--text-fields", default="title,text", show_default=True, help="Fields joined into the text."
)
@click.option("--id-field", default="_id", show_default=True)
@click.option(
    "--vector-field", default="splade", show_default=True, help="Output field for the vector."
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
)
@click.option("--max-length", type=click.IntRange(2), help="Truncate texts to this many tokens.")
@click.option("--top-k", type=click.IntRange(1), help="Keep the K largest weights per document.")
@click.option("--min-weight", type=click.FloatRange(0), help="Drop weights below this value.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@fail_cleanly
def encode(**opts: Any) -> None:
    """Encode a JSONL file of documents into SPLADE {token: weight} vectors."""
    from ..encoder import SpladeEncoder

    fields = parse_fields(opts["text_fields"])
    encoder = SpladeEncoder.from_pretrained(
        opts["model"], device=opts["device"], dtype=opts["dtype"], max_length=opts["max_length"]
    )
    with open(opts["input_path"], "rb") as handle:
        total = sum(1 for line in handle if line.strip())
    ids: deque[str] = deque()

    def texts() -> Iterator[str]:
        for line_no, doc in read_jsonl(opts["input_path"]):
            ids.append(document_id(doc, opts["id_field"], line_no))
            yield document_text(doc, fields, line_no)

    stats = {"documents": 0, "truncated": 0, "active": 0}
    started = time.perf_counter()
    with (
        click.open_file(opts["output_path"], "w", encoding="utf-8") as out,
        progress_display(opts["quiet"] or opts["output_path"] == "-") as progress,
    ):
        task = progress.add_task("encoding", total=total)
        for window in encoder.iter_encode(texts(), batch_size=opts["batch_size"]):
            window = window.prune(top_k=opts["top_k"], min_weight=opts["min_weight"])
            for i in range(len(window)):
                record = {
                    opts["id_field"]: ids.popleft(),
                    opts["vector_field"]: window.to_dict(i),
                }
                if window.truncated is not None and window.truncated[i]:
                    record["truncated"] = True
                    stats["truncated"] += 1
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            stats["documents"] += len(window)
            stats["active"] += int(window.nnz_per_row.sum())
            progress.advance(task, len(window))
    elapsed = time.perf_counter() - started
    table = Table(title=f"encoded with {opts['model']}", show_header=False)
    table.add_row("documents", f"{stats['documents']:,}")
    table.add_row(
        "truncated documents", f"{stats['truncated']:,} (max {encoder.max_length} tokens)"
    )
    mean_active = stats["active"] / stats["documents"] if stats["documents"] else 0.0
    table.add_row("mean active dims", f"{mean_active:.1f}")
    table.add_row("throughput", f"{stats['documents'] / elapsed:.1f} docs/s on {encoder.device}")
    print_table(table, err_console)
