"""What the Ray and Spark integrations share: rows read as ``splade-es ingest`` reads
records, the job's ingestion config (one sender thread per worker, the index created once by
the driver), the accounting, and the crash-once fault injection their tests use. Imports
neither Ray nor Spark."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .connect import ConnectionConfig, connect
from .documents import parse_json_line
from .exceptions import InputError
from .ingest import IngestConfig, Record
from .ingest.pipeline import ensure_index


def row_records(
    rows: Iterable[dict[str, Any]],
    *,
    json_field: str | None = None,
    unit: str = "row",
    start: int = 1,
) -> Iterator[Record]:
    """The records of a batch of dataset rows, numbered from ``start`` as ``unit``
    (``"partition 3 row"``: a position only means something within what the engine hands
    one call).

    ``json_field``: each row holds one JSON document as text in that field (a JSONL line, as
    ``spark.read.text`` and ``ray.data.read_text`` give), read exactly as ``splade-es ingest``
    reads a line: blank ones skipped, a number stays a number. Without it, a row's fields are
    the document (``plain_row``): a typed dataset cannot hold what a JSONL line can (Spark's
    and Arrow's JSON readers turn a number in a text column into a string, or refuse it), so
    the JSON route is the one that refuses exactly what ingest refuses.
    """
    for position, row in enumerate(rows, start=start):
        if json_field is None:
            yield Record(position, plain_row(row), unit=unit)
            continue
        line = row.get(json_field)
        if isinstance(line, str) and not line.strip():
            continue
        try:
            if not isinstance(line, str):
                raise InputError(
                    f"{unit} {position}: field {json_field!r} is "
                    f"{type(line).__name__}, expected a JSON text",
                    position=position,
                    field=json_field,
                )
            yield Record(
                position, parse_json_line(line.encode("utf-8"), position, unit=unit), unit=unit
            )
        except InputError as exc:
            yield Record(position, None, str(exc), None if line is None else str(line), unit=unit)


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset row as the document it stands for: NumPy scalars and arrays (from pandas)
    as Python values, and null fields left out (a typed dataset writes null where a record
    had no such field, and pandas writes NaN)."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item() if getattr(value, "ndim", 0) == 0 else value.tolist()
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = value
    return out


def prepare_job(client_config: ConnectionConfig, **config: Any) -> IngestConfig:
    """The ``IngestConfig`` every worker runs (parallelism comes from the engine, so one bulk
    sender per worker); creates the index from the driver when ``create`` is set."""
    job = IngestConfig(workers=1, **config)
    ensure_index(connect(client_config).client, job)
    return job


CRASH_ONCE_ENV = "SPLADE_ES_CRASH_ONCE"


@dataclass(frozen=True)
class WorkerCounts:
    read: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    batches: int = 0


@dataclass(frozen=True)
class ScaleOutSummary:
    """Accounting per worker and in total; ``total.read == indexed + dead_lettered``."""

    workers: dict[str, WorkerCounts]
    total: WorkerCounts
    dead_letters: tuple[dict[str, Any], ...] = field(repr=False, default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": {k: asdict(v) for k, v in self.workers.items()},
            "total": asdict(self.total),
            "dead_lettered": len(self.dead_letters),
        }


def summarize(rows: Sequence[dict[str, Any]]) -> ScaleOutSummary:
    """Fold per-batch stats rows (worker, read, indexed, dead_lettered, dead_letters) into a
    summary. Pure; shared by the Ray and Spark integrations."""
    per_worker: dict[str, dict[str, int]] = {}
    dead: list[dict[str, Any]] = []
    for row in rows:
        counts = per_worker.setdefault(
            str(row["worker"]), {"read": 0, "indexed": 0, "dead_lettered": 0, "batches": 0}
        )
        for key in ("read", "indexed", "dead_lettered"):
            counts[key] += int(row[key])
        counts["batches"] += 1
        dead.extend(json.loads(row.get("dead_letters") or "[]"))
    workers = {name: WorkerCounts(**c) for name, c in sorted(per_worker.items())}
    total = WorkerCounts(
        read=sum(c.read for c in workers.values()),
        indexed=sum(c.indexed for c in workers.values()),
        dead_lettered=sum(c.dead_lettered for c in workers.values()),
        batches=sum(c.batches for c in workers.values()),
    )
    return ScaleOutSummary(workers, total, tuple(dead))


def crash_marker() -> str | None:
    """The fault-injection marker named by ``SPLADE_ES_CRASH_ONCE`` on the driver, if any."""
    return os.environ.get(CRASH_ONCE_ENV) or None


def crash_once_if_asked(client: Any, marker: str | None) -> None:
    """Fault injection for tests of the engines' retries: when ``marker`` (a file path, from
    ``SPLADE_ES_CRASH_ONCE`` on the driver) does not exist yet, the first worker to get here
    creates it and then dies right after its next bulk request (documents sent, no answer,
    no cleanup), as a crashed machine would. Without a marker this does nothing."""
    if not marker:
        return
    try:
        with open(marker, "x") as handle:  # atomic: only one worker wins
            handle.write(str(os.getpid()))
    except FileExistsError:
        return
    original = client.bulk

    def bulk_then_die(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        os._exit(17)

    client.bulk = bulk_then_die
