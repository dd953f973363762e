"""The gate's comparison of long-document modes: before the copy, the source's documents
encoded once per mode and the gate's judged queries scored exactly in memory
(``evaluate.compare_long_documents``), so that the report says which mode the user's own
judgments favour next to the one this migration indexes with.

Only a sample of the source is encoded (every judged document, then the first others read up
to ``MigrationConfig.compare_sample``): the measures rank each query's documents within that
sample, which is why the report names its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..encoding.windows import WindowPolicy
from ..evaluate import ModeResult, WindowedEncoder, compare_long_documents
from ..exceptions import ConfigurationError, InputError
from ..ingest.index_source import read_index
from ..ingest.sources import Record, prepare
from .config import MigrationConfig

MEASURE = "ndcg@10"  # the measure the note ranks modes by (the gate's own)
READ_FACTOR = 10  # records read at most, in samples, while looking for judged documents


@dataclass(frozen=True)
class ModeComparison:
    """Each compared mode on the gate's judgments, and the sample they were measured on."""

    results: tuple[ModeResult, ...]
    documents: int  # the sample's size
    source_documents: int  # documents read from the source to draw it (all, when it fits)
    migrating_with: str  # the mode this migration indexes with
    judged_missing: int = 0  # judged documents not in the sample (gone, or past the reading)

    @property
    def best(self) -> ModeResult:
        return max(self.results, key=lambda r: r.metrics.get(MEASURE, 0.0))

    def note(self) -> str:
        """One line for the report: the best mode by nDCG@10, against the migration's."""
        scores = ", ".join(f"{r.mode} {r.metrics.get(MEASURE, 0.0):.4f}" for r in self.results)
        best = self.best.mode
        verdict = (
            f"{best} is the mode of this migration"
            if best == self.migrating_with
            else f"this migration indexes with {self.migrating_with}: consider {best}"
        )
        missing = f", {self.judged_missing:,} judged ones not found" if self.judged_missing else ""
        return (
            f"long documents on the gate's judgments ({MEASURE}, in memory, "
            f"{self.documents:,} documents{missing}): {scores}; {verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "judged_missing": self.judged_missing,
            "migrating_with": self.migrating_with,
            "best": self.best.mode,
            "modes": [r.to_json() for r in self.results],
        }


def compare_modes(
    client: Any, config: MigrationConfig, encoder: Any, *, dialect: Any
) -> ModeComparison | None:
    """``config.compare_long_documents`` measured on a sample of the source (None when not
    asked). Needs the gate's qrels: without judgments there is nothing to compare on."""
    modes = config.compare_long_documents
    if not modes:
        return None
    gate = config.gate
    if gate is None or not gate.qrels:
        raise ConfigurationError(
            "comparing long-document modes needs the gate's judgments (--gate-qrels)"
        )
    if not hasattr(encoder, "encode_passages"):  # WindowedEncoder is not runtime-checkable
        raise ConfigurationError(
            f"comparing long-document modes needs an encoder with windows; "
            f"{type(encoder).__name__} has none"
        )
    judged = {doc_id for judgments in gate.qrels.values() for doc_id in judgments}
    records = read_index(client, config.source, dialect=dialect, slices=config.slices)
    corpus, read = sample_corpus(records, config, judged)
    missing = len(judged - set(corpus))
    policy = config.long_documents or WindowPolicy()
    windowed: WindowedEncoder = encoder
    results = compare_long_documents(
        windowed, corpus, gate.queries, gate.qrels, modes, policy, batch_size=config.batch_size
    )
    return ModeComparison(tuple(results), len(corpus), read, policy.mode, missing)


def sample_corpus(
    records: Iterable[Record], config: MigrationConfig, judged: set[str]
) -> tuple[dict[str, str], int]:
    """``{id: text}`` of every judged document and of the first others up to
    ``config.compare_sample`` in all, the text as the copy reads it (``sources.prepare`` with
    the migration's fields); and how many records were read (reading stops once the sample is
    full and every judged document was seen, or ``READ_FACTOR`` times the sample was read: a
    judged id the source no longer holds must not make it read the whole source). A document
    with no text is left out, as the copy would dead-letter it."""
    corpus: dict[str, str] = {}
    room = max(0, config.compare_sample - len(judged))  # for documents nobody judged
    most = READ_FACTOR * config.compare_sample  # judged ids the source lacks end it here
    others = read = seen_judged = 0
    for record in records:
        if others >= room and (seen_judged == len(judged) or read >= most):
            break
        read += 1
        doc_id = str((record.doc or {}).get("_id"))
        seen_judged += doc_id in judged
        if doc_id not in judged and others >= room:
            continue
        try:
            prepared = prepare(
                record,
                id_field="_id",
                text_fields=config.text_fields,
                sparse_field=config.sparse_field,
                add_id_field=False,
            )
        except InputError:
            continue
        corpus[prepared.doc_id] = prepared.text
        others += prepared.doc_id not in judged
    return corpus, read


def comparison_rows(comparison: ModeComparison) -> Sequence[Mapping[str, Any]]:
    """The comparison as rows for a table (mode, measures, windows, vectors). Pure."""
    return [
        {
            "mode": r.mode,
            **{name: round(value, 4) for name, value in r.metrics.items()},
            "windows/doc": round(r.windows.mean, 2) if r.windows.documents else 1.0,
            "non-zeros/doc": round(r.size.per_document, 1),
        }
        for r in comparison.results
    ]


__all__ = ["MEASURE", "ModeComparison", "compare_modes", "comparison_rows", "sample_corpus"]
