"""BM25 -> SPLADE migration behind an alias, without downtime, gated on relevance.

::

    plan ──► create target ──► copy (index source -> ingestion pipeline) ──► gate
    (source settings        (PIT + search_after, sliced;       (old BM25 vs new SPLADE /
     + mapping + sparse      resumable: what the target         hybrid: quality, latency,
     field)                  already holds is skipped)          size)
      ──► catch-up passes ──► [write block] final pass ──► verify ──► switch [block lifted]
          (writes made meanwhile, (nothing can be written   (ids, shard      one atomic
          until fewer than         between it and the       sequence         _aliases call
          max_delta: migrate_sync) switch)                  numbers, fields)

The alias keeps pointing at the source until the switch, so searches never see a half-built
index; ``rollback`` points it back in one call. The application may keep writing through the
alias: the catch-up passes (``sync``) bring its writes and deletes over, and the final pass
runs under a write block on the source, lifted in every outcome. Each stage is a function of
``stages``; the state a killed run resumes from is ``state.MigrationState``.

>>> config = MigrationConfig(                                          # doctest: +SKIP
...     source="docs-bm25", target="docs-splade", alias="docs", switch=True,
...     gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=0.0))
>>> report = migrate(client, config, encoder=encoder)                   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..encoding.protocol import DocumentEncoder
from ..ingest import IngestReport
from .config import Gate, MigrationConfig
from .gate import GateResult, GateRow, run_gate
from .indices import alias_indices, require_source, rollback, switch_alias, target_body
from .stages import (
    Migration,
    Progress,
    catch_up_passes,
    compare_long_document_modes,
    copy_source,
    create_target,
    final_pass,
    first_watermarks,
    gate_target,
    lift_stale_write_block,
    outcome_notes,
    plan_migration,
    target_exists,
    wants_switch,
)
from .sync import SyncPass
from .verify import Verification

__all__ = [
    "Gate",
    "GateResult",
    "GateRow",
    "MigrationConfig",
    "MigrationReport",
    "alias_indices",
    "migrate",
    "report_json",
    "require_source",
    "rollback",
    "run_gate",
    "switch_alias",
    "target_body",
]


@dataclass(frozen=True)
class MigrationReport:
    source: str
    target: str
    alias: str
    copy: IngestReport | None  # None when an earlier run had finished copying
    skipped_existing: int
    verification: Verification
    gate: GateResult | None
    switched: bool
    alias_before: tuple[str, ...]
    alias_after: tuple[str, ...]
    engine: str = ""
    notes: tuple[str, ...] = field(default=())
    passes: tuple[SyncPass, ...] = ()  # catch-up passes, the final one last
    write_blocked_seconds: float | None = None  # None: the source was never blocked
    # The gate's comparison of long-document modes (ModeComparison.to_json); None: not asked.
    long_document_modes: dict[str, Any] | None = None

    @property
    def truncated(self) -> int:
        """Documents of this run that lost text past the window (or past max_windows), the
        copy's and the catch-up passes' together."""
        copied = self.copy.truncated if self.copy is not None else 0
        return copied + sum(done.truncated for done in self.passes)


def migrate(
    client: Any,
    config: MigrationConfig,
    *,
    encoder: DocumentEncoder,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> MigrationReport:
    """Plan, copy (resumable), gate, catch up, verify and (with ``config.switch``) switch the
    alias. ``client``: an Elasticsearch or OpenSearch client, or a ``Cluster`` from
    ``connect``."""
    job = Migration.of(client, config, encoder=encoder, on_step=on_step)
    plan = plan_migration(job)
    states = plan.states
    lift_stale_write_block(job, states)
    modes = compare_long_document_modes(job)
    resuming = target_exists(job)
    if not resuming:
        create_target(job, states)
    first_watermarks(job, states, resuming=resuming)
    copied = copy_source(job, states, resuming=resuming, progress=progress)
    gate = gate_target(job)
    passes, converged = catch_up_passes(job, states)
    final = final_pass(job, states, passes, want_switch=wants_switch(config, gate))
    passes.append(final.sync)
    return MigrationReport(
        source=config.source,
        target=config.target,
        alias=config.alias,
        copy=copied.report,
        skipped_existing=copied.skipped_existing,
        verification=final.verification,
        gate=gate,
        switched=final.switched,
        alias_before=plan.alias_before,
        alias_after=plan.alias_before if final.alias_after is None else final.alias_after,
        engine=job.engine,
        notes=(
            *plan.notes,
            *((modes.note(),) if modes else ()),
            *outcome_notes(config, gate, passes, final, converged=converged),
        ),
        passes=tuple(passes),
        write_blocked_seconds=final.blocked_seconds,
        long_document_modes=modes.to_json() if modes else None,
    )


def report_json(report: MigrationReport) -> dict[str, Any]:
    """A JSON-ready dict of the report."""
    return dict(json.loads(json.dumps(asdict(report), default=str)))
