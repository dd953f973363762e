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
alias: the catch-up passes (``migrate_sync``) bring its writes and deletes over, and the
final pass runs under a write block on the source, lifted in every outcome.

>>> config = MigrationConfig(                                          # doctest: +SKIP
...     source="docs-bm25", target="docs-splade", alias="docs", switch=True,
...     gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=0.0))
>>> report = migrate(client, config, encoder=encoder)                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..connect import Cluster, call, client_of
from ..engines import Dialect, FieldType, Hybrid, dialect_of
from ..evaluate import Latency, overlap_at, run_queries, score_run
from ..exceptions import ConfigurationError
from ..ingest import IngestConfig, IngestReport, ingest
from ..ingest.index_source import read_index, skip_existing
from ..ingest.sources import Record
from ..query import QueryBuilder
from .sync import (
    SyncPass,
    Watermarks,
    catch_up,
    decode_watermarks,
    encode_watermarks,
    initial_watermarks,
    lift_write_block,
    read_checkpoints,
    read_max_seq_nos,
    take_watermarks,
    write_block,
)
from .verify import Verification, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Gate:
    """The relevance gate: judged queries (``qrels``) and a minimum nDCG@10 gain over BM25,
    or unjudged queries and a minimum overlap@10 with the BM25 results."""

    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]] | None = None
    min_ndcg_gain: float | None = None
    min_overlap: float | None = None
    hybrid_weight: float = 0.5
    k: int = 100

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
    text_fields: tuple[str, ...] = ("title", "text")
    sparse_field: str = "splade"
    field_type: FieldType = "rank_features"
    slices: int = 1
    batch_size: int = 32
    workers: int = 2
    checkpoint: str | None = None
    dead_letter: str | None = None
    gate: Gate | None = None
    switch: bool = False  # False: dry run, everything but the alias switch
    verify_sample: int = 20
    # Catch-up passes repeat until one finds fewer changes than this (or max_passes ran).
    max_delta: int = 10
    max_passes: int = 10
    # Run the final pass and the switch with the source refusing writes. False: a write
    # acknowledged between the final pass and the switch can be missing from the target.
    write_block: bool = True

    def __post_init__(self) -> None:
        if self.max_delta < 1 or self.max_passes < 1:
            raise ConfigurationError("max_delta and max_passes must be >= 1")
        if len({self.source, self.target, self.alias}) != 3:
            raise ConfigurationError("source, target and alias must be three different names")
        if self.switch and self.gate is None:
            raise ConfigurationError(
                "switching the alias needs a relevance gate (gate queries and a threshold)"
            )


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


# ---------------------------------------------------------------------- steps
def target_body(
    source_info: Mapping[str, Any],
    *,
    dialect: Dialect,
    sparse_field: str,
    field_type: FieldType,
) -> dict[str, Any]:
    """The target's ``PUT`` body: the source's settings (minus generated and engine-private
    ones, ``Dialect.copyable_settings``) and mapping, plus the sparse field as the
    ``mappings/`` template defines it for this version. Pure."""
    settings = dialect.copyable_settings(source_info.get("settings", {}).get("index", {}))
    mappings = copy.deepcopy(dict(source_info.get("mappings", {})))
    properties = mappings.setdefault("properties", {})
    if sparse_field in properties:
        raise ConfigurationError(f"the source already has a field {sparse_field!r}")
    template = dialect.index_body(field_type, sparse_field=sparse_field)
    properties[sparse_field] = template["mappings"]["properties"][sparse_field]
    for key, value in template["settings"].items():
        if key.startswith("index."):  # what the field type needs (index.sparse, ...)
            settings[key.removeprefix("index.")] = value
    return {"settings": {"index": settings}, "mappings": mappings}


def alias_indices(client: Any, alias: str) -> tuple[str, ...]:
    """The indices ``alias`` points at (empty if it does not exist)."""
    if not call(lambda: client.indices.exists_alias(name=alias), f"checking alias {alias}"):
        if call(lambda: client.indices.exists(index=alias), f"checking {alias}"):
            raise ConfigurationError(f"{alias!r} is an index, not an alias")
        return ()
    found = call(lambda: client.indices.get_alias(name=alias), f"reading alias {alias}")
    return tuple(sorted(found))


def switch_alias(client: Any, alias: str, to_index: str) -> tuple[str, ...]:
    """Point ``alias`` at ``to_index`` only, in one atomic ``_aliases`` call."""
    current = alias_indices(client, alias)
    actions: list[dict[str, Any]] = [
        {"remove": {"index": index, "alias": alias}} for index in current if index != to_index
    ]
    actions.append({"add": {"index": to_index, "alias": alias}})
    call(
        lambda: client.indices.update_aliases(body={"actions": actions}),
        f"switching alias {alias}",
    )
    return alias_indices(client, alias)


def require_source(client: Any, source: str) -> None:
    """``ConfigurationError`` unless index (or alias) ``source`` exists: the first thing a
    migration checks, before it counts, reads or loads anything for it."""
    client = client_of(client)
    if not call(lambda: client.indices.exists(index=source), f"checking the source {source}"):
        raise ConfigurationError(f"source index {source!r} does not exist")


def rollback(client: Any, alias: str, source: str) -> tuple[str, ...]:
    """Point ``alias`` back at ``source`` (one atomic call)."""
    client = client_of(client)
    if not call(lambda: client.indices.exists(index=source), f"checking {source}"):
        raise ConfigurationError(f"cannot roll back: index {source!r} does not exist")
    return switch_alias(client, alias, source)


def run_gate(
    client: Any,
    source: str,
    target: str,
    gate: Gate,
    *,
    encoder: Any,
    text_fields: tuple[str, ...],
    sparse_field: str,
    progress: Callable[[str], None] | None = None,
) -> GateResult:
    """Old BM25 vs new SPLADE and hybrid on the gate queries: quality, latency, size."""
    # The gate runs right after the copy: without a refresh a real engine may not yet search
    # what was just indexed (refresh_interval), and SPLADE would score zero.
    for index in (source, target):
        call(lambda index=index: client.indices.refresh(index=index), f"refreshing {index}")
    builder = QueryBuilder.for_index(client, target, field=sparse_field)
    queries = (
        {q: gate.queries[q] for q in gate.qrels if q in gate.queries}
        if gate.qrels
        else dict(gate.queries)
    )
    hybrid = Hybrid(bm25_weight=gate.hybrid_weight, text_fields=text_fields)
    plans = [
        ("BM25 (old)", source, "bm25"),
        ("SPLADE (new)", target, "splade"),
        (f"hybrid {gate.hybrid_weight:g} BM25 (new)", target, "hybrid"),
    ]
    runs = {}
    rows = []
    for label, index, mode in plans:
        if progress:
            progress(label)
        result = run_queries(
            client,
            index,
            queries,
            encoder=encoder,
            mode=mode,  # type: ignore[arg-type]
            k=gate.k,
            hybrid=hybrid,
            builder=builder,
            field=sparse_field,
            text_fields=text_fields,
        )
        runs[label] = result.run
        metrics: dict[str, float] = {}
        if gate.qrels:
            metrics.update(score_run(result.run, {q: gate.qrels[q] for q in queries}))
        metrics["overlap@10"] = overlap_at(result.run, runs[plans[0][0]], 10)
        rows.append(GateRow(label, index, metrics, result.latency(), _size(client, index)))
    old, new = (
        rows[0],
        max(rows[1:], key=lambda r: r.metrics.get("ndcg@10", r.metrics["overlap@10"])),
    )
    if gate.min_ndcg_gain is not None:
        gain = new.metrics["ndcg@10"] - old.metrics["ndcg@10"]
        passed = gain >= gate.min_ndcg_gain
        reason = (
            f"nDCG@10 {new.label} {new.metrics['ndcg@10']:.4f} vs {old.label} "
            f"{old.metrics['ndcg@10']:.4f}: gain {gain:+.4f} "
            f"{'>=' if passed else '<'} {gate.min_ndcg_gain}"
        )
    else:
        splade = rows[1]
        overlap = splade.metrics["overlap@10"]
        passed = overlap >= gate.min_overlap  # type: ignore[operator]
        reason = (
            f"overlap@10 of SPLADE with BM25 {overlap:.3f} "
            f"{'>=' if passed else '<'} {gate.min_overlap}"
        )
    return GateResult(tuple(rows), passed, reason)


# ---------------------------------------------------------------------- the whole job
def migrate(
    client: Any,
    config: MigrationConfig,
    *,
    encoder: Any,
    progress: Callable[[str, int], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> MigrationReport:
    """Plan, copy (resumable), verify, gate and (with ``config.switch``) switch the alias.
    ``client``: an Elasticsearch or OpenSearch client, or a ``Cluster`` from ``connect``."""
    cluster = client if isinstance(client, Cluster) else Cluster.from_client(client)
    client = cluster.client
    dialect = dialect_of(cluster)
    step = on_step or (lambda message: log.info(message))
    require_source(client, config.source)
    alias_before = alias_indices(client, config.alias)
    notes: list[str] = []
    if alias_before and config.source not in alias_before and config.target not in alias_before:
        notes.append(f"alias {config.alias} pointed at {', '.join(alias_before)}")

    state = _load_state(config)
    if state.pop("write_block", False):
        # A run killed inside its final pass left the source refusing writes.
        step(f"lifting the write block a stopped migration left on {config.source}")
        lift_write_block(client, config.source, dialect=dialect)
        _save_state(config, state)
    resuming = call(lambda: client.indices.exists(index=config.target), "checking the target")
    if not resuming:
        step(f"creating {config.target} from {config.source}'s settings and mapping")
        info = call(lambda: client.indices.get(index=config.source), "reading the source")
        body = target_body(
            info[next(iter(info))],
            dialect=dialect,
            sparse_field=config.sparse_field,
            field_type=config.field_type,
        )
        call(lambda: client.indices.create(index=config.target, body=body), "creating the target")
        state = {"phase": "copying"}
        _save_state(config, state)

    if "watermarks" in state:
        watermarks = decode_watermarks(state["watermarks"])
    elif resuming:
        # What the target holds came from an unknown moment: the first pass re-copies all.
        watermarks = initial_watermarks(read_checkpoints(client, config.source))
    else:
        # Taken before the copy's reader opens: every write after it reaches a pass.
        watermarks = take_watermarks(client, config.source)
    state["watermarks"] = encode_watermarks(watermarks)
    _save_state(config, state)

    copy_report: IngestReport | None = None
    skipped: list[int] = []
    if state.get("phase") != "copied":
        if resuming:
            step(f"resuming the copy into {config.target}: documents already there are skipped")
            if config.dead_letter and os.path.exists(config.dead_letter):
                os.remove(config.dead_letter)  # every unindexed record is attempted again
        else:
            step(f"copying {config.source} -> {config.target}")
        records = read_index(client, config.source, dialect=dialect, slices=config.slices)
        if resuming:
            records = skip_existing(client, config.target, records, skipped=skipped)
        copy_report = ingest(
            client, records, encoder=encoder, config=_ingest_config(config), progress=progress
        )
        state = {
            "phase": "copied",
            "indexed": copy_report.indexed,
            "dead_lettered": copy_report.dead_lettered,
            "skipped_existing": len(skipped),
            "watermarks": state["watermarks"],
        }
        _save_state(config, state)

    gate = None
    if config.gate is not None:
        step("running the relevance gate")
        gate = run_gate(
            client,
            config.source,
            config.target,
            config.gate,
            encoder=encoder,
            text_fields=config.text_fields,
            sparse_field=config.sparse_field,
            progress=lambda label: step(f"gate: {label}"),
        )

    def copier(records: Iterable[Record], number: int) -> IngestReport:
        return ingest(client, records, encoder=encoder, config=_ingest_config(config, number))

    def run_pass(number: int, *, blocked: bool = False) -> SyncPass:
        done, after = catch_up(
            client,
            config.source,
            config.target,
            decode_watermarks(state["watermarks"]),
            dialect=dialect,
            copy=copier,
            number=number,
            under_write_block=blocked,
        )
        state["watermarks"] = encode_watermarks(after)
        _save_state(config, state)
        step(
            f"catch-up pass {number}{' (writes blocked)' if blocked else ''}: "
            f"{done.changed:,} changed, {done.deleted:,} deleted, {done.refused:,} refused, "
            f"{done.missing:,} still missing ({done.seconds:.1f} s)"
        )
        return done

    passes: list[SyncPass] = []
    while len(passes) < config.max_passes:
        passes.append(run_pass(len(passes) + 1))
        if passes[-1].changes < config.max_delta:
            break
    else:
        notes.append(
            f"writes kept coming: {config.max_passes} catch-up passes did not converge below "
            f"{config.max_delta} changes; the final pass took the rest"
        )

    switched = False
    alias_after = alias_before
    blocked_seconds: float | None = None
    want_switch = config.switch and gate is not None and gate.passed

    def may_switch(verification: Verification) -> bool:
        # A refused document's target copy is stale or absent: ids alone may not show it.
        return want_switch and verification.ok and not any(p.refused for p in passes)

    if want_switch and config.write_block:
        with write_block(
            client,
            config.source,
            dialect=dialect,
            on_added=lambda: _note_block(config, state, blocked=True),
            on_lifted=lambda: _note_block(config, state, blocked=False),
        ) as block:
            step(f"writes to {config.source} blocked for the final pass and the switch")
            synced_at = read_max_seq_nos(client, config.source)
            passes.append(run_pass(len(passes) + 1, blocked=True))
            verification = _verify(client, config, dialect, synced_at)
            if may_switch(verification):
                step(f"switching alias {config.alias} -> {config.target}")
                alias_after = switch_alias(client, config.alias, config.target)
                switched = True
        if block.added:
            blocked_seconds = block.seconds
            step(f"writes to {config.source} unblocked after {block.seconds:.2f} s")
        else:
            notes.append(f"{config.source} was write-blocked before the migration; left so")
    else:
        synced_at = read_max_seq_nos(client, config.source)
        passes.append(run_pass(len(passes) + 1))
        verification = _verify(client, config, dialect, synced_at)
        if may_switch(verification):
            step(f"switching alias {config.alias} -> {config.target} (no write block)")
            alias_after = switch_alias(client, config.alias, config.target)
            switched = True
    refused = sum(p.refused for p in passes)
    if refused:
        notes.append(
            f"{refused} documents were refused during the catch-up passes (see the .passN "
            "dead-letter files)" + ("; alias not switched" if want_switch else "")
        )
    if verification.written_after:
        notes.append(
            f"{config.source} was written after the final pass (shards "
            f"{', '.join(map(str, verification.written_after))}): without a write block those "
            "writes can be missing from the target"
        )
    if config.switch and not switched:
        if not verification.ok:
            notes.append("alias not switched: verification failed")
        elif gate is None or not gate.passed:
            notes.append("alias not switched: the relevance gate did not pass")
    elif not config.switch:
        notes.append("dry run: alias left as it was (use --switch)")
    return MigrationReport(
        source=config.source,
        target=config.target,
        alias=config.alias,
        copy=copy_report,
        skipped_existing=len(skipped),
        verification=verification,
        gate=gate,
        switched=switched,
        alias_before=alias_before,
        alias_after=alias_after,
        engine=cluster.description,
        notes=tuple(notes),
        passes=tuple(passes),
        write_blocked_seconds=blocked_seconds,
    )


def report_json(report: MigrationReport) -> dict[str, Any]:
    """A JSON-ready dict of the report."""
    return json.loads(json.dumps(asdict(report), default=str))


# ---------------------------------------------------------------------- helpers
def _ingest_config(config: MigrationConfig, catch_up_pass: int | None = None) -> IngestConfig:
    """The copy's ingestion settings; a catch-up pass keeps its refusals in a file of its
    own (each ingest run starts its dead-letter file afresh)."""
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
    )


def _verify(
    client: Any, config: MigrationConfig, dialect: Dialect, synced_at: Watermarks
) -> Verification:
    return verify(
        client,
        config.source,
        config.target,
        dialect=dialect,
        sparse_field=config.sparse_field,
        sample=config.verify_sample,
        synced_at=synced_at,
    )


def _note_block(config: MigrationConfig, state: dict[str, Any], *, blocked: bool) -> None:
    """Record in the state file whether this run holds a write block on the source."""
    if blocked:
        state["write_block"] = True
    else:
        state.pop("write_block", None)
    _save_state(config, state)


def _size(client: Any, index: str) -> int:
    stats = call(lambda: client.indices.stats(index=index, metric="store"), f"sizing {index}")
    return int(stats["indices"][index]["primaries"]["store"]["size_in_bytes"])


def _load_state(config: MigrationConfig) -> dict[str, Any]:
    if not config.checkpoint or not Path(config.checkpoint).exists():
        return {}
    state = json.loads(Path(config.checkpoint).read_text(encoding="utf-8"))
    if (state.get("source"), state.get("target")) != (config.source, config.target):
        raise ConfigurationError(f"{config.checkpoint} belongs to another migration")
    return state


def _save_state(config: MigrationConfig, state: dict[str, Any]) -> None:
    if not config.checkpoint:
        return
    path = Path(config.checkpoint)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps({"source": config.source, "target": config.target, **state}), encoding="utf-8"
    )
    os.replace(tmp, path)
