"""A migration's state file: what a killed migration resumes from.

It records how far the copy got, the catch-up watermarks (per shard, the last pass's global
checkpoints) and whether this run holds a write block on the source. Every change is saved
at once, atomically (written aside, then renamed over), so a kill at any moment leaves the
previous or the next state, never half of one.

Versions: 0 (no ``version`` key, before the state was typed) and 1 hold the same fields;
a file of a newer version is refused rather than misread.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..exceptions import ConfigurationError
from .sync import Watermarks, decode_watermarks, encode_watermarks

STATE_VERSION = 1
"""The version this code writes (and the newest it reads)."""

Phase = Literal["copying", "copied"]
PHASES: tuple[Phase, ...] = ("copying", "copied")


@dataclass(frozen=True, kw_only=True)
class MigrationState:
    """Where a migration of ``source`` into ``target`` stands. ``phase``: None before the
    target is created (or when an earlier run's state file was lost), ``copying`` while the
    bulk copy runs, ``copied`` once it finished (with its counts)."""

    source: str
    target: str
    version: int = STATE_VERSION
    phase: Phase | None = None
    indexed: int = 0
    dead_lettered: int = 0
    skipped_existing: int = 0
    # Per shard, the global checkpoint the next catch-up pass copies from (None: not taken).
    watermarks: Watermarks | None = field(default=None)
    write_block: bool = False  # this run blocked writes to the source and has not lifted it

    def with_changes(self, **changes: Any) -> MigrationState:
        """A copy with ``changes``, in the version this code writes."""
        return replace(self, version=STATE_VERSION, **changes)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version,
            "source": self.source,
            "target": self.target,
            "phase": self.phase,
            "indexed": self.indexed,
            "dead_lettered": self.dead_lettered,
            "skipped_existing": self.skipped_existing,
            "write_block": self.write_block,
        }
        if self.watermarks is not None:
            data["watermarks"] = encode_watermarks(self.watermarks)
        return data

    @classmethod
    def from_json(cls, data: Any, *, path: str | Path = "the state") -> MigrationState:
        """The state ``data`` (a decoded state file of any version up to ``STATE_VERSION``)
        holds; ``ConfigurationError`` naming ``path`` for a newer version or a bad field."""
        if not isinstance(data, dict):
            raise _corrupt(path, "not a JSON object")
        version = _field(data, "version", int, path, default=0)
        if version > STATE_VERSION:
            raise ConfigurationError(
                f"{path}: migration state version {version} is newer than this splade-es "
                f"reads (up to {STATE_VERSION}); upgrade splade-es to resume this migration"
            )
        phase = data.get("phase")
        if phase is not None and phase not in PHASES:
            raise _corrupt(path, f"unknown phase {phase!r}")
        watermarks = data.get("watermarks")
        return cls(
            source=_field(data, "source", str, path),
            target=_field(data, "target", str, path),
            version=version,
            phase=phase,
            indexed=_field(data, "indexed", int, path, default=0),
            dead_lettered=_field(data, "dead_lettered", int, path, default=0),
            skipped_existing=_field(data, "skipped_existing", int, path, default=0),
            watermarks=None if watermarks is None else _watermarks(watermarks, path),
            write_block=_field(data, "write_block", bool, path, default=False),
        )

    @classmethod
    def load(cls, path: str | Path) -> MigrationState:
        """The state saved in ``path``; ``ConfigurationError`` naming it if it cannot be read
        as one."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(path, str(exc)) from exc
        return cls.from_json(data, path=path)

    def save(self, path: str | Path) -> None:
        """Write the state to ``path`` atomically (aside, then renamed over it)."""
        path = Path(path)
        aside = path.with_name(path.name + ".tmp")
        aside.write_text(json.dumps(self.to_json()), encoding="utf-8")
        os.replace(aside, path)


class StateFile:
    """A migration's current state and the file it is kept in (none: kept in memory only).
    ``update`` is the one way the state changes, and saves each change at once."""

    def __init__(self, path: str | Path | None, state: MigrationState) -> None:
        self.path = Path(path) if path else None
        self.state = state

    @classmethod
    def open(cls, path: str | Path | None, *, source: str, target: str) -> StateFile:
        """The state saved in ``path`` (a new one if there is no file yet);
        ``ConfigurationError`` if it belongs to another migration."""
        if not path or not Path(path).exists():
            return cls(path, MigrationState(source=source, target=target))
        state = MigrationState.load(path)
        if (state.source, state.target) != (source, target):
            raise ConfigurationError(f"{path} belongs to another migration")
        return cls(path, state)

    def update(self, **changes: Any) -> MigrationState:
        self.state = self.state.with_changes(**changes)
        self._save()
        return self.state

    def restart(self, **fields: Any) -> MigrationState:
        """Forget everything but source and target (a new target: nothing of it is known)."""
        self.state = MigrationState(source=self.state.source, target=self.state.target, **fields)
        self._save()
        return self.state

    def _save(self) -> None:
        if self.path is not None:
            self.state.save(self.path)


_REQUIRED: Any = object()


def _field(
    data: dict[str, Any], name: str, kind: type, path: str | Path, default: Any = _REQUIRED
) -> Any:
    """``data[name]`` if it is a ``kind`` (``default`` when absent, unless required)."""
    if name not in data and default is not _REQUIRED:
        return default
    value = data.get(name)
    # bool is an int in Python; a count or version of true/false is not one.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _corrupt(path, f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def _watermarks(data: Any, path: str | Path) -> Watermarks:
    try:
        return decode_watermarks(data)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _corrupt(path, f"watermarks {data!r} are not shard -> checkpoint") from exc


def _corrupt(path: str | Path, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"{path} is not a readable migration state file ({why}); move it away to start the "
        "migration afresh (a created target is resumed: what it holds is skipped)"
    )
