"""The stages ``migrate`` composes, in the order it runs them (each usable, and tested,
alone). Stages that change the state file take it (``StateFile``) and save through it, so a
migration killed after any stage resumes from there."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..connect import Cluster, call
from ..encoding.protocol import DocumentEncoder
from ..engines import Dialect, dialect_of
from ..ingest import IngestConfig, IngestReport, ingest
from ..ingest.index_source import read_index, skip_existing
from ..ingest.sources import Record
from .config import MigrationConfig
from .gate import GateResult, run_gate
from .indices import alias_indices, require_source, switch_alias, target_body
from .modes import ModeComparison, compare_modes
from .state import StateFile
from .sync import (
    SyncPass,
    Watermarks,
    catch_up,
    initial_watermarks,
    lift_write_block,
    read_checkpoints,
    read_max_seq_nos,
    take_watermarks,
    write_block,
)
from .verify import Verification, verify

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]  # (pipeline stage, documents) as ingest reports them


@dataclass(frozen=True)
class Migration:
    """What every stage works with: the cluster, the job, the encoder and where progress
    messages go (``step``)."""

    client: Any
    dialect: Dialect
    config: MigrationConfig
    encoder: DocumentEncoder
    step: Callable[[str], None]
    engine: str = ""  # the cluster, in words (for the report)

    @classmethod
    def of(
        cls,
        client: Any,
        config: MigrationConfig,
        *,
        encoder: DocumentEncoder,
        on_step: Callable[[str], None] | None = None,
    ) -> Migration:
        """``client``: an Elasticsearch or OpenSearch client, or a ``Cluster``."""
        cluster = client if isinstance(client, Cluster) else Cluster.from_client(client)
        step = on_step or log.info
        return cls(cluster.client, dialect_of(cluster), config, encoder, step, cluster.description)


@dataclass(frozen=True)
class Plan:
    """What a migration starts from: where the alias points and the state of earlier runs."""

    alias_before: tuple[str, ...]
    states: StateFile
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Copied:
    report: IngestReport | None  # None: an earlier run had finished the copy
    skipped_existing: int = 0  # documents a resumed copy found in the target already


@dataclass(frozen=True)
class FinalPass:
    """The last catch-up pass, the verification after it and the switch (if it was made)."""

    sync: SyncPass
    verification: Verification
    alias_after: tuple[str, ...] | None  # None: the alias was not switched
    blocked_seconds: float | None = None  # how long this run blocked writes (None: never)
    blocked_before: bool = False  # the source was write-blocked before; left so

    @property
    def switched(self) -> bool:
        return self.alias_after is not None


# ---------------------------------------------------------------------- plan
def plan_migration(job: Migration) -> Plan:
    """Check the source, read where the alias points and open the state file."""
    config = job.config
    require_source(job.client, config.source)
    alias_before = alias_indices(job.client, config.alias)
    states = StateFile.open(config.checkpoint, source=config.source, target=config.target)
    return Plan(alias_before, states, alias_notes(config, alias_before))


def alias_notes(config: MigrationConfig, alias_before: Sequence[str]) -> tuple[str, ...]:
    """A note when the alias points somewhere else than this migration's indices. Pure."""
    if alias_before and config.source not in alias_before and config.target not in alias_before:
        return (f"alias {config.alias} pointed at {', '.join(alias_before)}",)
    return ()


def lift_stale_write_block(job: Migration, states: StateFile) -> None:
    """A run killed inside its final pass left the source refusing writes: lift it."""
    if not states.state.write_block:
        return
    job.step(f"lifting the write block a stopped migration left on {job.config.source}")
    lift_write_block(job.client, job.config.source, dialect=job.dialect)
    states.update(write_block=False)


# ---------------------------------------------------------------------- create, copy
def target_exists(job: Migration) -> bool:
    """Whether an earlier run created the target (the copy then resumes)."""
    target = job.config.target
    return bool(call(lambda: job.client.indices.exists(index=target), "checking the target"))


def create_target(job: Migration, states: StateFile) -> None:
    """Create the target from the source's settings and mapping plus the sparse field; the
    state of any earlier target is forgotten."""
    config = job.config
    job.step(f"creating {config.target} from {config.source}'s settings and mapping")
    info = call(lambda: job.client.indices.get(index=config.source), "reading the source")
    body = target_body(
        info[next(iter(info))],
        dialect=job.dialect,
        sparse_field=config.sparse_field,
        field_type=config.field_type,
        passages=config.passages,
    )
    call(lambda: job.client.indices.create(index=config.target, body=body), "creating the target")
    states.restart(phase="copying")


def first_watermarks(job: Migration, states: StateFile, *, resuming: bool) -> Watermarks:
    """Where the first catch-up pass starts: the saved watermarks, else (a resumed copy,
    whose target holds documents of an unknown moment) everything, else the source's
    checkpoints now, taken before the copy's reader opens so every later write reaches a
    pass."""
    saved = states.state.watermarks
    if saved is not None:
        watermarks = saved
    elif resuming:
        watermarks = initial_watermarks(read_checkpoints(job.client, job.config.source))
    else:
        watermarks = take_watermarks(job.client, job.config.source)
    states.update(watermarks=watermarks)
    return watermarks


def copy_source(
    job: Migration, states: StateFile, *, resuming: bool, progress: Progress | None = None
) -> Copied:
    """The bulk copy through the ingestion pipeline (nothing if an earlier run finished
    it); a resumed copy skips what the target holds and retries every refused document."""
    config = job.config
    if states.state.phase == "copied":
        return Copied(None)
    if resuming:
        job.step(f"resuming the copy into {config.target}: documents already there are skipped")
        if config.dead_letter and os.path.exists(config.dead_letter):
            os.remove(config.dead_letter)  # every unindexed record is attempted again
    else:
        job.step(f"copying {config.source} -> {config.target}")
    records = read_index(job.client, config.source, dialect=job.dialect, slices=config.slices)
    skipped: list[int] = []
    if resuming:
        records = skip_existing(job.client, config.target, records, skipped=skipped)
    report = ingest(
        job.client, records, encoder=job.encoder, config=ingest_config(config), progress=progress
    )
    states.update(
        phase="copied",
        indexed=report.indexed,
        dead_lettered=report.dead_lettered,
        skipped_existing=len(skipped),
    )
    return Copied(report, len(skipped))


def ingest_config(config: MigrationConfig, catch_up_pass: int | None = None) -> IngestConfig:
    """The copy's ingestion settings; a catch-up pass keeps its refusals in a file of its
    own (each ingest run starts its dead-letter file afresh). Pure."""
    dead_letter = config.dead_letter
    if dead_letter and catch_up_pass is not None:
        path = Path(dead_letter)
        dead_letter = str(path.with_name(f"{path.stem}.pass{catch_up_pass}{path.suffix}"))
    return IngestConfig(
        index=config.target,
        id_field="_id",
        text_fields=config.text_fields,
        sparse_field=config.sparse_field,
        batch_size=config.batch_size,
        workers=config.workers,
        dead_letter=dead_letter,
        add_id_field=False,
        input_name=f"index:{config.source}",
        long_documents=config.long_documents,
    )


# ---------------------------------------------------------------------- gate
def compare_long_document_modes(job: Migration) -> ModeComparison | None:
    """The gate's comparison of long-document modes on a sample of the source, in memory
    (None: not asked)."""
    config = job.config
    if not config.compare_long_documents:
        return None
    job.step(
        f"comparing long-document modes {', '.join(config.compare_long_documents)} on the "
        f"gate's judgments (up to {config.compare_sample:,} documents of {config.source})"
    )
    return compare_modes(job.client, config, job.encoder, dialect=job.dialect)


def gate_target(job: Migration) -> GateResult | None:
    """The relevance gate on the copied target (None: the config has no gate)."""
    config = job.config
    if config.gate is None:
        return None
    job.step("running the relevance gate")
    return run_gate(
        job.client,
        config.source,
        config.target,
        config.gate,
        encoder=job.encoder,
        text_fields=config.text_fields,
        sparse_field=config.sparse_field,
        progress=lambda label: job.step(f"gate: {label}"),
        hybrid_method=config.gate.hybrid_method,
        fusion=config.gate.fusion,
    )


# ---------------------------------------------------------------------- catch up
def catch_up_pass(
    job: Migration, states: StateFile, number: int, *, blocked: bool = False
) -> SyncPass:
    """One catch-up pass from the saved watermarks; the next ones are saved after it."""
    config = job.config
    since = states.state.watermarks
    if since is None:
        raise RuntimeError("catch-up pass before first_watermarks")  # a bug, not a cluster's
    done, after = catch_up(
        job.client,
        config.source,
        config.target,
        since,
        dialect=job.dialect,
        copy=partial(copy_changes, job),
        number=number,
        under_write_block=blocked,
    )
    states.update(watermarks=after)
    job.step(pass_line(done))
    return done


def copy_changes(job: Migration, records: Iterable[Record], number: int) -> IngestReport:
    """A catch-up pass's copy: the ingestion pipeline, with a dead-letter file of its own."""
    config = ingest_config(job.config, number)
    return ingest(job.client, records, encoder=job.encoder, config=config)


def pass_line(done: SyncPass) -> str:
    """A pass, in one line of progress. Pure."""
    return (
        f"catch-up pass {done.number}{' (writes blocked)' if done.under_write_block else ''}: "
        f"{done.changed:,} changed, {done.deleted:,} deleted, {done.refused:,} refused, "
        f"{done.missing:,} still missing ({done.seconds:.1f} s)"
    )


def catch_up_passes(job: Migration, states: StateFile) -> tuple[list[SyncPass], bool]:
    """Passes until one finds fewer than ``max_delta`` changes (True: converged) or
    ``max_passes`` ran (False: the final pass takes the rest)."""
    passes: list[SyncPass] = []
    while len(passes) < job.config.max_passes:
        passes.append(catch_up_pass(job, states, len(passes) + 1))
        if passes[-1].changes < job.config.max_delta:
            return passes, True
    return passes, False


# ---------------------------------------------------------------------- final pass, switch
def final_pass(
    job: Migration, states: StateFile, passes: Sequence[SyncPass], *, want_switch: bool
) -> FinalPass:
    """The last pass, the verification and (``want_switch``: the gate passed) the switch;
    under a write block on the source when switching, unless the config says not to."""
    if want_switch and job.config.write_block:
        return final_pass_under_write_block(job, states, passes)
    return sync_verify_switch(job, states, passes, want_switch=want_switch, blocked=False)


def final_pass_under_write_block(
    job: Migration, states: StateFile, passes: Sequence[SyncPass]
) -> FinalPass:
    """``sync_verify_switch`` with the source refusing writes, so nothing acknowledged can
    land between the final pass and the switch. The state file records the block while it
    is held: a run killed meanwhile lifts it when resumed."""
    source = job.config.source
    with write_block(
        job.client,
        source,
        dialect=job.dialect,
        on_added=lambda: _record_block(states, held=True),
        on_lifted=lambda: _record_block(states, held=False),
    ) as block:
        job.step(f"writes to {source} blocked for the final pass and the switch")
        done = sync_verify_switch(job, states, passes, want_switch=True, blocked=True)
    if not block.added:
        return replace(done, blocked_before=True)
    job.step(f"writes to {source} unblocked after {block.seconds:.2f} s")
    return replace(done, blocked_seconds=block.seconds)


def sync_verify_switch(
    job: Migration,
    states: StateFile,
    passes: Sequence[SyncPass],
    *,
    want_switch: bool,
    blocked: bool,
) -> FinalPass:
    """The final pass, the verification and, if ``may_switch``, the alias switch."""
    config = job.config
    synced_at = read_max_seq_nos(job.client, config.source)
    done = catch_up_pass(job, states, len(passes) + 1, blocked=blocked)
    verification = verify_target(job, synced_at)
    if not may_switch(want_switch, verification, [*passes, done]):
        return FinalPass(done, verification, None)
    job.step(
        f"switching alias {config.alias} -> {config.target}"
        + ("" if blocked else " (no write block)")
    )
    return FinalPass(done, verification, switch_alias(job.client, config.alias, config.target))


def verify_target(job: Migration, synced_at: Watermarks) -> Verification:
    """``verify``: ``synced_at`` the source's max sequence numbers before the final pass."""
    config = job.config
    return verify(
        job.client,
        config.source,
        config.target,
        dialect=job.dialect,
        sparse_field=config.sparse_field,
        sample=config.verify_sample,
        synced_at=synced_at,
    )


def wants_switch(config: MigrationConfig, gate: GateResult | None) -> bool:
    """Asked to switch, and the gate passed. Pure."""
    return config.switch and gate is not None and gate.passed


def may_switch(want_switch: bool, verification: Verification, passes: Sequence[SyncPass]) -> bool:
    """Switch only to a verified target none of whose passes had a document refused. Pure."""
    # A refused document's target copy is stale or absent: ids alone may not show it.
    return want_switch and verification.ok and not any(p.refused for p in passes)


def _record_block(states: StateFile, *, held: bool) -> None:
    states.update(write_block=held)


# ---------------------------------------------------------------------- the report's notes
def outcome_notes(
    config: MigrationConfig,
    gate: GateResult | None,
    passes: Sequence[SyncPass],
    final: FinalPass,
    *,
    converged: bool,
) -> list[str]:
    """What the report should point out about how the migration went (``passes``: every
    catch-up pass, the final one last). Pure."""
    notes = []
    if not converged:
        notes.append(
            f"writes kept coming: {config.max_passes} catch-up passes did not converge below "
            f"{config.max_delta} changes; the final pass took the rest"
        )
    if final.blocked_before:
        notes.append(f"{config.source} was write-blocked before the migration; left so")
    refused = sum(p.refused for p in passes)
    if refused:
        notes.append(
            f"{refused} documents were refused during the catch-up passes (see the .passN "
            "dead-letter files)" + ("; alias not switched" if wants_switch(config, gate) else "")
        )
    if final.verification.written_after:
        notes.append(
            f"{config.source} was written after the final pass (shards "
            f"{', '.join(map(str, final.verification.written_after))}): without a write block "
            "those writes can be missing from the target"
        )
    notes.extend(switch_notes(config, gate, final))
    return notes


def switch_notes(config: MigrationConfig, gate: GateResult | None, final: FinalPass) -> list[str]:
    """Why the alias was not switched, if it was not. Pure."""
    if not config.switch:
        return ["dry run: alias left as it was (use --switch)"]
    if final.switched:
        return []
    if not final.verification.ok:
        return ["alias not switched: verification failed"]
    if gate is None or not gate.passed:
        return ["alias not switched: the relevance gate did not pass"]
    return []
