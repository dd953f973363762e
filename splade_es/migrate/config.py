"""What a migration is asked to do: ``MigrationConfig`` and its relevance ``Gate``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import defaults
from ..encoding.windows import LONG_DOCUMENT_MODES, LongDocuments, WindowPolicy
from ..engines import FieldType, HybridMethod
from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from ..search import Fusion

WORKERS = defaults.WORKERS
"""Parallel bulk senders of the copy and of each catch-up pass."""
HYBRID_WEIGHT = 0.5
"""The BM25 share of the gate's hybrid run."""
VERIFY_SAMPLE = 20
"""Documents compared field by field after the final pass."""
MAX_DELTA = 10
"""Catch-up passes repeat until one finds fewer changes than this ..."""
MAX_PASSES = 10
"""... or this many ran."""
COMPARE_SAMPLE = 10_000
"""Documents of the source the gate's comparison of long-document modes encodes (every judged
one, then others), once per mode, in memory."""


@dataclass(frozen=True, kw_only=True)
class Gate:
    """The relevance gate: judged queries (``qrels``) and a minimum nDCG@10 gain over BM25,
    or unjudged queries and a minimum overlap@10 with the BM25 results."""

    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]] | None = None
    min_ndcg_gain: float | None = None
    min_overlap: float | None = None
    hybrid_weight: float = HYBRID_WEIGHT
    k: int = defaults.EVALUATION_DEPTH
    # The hybrid row's method (sum: one bool query, nothing to fuse) and who fuses a linear /
    # rrf one: the engine, the client (one _msearch; any license, no plugin), or auto.
    hybrid_method: HybridMethod = "sum"
    fusion: Fusion = "auto"

    def __post_init__(self) -> None:
        if (self.min_ndcg_gain is None) == (self.min_overlap is None):
            raise ConfigurationError("the gate needs exactly one of min_ndcg_gain, min_overlap")
        if self.min_ndcg_gain is not None and not self.qrels:
            raise ConfigurationError("min_ndcg_gain needs qrels (judged queries)")
        if not self.queries:
            raise ConfigurationError("the gate has no queries")


@dataclass(frozen=True, kw_only=True)
class MigrationConfig:
    source: str
    target: str
    alias: str
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS
    sparse_field: str = defaults.VECTOR_FIELD
    field_type: FieldType = defaults.FIELD_TYPE
    slices: int = 1
    batch_size: int = defaults.BATCH_SIZE
    workers: int = WORKERS
    checkpoint: str | None = None  # the state file (splade_es.migrate.state)
    dead_letter: str | None = None
    gate: Gate | None = None
    switch: bool = False  # False: dry run, everything but the alias switch
    verify_sample: int = VERIFY_SAMPLE
    # Catch-up passes repeat until one finds fewer changes than this (or max_passes ran).
    max_delta: int = MAX_DELTA
    max_passes: int = MAX_PASSES
    # Run the final pass and the switch with the source refusing writes. False: a write
    # acknowledged between the final pass and the switch can be missing from the target.
    write_block: bool = True
    # How a text longer than one window is encoded (ingest's IngestConfig.long_documents);
    # "passages" builds the target with the nested passages layout. None: the encoder's own.
    long_documents: WindowPolicy | None = None
    # Before the copy: these modes compared on the gate's judgments over a sample of the
    # source (migrate/modes.py), reported next to the mode this migration indexes with.
    compare_long_documents: tuple[LongDocuments, ...] = ()
    compare_sample: int = COMPARE_SAMPLE

    @property
    def passages(self) -> bool:
        return self.long_documents is not None and self.long_documents.mode == "passages"

    def __post_init__(self) -> None:
        if self.max_delta < 1 or self.max_passes < 1:
            raise ConfigurationError("max_delta and max_passes must be >= 1")
        if len({self.source, self.target, self.alias}) != 3:
            raise ConfigurationError("source, target and alias must be three different names")
        unknown = [m for m in self.compare_long_documents if m not in LONG_DOCUMENT_MODES]
        if unknown:
            raise ConfigurationError.bad_value(
                "compare_long_documents", ",".join(unknown), "must be truncate, maxpool or passages"
            )
        if self.compare_long_documents and (self.gate is None or not self.gate.qrels):
            raise ConfigurationError(
                "comparing long-document modes needs the gate's judgments (gate qrels)"
            )
        if self.compare_sample < 1:
            raise ConfigurationError.bad_value(
                "compare_sample", self.compare_sample, "must be >= 1"
            )
        if self.switch and self.gate is None:
            raise ConfigurationError(
                "switching the alias needs a relevance gate (gate queries and a threshold)"
            )
