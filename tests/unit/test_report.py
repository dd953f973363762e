"""Migration reports: the rich gate table and summary, rendered as they would be printed."""

from __future__ import annotations

import io

from rich.console import Console

from splade_es.evaluate import Latency
from splade_es.migrate import GateResult, GateRow, MigrationReport, Verification
from splade_es.migrate.report import gate_table, summary_lines


def make_report(source: str, target: str) -> MigrationReport:
    latency = {"total": Latency(1.5, 2.5)}
    rows = tuple(
        GateRow(
            label,
            index,
            {"ndcg@10": 0.5, "mrr@10": 0.25, "recall@100": 1.0, "overlap@10": 1.0},
            latency,
            2**20,
        )
        for label, index in (("BM25 (old)", source), ("hybrid 0.5 BM25 (new)", target))
    )
    return MigrationReport(
        source=source,
        target=target,
        alias="docs",
        copy=None,
        skipped_existing=0,
        verification=Verification(3, 3, (), (), 3, ()),
        gate=GateResult(rows, True, "ok"),
        switched=False,
        alias_before=(source,),
        alias_after=(source,),
    )


def render(renderable, width: int = 80) -> str:
    # A default console (markup on), as an application printing our table would use.
    console = Console(file=io.StringIO(), width=width)
    console.print(renderable)
    return console.file.getvalue()


def test_gate_table_prints_names_as_is_on_any_console():
    text = render(gate_table(make_report("old[bm25]", "new[/x]")), width=200)
    assert "old[bm25]" in text and "new[/x]" in text


def test_gate_table_is_not_truncated_when_printed_to_a_file():
    from splade_es.cli.app import print_table

    console = Console(file=io.StringIO(), width=80, markup=False)
    print_table(
        gate_table(make_report("docs-bm25-source-index", "docs-splade-target-index")), console
    )
    text = console.file.getvalue()
    assert "…" not in text
    for name in ("ndcg@10", "mrr@10", "recall@100", "overlap@10", "hybrid 0.5 BM25 (new)"):
        assert name in text


def test_summary_lines_keep_brackets():
    lines = summary_lines(make_report("a[1]", "b[/2]"))
    assert "a[1] -> b[/2] (alias docs)" in lines
