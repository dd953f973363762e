"""Catch-up passes: a live source's writes reach the target, so a migration can finish while
the application keeps writing.

Change detection needs no help from the application: every shard numbers its operations
(``_seq_no``), and its *global checkpoint* is the highest number below which every operation
is processed on every in-sync copy. Before the bulk copy opens its point in time, each
shard's checkpoint is recorded (a *watermark*) and the source refreshed: every document
whose ``_seq_no`` is at most its shard's watermark is in the copy at its current version, so
a pass only has to

1. record the shard checkpoints again (the next watermarks) and refresh the source,
2. re-copy the documents written since the previous watermarks (``_seq_no`` range, per shard),
3. delete from the target the ids the source no longer has (id-only reads of both).

Watermarks are per shard and durable in the migration's state file, so a killed migration
resumes from the last finished pass. The final pass runs under a write block on the source
(``write_block``) so nothing acknowledged can land between it and the alias switch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tenacity import retry_if_exception

from .. import defaults
from ..connect import call
from ..engines import Dialect
from ..exceptions import ClusterError
from ..ingest import IngestReport
from ..ingest.index_source import read_index, read_shard_changes
from ..ingest.sources import Record
from ..retry import RetryPolicy, is_retryable

Watermarks = dict[int, int]  # shard number -> global checkpoint (-1: nothing written yet)
Copier = Callable[[Iterable[Record], int], IngestReport]  # (records, pass number) -> report

# Lifting the write block: short waits (writes are refused meanwhile), five tries in all.
LIFT_RETRIES = RetryPolicy(max_retries=4, initial_backoff=0.2, max_backoff=3.0, jitter=0.2)


@dataclass(frozen=True)
class SyncPass:
    """One catch-up pass: what it re-copied and deleted, and what it could not copy."""

    number: int
    changed: int  # documents re-copied (new or updated since the previous pass)
    deleted: int  # ids deleted from the target
    refused: int  # documents the target refused (dead-lettered)
    missing: int  # source ids still absent from the target after the pass
    seconds: float
    under_write_block: bool = False
    truncated: int = 0  # re-copied documents that lost text (ingest's long-document count)

    @property
    def changes(self) -> int:
        return self.changed + self.deleted


@dataclass
class WriteBlock:
    """How long the source refused writes (``seconds`` is set when the block is lifted)."""

    index: str
    added: bool  # False: the index was blocked already, and stays so
    seconds: float = 0.0


# ---------------------------------------------------------------------- pure parts
def shard_checkpoints(
    stats: Mapping[str, Any], index: str, *, key: str = "global_checkpoint"
) -> Watermarks:
    """Per shard, the primary's ``key`` (``global_checkpoint``, or ``max_seq_no``: the highest
    number given out) from ``GET /<index>/_stats?level=shards``. Pure. A shard without a
    started primary is an error: its checkpoint is unknown."""
    shards = stats["indices"][index]["shards"]
    out: Watermarks = {}
    for shard, copies in shards.items():
        primaries = [c for c in copies if c.get("routing", {}).get("primary")]
        if not primaries or "seq_no" not in primaries[0]:
            raise ClusterError(f"{index} shard {shard}: no started primary to read its checkpoint")
        out[int(shard)] = int(primaries[0]["seq_no"][key])
    return out


def initial_watermarks(shards: Iterable[int]) -> Watermarks:
    """Watermarks that make the next pass re-copy everything (the target's versions are
    unknown: a migration resumed without its state file)."""
    return dict.fromkeys(shards, -1)


def encode_watermarks(watermarks: Watermarks) -> dict[str, int]:
    """JSON keys are strings."""
    return {str(k): v for k, v in sorted(watermarks.items())}


def decode_watermarks(data: Mapping[str, int]) -> Watermarks:
    return {int(k): int(v) for k, v in data.items()}


def delete_body(index: str, ids: Iterable[str]) -> list[dict[str, Any]]:
    """A bulk body deleting ``ids`` from ``index``. Pure."""
    return [{"delete": {"_index": index, "_id": doc_id}} for doc_id in ids]


def delete_failures(response: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(id, reason) of the bulk delete items that failed; ``not_found`` is success (the id
    is gone either way). Pure."""
    failed = []
    for item in response.get("items", ()):
        result = item.get("delete", {})
        if result.get("status", 200) >= 300 and result.get("result") != "not_found":
            failed.append((str(result.get("_id")), str(result.get("error"))))
    return failed


# ---------------------------------------------------------------------- cluster calls
def read_checkpoints(client: Any, index: str) -> Watermarks:
    return shard_checkpoints(_shard_stats(client, index), index)


def read_max_seq_nos(client: Any, index: str) -> Watermarks:
    """Per shard, the highest sequence number given out: unchanged between two reads means
    nothing was written (or deleted) in between."""
    return shard_checkpoints(_shard_stats(client, index), index, key="max_seq_no")


def take_watermarks(client: Any, index: str) -> Watermarks:
    """The shard checkpoints, then a refresh: every operation they cover is then searchable,
    so a reader opened after this call sees it (and a later pass sees the rest)."""
    watermarks = read_checkpoints(client, index)
    call(lambda: client.indices.refresh(index=index), f"refreshing {index}")
    return watermarks


def read_ids(client: Any, index: str, *, dialect: Dialect) -> set[str]:
    """Every id in ``index`` (refreshed first), read without the documents."""
    call(lambda: client.indices.refresh(index=index), f"refreshing {index}")
    records = read_index(client, index, dialect=dialect, source=False)
    return {str(r.doc["_id"]) for r in records if r.doc is not None}  # an index read has docs


def delete_ids(
    client: Any, index: str, ids: Iterable[str], *, batch: int = defaults.BULK_DOCS
) -> int:
    """Delete ``ids`` from ``index``; raises naming the first id the cluster refused."""
    pending = sorted(ids)
    for start in range(0, len(pending), batch):
        body = delete_body(index, pending[start : start + batch])
        response = call(lambda body=body: client.bulk(body=body), f"deleting from {index}")
        failed = delete_failures(response)
        if failed:
            doc_id, reason = failed[0]
            raise ClusterError(
                f"deleting document {doc_id!r} from {index} failed: {reason} "
                f"({len(failed)} failed in this batch)"
            )
    return len(pending)


def catch_up(
    client: Any,
    source: str,
    target: str,
    since: Watermarks,
    *,
    dialect: Dialect,
    copy: Copier,
    number: int,
    under_write_block: bool = False,
) -> tuple[SyncPass, Watermarks]:
    """One pass: re-copy what was written to ``source`` after ``since``, delete from
    ``target`` what ``source`` no longer has. Returns the pass and the next watermarks."""
    started = time.perf_counter()
    now = take_watermarks(client, source)
    shards = sorted(set(now) | set(since))

    def changed() -> Iterator[Record]:
        position = 0
        for shard in shards:
            for record in read_shard_changes(
                client, source, shard, since.get(shard, -1), dialect=dialect
            ):
                position += 1  # positions run across shards: ingest needs them increasing
                yield Record(position, record.doc)

    report = copy(changed(), number)
    # Ids after the copy: a document deleted meanwhile is deleted from the target too.
    source_ids = read_ids(client, source, dialect=dialect)
    target_ids = read_ids(client, target, dialect=dialect)
    deleted = delete_ids(client, target, target_ids - source_ids)
    return (
        SyncPass(
            number=number,
            changed=report.indexed,
            deleted=deleted,
            refused=report.dead_lettered,
            missing=len(source_ids - target_ids),
            seconds=time.perf_counter() - started,
            under_write_block=under_write_block,
            truncated=report.truncated,
        ),
        now,
    )


def blocked_already(client: Any, index: str) -> bool:
    settings = call(
        lambda: client.indices.get_settings(index=index, name="index.blocks.write"),
        f"reading {index} settings",
    )
    value = settings.get(index, {}).get("settings", {}).get("index", {}).get("blocks", {})
    return str(value.get("write", "false")).lower() == "true"


@contextlib.contextmanager
def write_block(
    client: Any,
    index: str,
    *,
    dialect: Dialect,
    on_added: Callable[[], None] | None = None,
    on_lifted: Callable[[], None] | None = None,
    attempts: int = 5,
) -> Iterator[WriteBlock]:
    """Refuse writes to ``index`` for the duration of the ``with`` body, and lift the block
    in every outcome (an exception, Ctrl-C). An index that was blocked before is left
    blocked. ``on_added`` runs just before the block is added and ``on_lifted`` once it is
    lifted (the caller records the block in between, so a migration killed with -9, or
    whose lifting failed, lifts it when resumed)."""
    if blocked_already(client, index):
        yield WriteBlock(index, added=False)
        return
    block = WriteBlock(index, added=True)
    if on_added:
        on_added()  # first: a kill between the two calls must still find the block noted
    call(lambda: dialect.add_write_block(client, index), f"blocking writes to {index}")
    started = time.perf_counter()
    try:
        yield block
    finally:
        block.seconds = time.perf_counter() - started
        lift_write_block(client, index, dialect=dialect, attempts=attempts)
        if on_lifted:
            on_lifted()


def lift_write_block(client: Any, index: str, *, dialect: Dialect, attempts: int = 5) -> None:
    """Remove the write block, retrying (``LIFT_RETRIES``, at most ``attempts`` tries) what
    the cluster pushes back on; the error says how to lift it by hand if it could not."""
    policy = replace(LIFT_RETRIES, max_retries=attempts - 1)
    try:
        for attempt in policy.retrying(retry=retry_if_exception(lift_is_retryable), reraise=True):
            with attempt:
                call(
                    lambda: dialect.remove_write_block(client, index),
                    f"lifting the write block on {index}",
                )
    except Exception as exc:
        raise ClusterError(
            f"{index} still refuses writes: lifting its write block failed ({exc}); lift it "
            f'with PUT /{index}/_settings {{"index.blocks.write": null}}'
        ) from exc


def lift_is_retryable(exc: BaseException) -> bool:
    """``is_retryable``, looking through ``connect.call``'s error (a ``ClusterError`` whose
    ``__cause__`` is the client's) and counting a bare socket failure (``ConnectionError``,
    what a transport raises below the client's own classes) as the transient failure it is."""
    return (
        is_retryable(exc)
        or (exc.__cause__ is not None and is_retryable(exc.__cause__))
        or isinstance(exc, ConnectionError)
    )


def _shard_stats(client: Any, index: str) -> Mapping[str, Any]:
    return call(
        lambda: client.indices.stats(index=index, level="shards", metric="docs"),
        f"reading {index} shard checkpoints",
    )
