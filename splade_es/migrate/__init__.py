"""BM25 (or one model) -> SPLADE behind an alias, gated on relevance and latency.

The migration wing, one floor per module:

* ``run``     the orchestrator: plan, create, copy, gate, catch up, verify, switch;
* ``sync``    catch-up passes (writes the application made meanwhile) and the write block;
* ``verify``  that the target holds what the source holds (ids, sequence numbers, fields);
* ``report``  the gate table, summary lines, markdown and chart.
"""

from .run import (
    Gate,
    GateResult,
    GateRow,
    MigrationConfig,
    MigrationReport,
    alias_indices,
    migrate,
    report_json,
    require_source,
    rollback,
    run_gate,
    switch_alias,
    target_body,
)
from .verify import Verification, verify

__all__ = [
    "Gate",
    "GateResult",
    "GateRow",
    "MigrationConfig",
    "MigrationReport",
    "Verification",
    "alias_indices",
    "migrate",
    "report_json",
    "require_source",
    "rollback",
    "run_gate",
    "switch_alias",
    "target_body",
    "verify",
]
