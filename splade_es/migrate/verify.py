"""Verification of a migrated index: the source and the target hold the same ids and, for a
sample, the same fields (the target's sparse field aside); nothing was written to the source
after the final catch-up pass."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ..connect import call
from ..engines import Dialect
from ..ingest.index_source import read_index
from .config import VERIFY_SAMPLE
from .sync import Watermarks, read_ids, read_max_seq_nos


@dataclass(frozen=True)
class Verification:
    source_count: int
    target_count: int
    missing: tuple[str, ...]  # ids in the source but not the target (first few)
    extra: tuple[str, ...]  # ids in the target but not the source (first few)
    sampled: int
    mismatches: tuple[tuple[str, str], ...]  # (id, field) that differ
    # Shards of the source written after the final pass (only possible without a write
    # block): the target can miss those writes.
    written_after: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return (
            self.source_count == self.target_count
            and not self.missing
            and not self.extra
            and not self.mismatches
        )


def verify(
    client: Any,
    source: str,
    target: str,
    *,
    dialect: Dialect,
    sparse_field: str,
    sample: int = VERIFY_SAMPLE,
    synced_at: Watermarks | None = None,
) -> Verification:
    """Counts, the id sets of both indices, ``sample`` documents compared field by field (the
    target's minus the sparse field must equal the source's) and, with ``synced_at`` (the
    source's max sequence numbers when the final pass began), the shards written since."""
    written_after: tuple[int, ...] = ()
    if synced_at is not None:
        written_after = shards_written_since(synced_at, read_max_seq_nos(client, source))
    source_ids = read_ids(client, source, dialect=dialect)
    target_ids = read_ids(client, target, dialect=dialect)
    source_count = _count(client, source)
    target_count = _count(client, target)
    records = islice(read_index(client, source, dialect=dialect, page_size=max(sample, 1)), sample)
    originals = [r.doc for r in records if r.doc is not None]  # an index read has docs
    copies = _read_copies(client, target, [str(d["_id"]) for d in originals], dialect=dialect)
    return Verification(
        source_count,
        target_count,
        tuple(sorted(source_ids - target_ids)[:20]),
        tuple(sorted(target_ids - source_ids)[:20]),
        len(originals),
        field_mismatches(originals, copies, sparse_field=sparse_field),
        written_after,
    )


def shards_written_since(synced_at: Watermarks, now: Watermarks) -> tuple[int, ...]:
    """The shards whose max sequence number moved from ``synced_at`` to ``now``. Pure."""
    return tuple(s for s in sorted(now) if now[s] != synced_at.get(s))


def field_mismatches(
    originals: Iterable[Mapping[str, Any]],
    copies: Mapping[str, Mapping[str, Any]],
    *,
    sparse_field: str,
) -> tuple[tuple[str, str], ...]:
    """(id, field) where a copy differs from its source document (``_id`` among its fields):
    a field that differs or is on one side only, or a copy without its sparse field. A
    document without a copy is not compared (the id comparison counts it missing). Pure."""
    mismatches: list[tuple[str, str]] = []
    for doc in originals:
        doc_id = str(doc["_id"])
        copied = copies.get(doc_id)
        if copied is None:
            continue
        original = {k: v for k, v in doc.items() if k != "_id"}
        fields = {k: v for k, v in copied.items() if k != sparse_field}
        for name in sorted(set(original) | set(fields)):
            if original.get(name) != fields.get(name):
                mismatches.append((doc_id, name))
        if sparse_field not in copied:
            mismatches.append((doc_id, sparse_field))
    return tuple(mismatches)


def _read_copies(
    client: Any, target: str, ids: list[str], *, dialect: Dialect
) -> dict[str, dict[str, Any]]:
    """The target's ``_source`` of each of ``ids`` it holds (one ``mget``)."""
    if not ids:
        return {}
    spec = dialect.full_source()  # vector fields too, or a lost one goes unnoticed
    docs = [{"_id": doc_id, "_source": spec} for doc_id in ids]
    response = call(lambda: client.mget(index=target, body={"docs": docs}), f"reading {target}")
    found = (d for d in response["docs"] if d.get("found") and d.get("_source") is not None)
    return {d["_id"]: d["_source"] for d in found}


def _count(client: Any, index: str) -> int:
    return int(call(lambda: client.count(index=index), f"counting {index}")["count"])
