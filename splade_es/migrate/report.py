"""Migration reports: a rich table for the terminal, the same table in Markdown, and a PNG
chart of quality and latency, old vs new (matplotlib, ``pip install 'splade-es[report]'``)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from .run import MigrationReport

QUALITY = ("ndcg@10", "mrr@10", "recall@100", "overlap@10")


def _rows(report: MigrationReport) -> tuple[list[str], list[list[str]]]:
    header = ["run", "index", *QUALITY, "p50 ms", "p95 ms", "size MB"]
    rows = []
    for row in report.gate.rows if report.gate else ():
        rows.append(
            [
                row.label,
                row.index,
                *(f"{row.metrics[m]:.4f}" if m in row.metrics else "" for m in QUALITY),
                f"{row.latency_ms['total'].p50:.1f}",
                f"{row.latency_ms['total'].p95:.1f}",
                f"{row.size_bytes / 2**20:.1f}",
            ]
        )
    return header, rows


def summary_lines(report: MigrationReport) -> list[str]:
    v = report.verification
    lines = [
        f"cluster: {report.engine}",
        f"{report.source} -> {report.target} (alias {report.alias})",
    ]
    if report.copy is not None:
        lines.append(
            f"copied: {report.copy.indexed:,} indexed, {report.copy.dead_lettered:,} dead-lettered"
            + (f" (in {report.copy.dead_letter})" if report.copy.dead_lettered else "")
            + (f", {report.skipped_existing:,} already there" if report.skipped_existing else "")
        )
        lines.append(f"long documents: {report.copy.long_document_summary()}")
    for done in report.passes:
        lines.append(
            f"catch-up pass {done.number}{' (writes blocked)' if done.under_write_block else ''}"
            f": {done.changed:,} changed, {done.deleted:,} deleted, {done.refused:,} refused, "
            f"{done.missing:,} missing"
        )
    if report.write_blocked_seconds is not None:
        lines.append(f"writes to {report.source} blocked for {report.write_blocked_seconds:.2f} s")
    lines.append(
        f"verification: {'OK' if v.ok else 'FAILED'}: {v.source_count:,} source / "
        f"{v.target_count:,} target documents, {v.sampled} sampled, "
        f"{len(v.mismatches)} field mismatches"
    )
    if v.missing:
        lines.append(f"missing in target: {', '.join(v.missing)}")
    if v.extra:
        lines.append(f"extra in target: {', '.join(v.extra)}")
    if report.gate:
        lines.append(f"gate: {'PASSED' if report.gate.passed else 'FAILED'}: {report.gate.reason}")
    lines.append(
        f"alias {report.alias}: {', '.join(report.alias_before) or '(none)'} -> "
        f"{', '.join(report.alias_after) or '(none)'}"
        + (" (switched)" if report.switched else " (unchanged)")
    )
    lines.extend(report.notes)
    return lines


def gate_table(report: MigrationReport) -> Table:
    """The gate as a rich table. Titles and cells are ``Text``, never markup: index names and
    labels print as they are on any console."""
    header, rows = _rows(report)
    table = Table(title=Text(f"relevance gate: {report.source} (old) vs {report.target} (new)"))
    for i, name in enumerate(header):
        table.add_column(Text(name), justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def write_markdown(report: MigrationReport, path: str | Path, *, chart: str | None = None) -> Path:
    header, rows = _rows(report)
    lines = [f"# Migration {report.source} -> {report.target}", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    if rows:
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    if chart:
        lines += ["", f"![quality and latency]({chart})"]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_chart(report: MigrationReport, path: str | Path) -> Path | None:
    """A PNG with quality (left) and p50/p95 latency (right) per run; None without a gate."""
    if not report.gate:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.gate.rows
    labels = [r.label for r in rows]
    measures = [m for m in QUALITY if all(m in r.metrics for r in rows)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(measures))
    for i, measure in enumerate(measures):
        left.bar(
            [x + i * width for x in range(len(rows))],
            [r.metrics[measure] for r in rows],
            width,
            label=measure,
        )
    left.set_xticks(
        [x + width * (len(measures) - 1) / 2 for x in range(len(rows))], labels, fontsize=8
    )
    left.set_ylim(0, 1.25)
    left.set_title("quality")
    left.legend(fontsize=8, ncol=2, loc="upper center")
    for i, (name, key) in enumerate((("p50", "p50"), ("p95", "p95"))):
        right.bar(
            [x + i * 0.4 for x in range(len(rows))],
            [getattr(r.latency_ms["total"], key) for r in rows],
            0.4,
            label=name,
        )
    right.set_xticks([x + 0.2 for x in range(len(rows))], labels, fontsize=8)
    right.set_title("latency per query (ms, encode + search)")
    right.legend(fontsize=8)
    fig.suptitle(f"{report.source} (old) vs {report.target} (new)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
