"""BM25 (or one model) -> SPLADE behind an alias, gated on relevance and latency.

The migration wing, one floor per module:

* ``run``      ``migrate``, the orchestrator, and its report;
* ``stages``   its stages: plan, create, copy, gate, catch up, final pass, verify, switch;
* ``config``   what a migration is asked to do (``MigrationConfig``, ``Gate``);
* ``state``    the state file a killed migration resumes from (``MigrationState``);
* ``indices``  the target's body, the alias (switch, rollback), the source's presence;
* ``gate``     old BM25 vs new SPLADE and hybrid: quality, latency, size;
* ``sync``     catch-up passes (writes the application made meanwhile) and the write block;
* ``verify``   that the target holds what the source holds (ids, sequence numbers, fields);
* ``report``   the gate table, summary lines, markdown and chart.
"""

from .config import Gate, MigrationConfig
from .gate import GateResult, GateRow, run_gate
from .indices import alias_indices, require_source, rollback, switch_alias, target_body
from .run import MigrationReport, migrate, report_json
from .state import MigrationState
from .verify import Verification, verify

__all__ = [
    "Gate",
    "GateResult",
    "GateRow",
    "MigrationConfig",
    "MigrationReport",
    "MigrationState",
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
