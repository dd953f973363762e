"""Verification of a migrated index: the source and the target hold the same ids and, for a
sample, the same fields (the target's sparse field aside); nothing was written to the source
after the final catch-up pass."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

from ..connect import call
from ..engines import Dialect
from ..ingest.index_source import read_index
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
    sample: int = 20,
    synced_at: Watermarks | None = None,
) -> Verification:
    """Counts, the id sets of both indices, ``sample`` documents compared field by field (the
    target's minus the sparse field must equal the source's) and, with ``synced_at`` (the
    source's max sequence numbers when the final pass began), the shards written since."""
    written_after: tuple[int, ...] = ()
    if synced_at is not None:
        now = read_max_seq_nos(client, source)
        written_after = tuple(s for s in sorted(now) if now[s] != synced_at.get(s))
    source_ids = read_ids(client, source, dialect=dialect)
    target_ids = read_ids(client, target, dialect=dialect)
    source_count = _count(client, source)
    target_count = _count(client, target)
    missing = tuple(sorted(source_ids - target_ids)[:20])
    extra = tuple(sorted(target_ids - source_ids)[:20])
    records = list(
        islice(read_index(client, source, dialect=dialect, page_size=max(sample, 1)), sample)
    )
    mismatches: list[tuple[str, str]] = []
    if records:
        source = dialect.full_source()  # vector fields too, or a lost one goes unnoticed
        docs = [{"_id": str(r.doc["_id"]), "_source": source} for r in records]
        response = call(lambda: client.mget(index=target, body={"docs": docs}), f"reading {target}")
        copies = {d["_id"]: d.get("_source") for d in response["docs"] if d.get("found")}
        for record in records:
            doc_id = str(record.doc["_id"])
            original = {k: v for k, v in record.doc.items() if k != "_id"}
            copied = copies.get(doc_id)
            if copied is None:
                continue  # counted as missing above
            copied = {k: v for k, v in copied.items() if k != sparse_field}
            for name in sorted(set(original) | set(copied)):
                if original.get(name) != copied.get(name):
                    mismatches.append((doc_id, name))
            if sparse_field not in copies[doc_id]:
                mismatches.append((doc_id, sparse_field))
    return Verification(
        source_count,
        target_count,
        missing,
        extra,
        len(records),
        tuple(mismatches),
        written_after,
    )


def _count(client: Any, index: str) -> int:
    return int(call(lambda: client.count(index=index), f"counting {index}")["count"])
