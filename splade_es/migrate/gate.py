"""The relevance gate: old BM25 vs new SPLADE and hybrid on the gate queries (quality,
latency, size), and whether the new index is good enough to switch to.

The gate's hybrid is a ``sum`` hybrid by default: one ``bool`` query, which every engine,
version and license runs, so there is nothing to fuse. ``run_gate(hybrid_method="rrf" |
"linear", fusion=...)`` gates on a fused hybrid instead, fused by the engine or by the client
(``splade_es.search``: ``fusion="auto"`` uses the engine's where the cluster has it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..connect import call
from ..encoding.protocol import Encoder
from ..engines import Hybrid, HybridMethod
from ..evaluate import Latency, Mode, overlap_at, run_queries, score_run
from ..query import QueryBuilder
from ..search import Fusion, prepare_fusion
from .config import Gate


@dataclass(frozen=True)
class GateRow:
    label: str
    index: str
    metrics: Mapping[str, float]
    latency_ms: Mapping[str, Latency]
    size_bytes: int


@dataclass(frozen=True)
class GateResult:
    rows: tuple[GateRow, ...]
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateRun:
    """One row of the gate table to measure: ``mode`` queries on ``index``."""

    label: str
    index: str
    mode: Mode


def gate_runs(
    source: str, target: str, gate: Gate, hybrid_method: HybridMethod = "sum"
) -> tuple[GateRun, ...]:
    """The baseline first (BM25 on the source), then the candidates on the target. Pure."""
    method = "" if hybrid_method == "sum" else f"{hybrid_method} "
    return (
        GateRun("BM25 (old)", source, "bm25"),
        GateRun("SPLADE (new)", target, "splade"),
        GateRun(f"hybrid {method}{gate.hybrid_weight:g} BM25 (new)", target, "hybrid"),
    )


def gate_queries(gate: Gate) -> dict[str, str]:
    """The queries to run: with qrels, only the judged ones. Pure."""
    if gate.qrels:
        return {q: gate.queries[q] for q in gate.qrels if q in gate.queries}
    return dict(gate.queries)


def judge(rows: tuple[GateRow, ...], gate: Gate) -> GateResult:
    """Pass or fail ``rows`` (baseline first) by the gate's threshold. Pure."""
    old = rows[0]
    new = max(rows[1:], key=lambda r: r.metrics.get("ndcg@10", r.metrics["overlap@10"]))
    if gate.min_ndcg_gain is not None:
        gain = new.metrics["ndcg@10"] - old.metrics["ndcg@10"]
        passed = gain >= gate.min_ndcg_gain
        reason = (
            f"nDCG@10 {new.label} {new.metrics['ndcg@10']:.4f} vs {old.label} "
            f"{old.metrics['ndcg@10']:.4f}: gain {gain:+.4f} "
            f"{'>=' if passed else '<'} {gate.min_ndcg_gain}"
        )
        return GateResult(rows, passed, reason)
    assert gate.min_overlap is not None  # Gate checks it has exactly one threshold
    overlap = rows[1].metrics["overlap@10"]  # of SPLADE alone: hybrid includes BM25
    passed = overlap >= gate.min_overlap
    reason = (
        f"overlap@10 of SPLADE with BM25 {overlap:.3f} {'>=' if passed else '<'} {gate.min_overlap}"
    )
    return GateResult(rows, passed, reason)


def run_gate(
    client: Any,
    source: str,
    target: str,
    gate: Gate,
    *,
    encoder: Encoder,
    text_fields: tuple[str, ...],
    sparse_field: str,
    progress: Callable[[str], None] | None = None,
    hybrid_method: HybridMethod = "sum",
    fusion: Fusion = "auto",
) -> GateResult:
    """Old BM25 vs new SPLADE and hybrid on the gate queries: quality, latency, size.
    ``hybrid_method``: the hybrid row's method (``sum`` by default: no fusion); a ``linear`` /
    ``rrf`` one is fused as ``fusion`` says (its OpenSearch search pipeline created where the
    engine fuses)."""
    # The gate runs right after the copy: without a refresh a real engine may not yet search
    # what was just indexed (refresh_interval), and SPLADE would score zero.
    for index in (source, target):
        call(lambda index=index: client.indices.refresh(index=index), f"refreshing {index}")
    queries = gate_queries(gate)
    builder = QueryBuilder.for_index(client, target, field=sparse_field)
    hybrid = Hybrid(bm25_weight=gate.hybrid_weight, text_fields=text_fields, method=hybrid_method)
    choice = prepare_fusion(client, hybrid, fusion, dialect=builder.dialect)
    baseline: Mapping[str, Mapping[str, float]] | None = None
    rows = []
    for planned in gate_runs(source, target, gate, hybrid_method):
        if progress:
            progress(planned.label)
        result = run_queries(
            client,
            planned.index,
            queries,
            encoder=encoder,
            mode=planned.mode,
            k=gate.k,
            hybrid=hybrid,
            builder=builder,
            field=sparse_field,
            text_fields=text_fields,
            fusion=choice,
        )
        baseline = result.run if baseline is None else baseline
        metrics: dict[str, float] = {}
        if gate.qrels:
            metrics.update(score_run(result.run, {q: gate.qrels[q] for q in queries}))
        metrics["overlap@10"] = overlap_at(result.run, baseline, 10)
        size = index_size(client, planned.index)
        rows.append(GateRow(planned.label, planned.index, metrics, result.latency(), size))
    return judge(tuple(rows), gate)


def index_size(client: Any, index: str) -> int:
    """Bytes the primaries of ``index`` take on disk."""
    stats = call(lambda: client.indices.stats(index=index, metric="store"), f"sizing {index}")
    return int(stats["indices"][index]["primaries"]["store"]["size_in_bytes"])
