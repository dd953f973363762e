"""Resume after a crash: what is durably done, and the dead-letter file.

Records are read in input order but finish out of order (parallel bulk senders). The
checkpoint stores a *watermark*: the input position up to which every record is durably
settled, i.e. acknowledged by the cluster (a bulk success is in the translog) or written to
the dead-letter file. A resumed run skips positions <= watermark and redoes the rest; records
past the watermark that were indexed before the crash are indexed again under the same
``_id``, which overwrites them: no gaps, no duplicates.

The file is replaced atomically (write, fsync, rename), so a kill -9 at any moment leaves
either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import heapq
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..exceptions import ConfigurationError


@dataclass(frozen=True)
class CheckpointState:
    """What a checkpoint file holds."""

    input: str  # what was read (path or description)
    index: str
    shard: str
    watermark: int  # every position <= watermark is settled
    indexed: int  # documents indexed up to the watermark, over all runs
    dead_lettered: int  # records dead-lettered up to the watermark, over all runs

    def matches(self, other: CheckpointState) -> bool:
        return (self.input, self.index, self.shard) == (other.input, other.index, other.shard)


class Checkpoint:
    """A checkpoint file; ``load`` to resume, ``save`` after each settled chunk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> CheckpointState | None:
        if not self.path.exists():
            return None
        try:
            return CheckpointState(**json.loads(self.path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"{self.path}: not a splade-es checkpoint ({exc})") from exc

    def resume_from(self, fresh: CheckpointState) -> CheckpointState:
        """The state to start from: the saved one if it is for the same job, else ``fresh``.
        A checkpoint of another job is refused rather than silently ignored."""
        saved = self.load()
        if saved is None:
            return fresh
        if not saved.matches(fresh):
            raise ConfigurationError(
                f"{self.path} belongs to another job (input {saved.input!r}, index "
                f"{saved.index!r}, shard {saved.shard}); use another --checkpoint file"
            )
        return saved

    def save(self, state: CheckpointState) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(asdict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


class Watermark:
    """The highest position below which every registered position is settled, and how
    many of those were indexed or dead-lettered (cumulative, resumed runs included).

    >>> w = Watermark(start=0)
    >>> for p in (1, 2, 5): w.register(p)
    >>> w.settle(2, "indexed"); w.value
    0
    >>> w.settle(1, "dead_lettered"); (w.value, w.indexed, w.dead_lettered)  # 3, 4: none
    (4, 1, 1)
    >>> w.settle(5, "indexed"); (w.value, w.indexed)
    (5, 2)
    """

    def __init__(self, start: int, *, indexed: int = 0, dead_lettered: int = 0) -> None:
        self.value = start
        self.indexed = indexed
        self.dead_lettered = dead_lettered
        self._open: list[int] = []  # registered, not yet folded into the counts (min-heap)
        self._settled: dict[int, str] = {}
        self._last_seen = start
        self._lock = threading.Lock()

    def register(self, position: int) -> None:
        with self._lock:
            heapq.heappush(self._open, position)
            self._last_seen = max(self._last_seen, position)

    def settle(self, position: int, kind: str) -> None:
        """``kind``: "indexed" or "dead_lettered"."""
        self.settle_all((position,), kind)

    def settle_all(self, positions: Iterable[int], kind: str) -> None:
        """``settle`` each of ``positions`` (one lock for all)."""
        with self._lock:
            self._settled.update(dict.fromkeys(positions, kind))
            while self._open and self._open[0] in self._settled:
                done = self._settled.pop(heapq.heappop(self._open))
                if done == "indexed":
                    self.indexed += 1
                else:
                    self.dead_lettered += 1
            self._advance()

    def skip_to(self, position: int) -> None:
        """Positions up to ``position`` need nothing (another shard's, or blank)."""
        with self._lock:
            self._last_seen = max(self._last_seen, position)
            self._advance()

    def _advance(self) -> None:
        # With nothing open, everything seen so far is settled.
        self.value = self._open[0] - 1 if self._open else self._last_seen


class DeadLetters:
    """Append-only JSONL of records that will not be indexed: position, id, reason, and the
    original document (or raw line). Thread-safe; flushed and fsynced per write."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.count = 0
        self._lock = threading.Lock()

    def truncate_after(self, watermark: int) -> None:
        """Drop entries past ``watermark``: a resumed run will settle those records again."""
        if not self.path or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("position", 0) <= watermark:
                    kept.append(line)
            except ValueError:
                continue  # a torn last line from a crash
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        with self._lock:
            self.count += len(entries)
            if not self.path:
                return
            with open(self.path, "a", encoding="utf-8") as handle:
                for entry in entries:
                    handle.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
                handle.flush()
                os.fsync(handle.fileno())


def dead_letter_entry(
    position: int,
    doc_id: str | None,
    reason: str,
    *,
    status: int | None = None,
    field: str | None = None,
    document: Any = None,
    raw: str | None = None,
) -> dict[str, Any]:
    """One line of a dead-letter file: where the record was, its id (when it could be read),
    why it was refused, and the document or the raw input."""
    entry: dict[str, Any] = {"position": position, "id": doc_id, "reason": reason}
    if status is not None:
        entry["status"] = status
    if field is not None:
        entry["field"] = field
    if document is not None:
        entry["document"] = document
    if raw is not None:
        entry["raw"] = raw
    return entry


def default_dead_letter(name: str, beside: str | Path | None = None) -> Path:
    """Where refused records go when no dead-letter file is named: next to ``beside`` (the
    checkpoint: ``docs.ck`` -> ``docs.dead-letter.jsonl``), else ``<name>.dead-letter.jsonl`` in the
    working directory."""
    if beside:
        return Path(beside).with_suffix(".dead-letter.jsonl")
    return Path(f"{name}.dead-letter.jsonl")
