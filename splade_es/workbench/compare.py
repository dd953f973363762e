"""Configurations side by side: per query each one's hits with their rank changes against the
first configuration (the baseline), and with judgments nDCG@10 / RR@10 / R@100 per
configuration and per query, with wins, ties and losses against the baseline.

The measures are ``splade_es.evaluate``'s (ir-measures; a judged query without results
scores 0), so ``compare`` and ``evaluate`` give one configuration the same numbers.

>>> rank_changes(["a", "b", "c"], ["c", "a", "x"])
[2, -1, None]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import ir_measures

from ..evaluate import MEASURES, score_run
from .columns import Column
from .configurations import Configuration

# Two values closer than this are a tie: ir-measures' float sums differ in the last bits.
TIE = 1e-9
NO_RESULT = "__no_result__"  # evaluate.score_run's placeholder for a query without results


class Searcher(Protocol):
    """Runs one configuration for one query text (``runner.ClusterSearcher``, serve's)."""

    def column(self, configuration: Configuration, text: str) -> Column: ...


@dataclass(frozen=True)
class Record:
    """Queries where a configuration did better than, as well as, worse than the baseline."""

    wins: int = 0
    ties: int = 0
    losses: int = 0

    def to_json(self) -> dict[str, int]:
        return {"wins": self.wins, "ties": self.ties, "losses": self.losses}


@dataclass(frozen=True)
class QueryComparison:
    query_id: str
    text: str
    columns: tuple[Column, ...]
    # label -> measure -> value; empty when the query has no judgments
    measures: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def changes(self) -> dict[str, list[int | None]]:
        """label -> each shown hit's rank change against the baseline's ranking."""
        baseline = self.columns[0].ranking
        return {c.label: rank_changes(baseline, [h.id for h in c.hits]) for c in self.columns[1:]}


@dataclass(frozen=True)
class Comparison:
    configurations: tuple[Configuration, ...]
    queries: tuple[QueryComparison, ...]
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # label -> means
    records: Mapping[str, Mapping[str, Record]] = field(default_factory=dict)  # vs baseline
    judged: int = 0

    @property
    def baseline(self) -> str:
        return self.configurations[0].label

    def to_json(self) -> dict[str, Any]:
        """``compare --json``."""
        return {
            "configurations": [c.label for c in self.configurations],
            "baseline": self.baseline,
            "judged_queries": self.judged,
            "metrics": {label: dict(values) for label, values in self.metrics.items()},
            "records": {
                label: {name: r.to_json() for name, r in records.items()}
                for label, records in self.records.items()
            },
            "queries": [query_json(q) for q in self.queries],
        }


def compare(
    searcher: Searcher,
    configurations: Sequence[Configuration],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> Comparison:
    """Run every configuration for every query (``{id: text}``) and score the judged ones."""
    judgments = qrels or {}
    compared = []
    for n, (qid, text) in enumerate(queries.items(), 1):
        columns = tuple(searcher.column(c, text) for c in configurations)
        judged = judgments.get(qid)
        measures = {c.label: query_measures(c.run, judged) for c in columns} if judged else {}
        compared.append(QueryComparison(qid, text, columns, measures))
        if progress:
            progress(n)
    return summarize(tuple(configurations), tuple(compared), judgments)


def summarize(
    configurations: tuple[Configuration, ...],
    compared: tuple[QueryComparison, ...],
    qrels: Mapping[str, Mapping[str, int]],
) -> Comparison:
    """The means over the judged queries and each configuration's record vs the baseline."""
    judged = [q for q in compared if q.measures]
    if not judged:
        return Comparison(configurations, compared)
    labels = [c.label for c in configurations]
    metrics = {}
    for position, label in enumerate(labels):
        run = {q.query_id: dict(q.columns[position].run) for q in judged}
        metrics[label] = score_run(run, {q.query_id: qrels[q.query_id] for q in judged})
    per_query = [q.measures for q in judged]
    records = {label: records_against(per_query, labels[0], label) for label in labels[1:]}
    return Comparison(configurations, compared, metrics, records, len(judged))


def query_measures(
    run: Mapping[str, float], judgments: Mapping[str, int] | None
) -> dict[str, float]:
    """nDCG@10, RR@10 (``mrr@10``), R@100 of one query's ranking, as ``evaluate`` computes
    them (a ranking without results scores 0). Empty without judgments."""
    if not judgments:
        return {}
    ranking = dict(run) or {NO_RESULT: 0.0}
    found = {
        metric.measure: metric.value
        for metric in ir_measures.iter_calc(
            list(MEASURES.values()), {"q": dict(judgments)}, {"q": ranking}
        )
    }
    return {name: float(found.get(measure, 0.0)) for name, measure in MEASURES.items()}


def records_against(
    per_query: Sequence[Mapping[str, Mapping[str, float]]], baseline: str, label: str
) -> dict[str, Record]:
    """Per measure, the queries where ``label`` beat, tied or lost to ``baseline``."""
    out = {}
    for name in MEASURES:
        diffs = [q[label][name] - q[baseline][name] for q in per_query]
        out[name] = Record(
            wins=sum(d > TIE for d in diffs),
            ties=sum(abs(d) <= TIE for d in diffs),
            losses=sum(d < -TIE for d in diffs),
        )
    return out


def rank_changes(baseline: Sequence[str], ranking: Sequence[str]) -> list[int | None]:
    """For each document of ``ranking``: how many places higher it is than in ``baseline``
    (negative: lower), None when ``baseline`` did not retrieve it."""
    where = {doc: rank for rank, doc in enumerate(baseline)}
    return [None if doc not in where else where[doc] - rank for rank, doc in enumerate(ranking)]


def change_text(change: int | None) -> str:
    """``+2`` / ``-1`` / ``=`` / ``new`` for a table cell."""
    if change is None:
        return "new"
    return "=" if change == 0 else f"{change:+d}"


def query_json(query: QueryComparison) -> dict[str, Any]:
    changes = query.changes()
    return {
        "id": query.query_id,
        "text": query.text,
        "measures": {label: dict(values) for label, values in query.measures.items()},
        "columns": [column_json(c, changes.get(c.label)) for c in query.columns],
    }


def column_json(column: Column, changes: Sequence[int | None] | None = None) -> dict[str, Any]:
    """A column as the page and ``--json`` read it."""
    out: dict[str, Any] = {
        "label": column.label,
        "index": column.index,
        "kind": column.kind,
        "error": column.error,
        "fusion_note": column.fusion_note,
        "scores_are_contributions": column.scores_are_contributions,
        "retrieved": len(column.run),
        "query_tokens": [
            {"token": t.token, "weight": t.weight, "kept": t.kept} for t in column.query_tokens
        ],
        "hits": [],
    }
    for n, hit in enumerate(column.hits):
        out["hits"].append(
            {
                "id": hit.id,
                "rank": hit.rank,
                "score": hit.score,
                "title": hit.title,
                "change": None if changes is None else changes[n],
                "new": changes is not None and changes[n] is None,
                "contributions": [_contribution(c) for c in hit.contributions],
                "pruned": [_contribution(c) for c in hit.pruned],
                "explained": hit.explained,
            }
        )
    return out


def _contribution(c: Any) -> dict[str, Any]:
    return {
        "token": c.token,
        "query_weight": c.query_weight,
        "doc_weight": c.doc_weight,
        "contribution": c.contribution,
    }
