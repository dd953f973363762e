"""What the Ray and Spark integrations share: rows read as ``splade-es ingest`` reads
records, the job's ingestion config (one sender thread per worker, the index created once by
the driver), the window policy of ``long_documents``, the accounting (long documents
included), and the crash-once fault injection their tests use. Imports neither Ray nor Spark."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import defaults
from .connect import ConnectionConfig, connect
from .documents import parse_json_line
from .encoding.protocol import DocumentEncoder
from .encoding.windows import LONG_DOCUMENT_MODES, LongDocuments, WindowPolicy, WindowStats
from .exceptions import ConfigurationError, InputError
from .ingest import IngestConfig, IngestReport, Record
from .ingest.pipeline import ensure_index
from .ingest.stages import LongDocumentTally

log = logging.getLogger(__name__)


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
    sender per worker); creates the index from the driver when ``create`` is set (in the
    passages layout for ``long_documents`` passages), and refuses an index whose layout is
    not the job's before any worker starts."""
    job = IngestConfig(workers=1, **config)
    ensure_index(connect(client_config).client, job)
    return job


def window_policy(
    long_documents: LongDocuments | WindowPolicy | None = None,
    *,
    window: int | None = None,
    overlap: int | None = None,
    max_windows: int | None = None,
) -> WindowPolicy | None:
    """The ``WindowPolicy`` of the Ray and Spark ``long_documents`` arguments, as
    ``SpladeEncoder.from_pretrained`` takes them: a mode (or a policy) and the parts that
    replace its own. None when nothing is given: the encoder's own (truncate).

    What can be checked without the model is checked here, on the driver, before any worker
    starts (the mode, ``overlap`` >= 0, ``max_windows`` >= 1, ``window`` >= 2); the window
    against the model's max length is checked by each worker as its encoder loads.

    >>> window_policy("maxpool", window=128)
    WindowPolicy(mode='maxpool', window=128, overlap=None, max_windows=64, specials=0)
    >>> window_policy() is None
    True
    """
    if long_documents is None and window is None and overlap is None and max_windows is None:
        return None
    if isinstance(long_documents, WindowPolicy):
        policy = long_documents
    else:
        policy = WindowPolicy(long_documents or defaults.LONG_DOCUMENTS)
    policy = replace(
        policy,
        window=policy.window if window is None else window,
        overlap=policy.overlap if overlap is None else overlap,
        max_windows=policy.max_windows if max_windows is None else max_windows,
    )
    if policy.mode not in LONG_DOCUMENT_MODES:
        raise ConfigurationError.bad_value(
            "long_documents", policy.mode, f"must be one of {', '.join(LONG_DOCUMENT_MODES)}"
        )
    if policy.window is not None and policy.window < 2:
        raise ConfigurationError.bad_value("window", policy.window, "must be >= 2")
    if policy.overlap is not None and policy.overlap < 0:
        raise ConfigurationError.bad_value("overlap", policy.overlap, "must be >= 0")
    if policy.max_windows is not None and policy.max_windows < 1:
        raise ConfigurationError.bad_value("max_windows", policy.max_windows, "must be >= 1")
    return policy


def mode_of(policy: WindowPolicy | None) -> str:
    """The long-documents mode a job runs (None: the encoder's own, truncate)."""
    return defaults.LONG_DOCUMENTS if policy is None else policy.mode


class TalliedEncoder:
    """An encoder that also counts what its document batches say of long documents (the
    batches ``ingest`` streams through ``iter_encode`` / ``iter_passages``): documents that
    lost text and windows per document (``windows.counts``: windows -> documents, which
    merge exactly across workers). Everything else is the wrapped encoder's."""

    def __init__(self, encoder: DocumentEncoder) -> None:
        self.encoder = encoder
        self.tally = LongDocumentTally()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def iter_encode(self, texts: Iterable[str], **options: Any) -> Iterator[Any]:
        for batch in self.encoder.iter_encode(texts, **options):
            self.tally.add(batch.truncated, batch.windows)
            yield batch

    def iter_passages(self, texts: Iterable[str], **options: Any) -> Iterator[Any]:
        for batch in self.encoder.iter_passages(texts, **options):  # type: ignore[attr-defined]
            self.tally.add(batch.truncated, batch.windows)
            yield batch


def stats_row(worker: str, report: IngestReport, tally: LongDocumentTally) -> dict[str, Any]:
    """One call's accounting, as ``summarize`` folds it (the window counts as JSON)."""
    windows = tally.windows
    return {
        "worker": worker,
        "read": report.read,
        "indexed": report.indexed,
        "dead_lettered": report.dead_lettered,
        "truncated": tally.truncated,
        "over_one_window": windows.over_one_window,
        "hit_max_windows": windows.hit_max_windows,
        "windows": sum(k * n for k, n in windows.counts.items()),
        "window_counts": json.dumps({str(k): n for k, n in sorted(windows.counts.items())}),
    }


CRASH_ONCE_ENV = "SPLADE_ES_CRASH_ONCE"


@dataclass(frozen=True)
class WorkerCounts:
    read: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    truncated: int = 0  # documents that lost text: past the window, or past max_windows
    over_one_window: int = 0  # maxpool / passages: documents cut into several windows
    hit_max_windows: int = 0
    windows: int = 0  # maxpool / passages: windows encoded (0 when truncating)


COUNTED = (  # the WorkerCounts a stats row carries, summed over rows
    "read",
    "indexed",
    "dead_lettered",
    "truncated",
    "over_one_window",
    "hit_max_windows",
    "windows",
)


@dataclass(frozen=True)
class ScaleOutSummary:
    """Accounting per worker and in total; ``total.read == indexed + dead_lettered``.

    Long documents: ``long_documents`` is the mode the job ran; ``window_counts`` (windows
    per document -> documents, maxpool / passages) is merged from every worker's exact
    counts, so ``windows_mean`` and ``windows_p99`` are exact over the whole job, not
    averaged per worker."""

    workers: dict[str, WorkerCounts]
    total: WorkerCounts
    dead_letters: tuple[dict[str, Any], ...] = field(repr=False, default=())
    long_documents: str = defaults.LONG_DOCUMENTS
    window_counts: Mapping[int, int] = field(repr=False, default_factory=dict)

    @property
    def window_stats(self) -> WindowStats:
        """The job's windows per document (empty when truncating)."""
        counts = dict(self.window_counts)
        return WindowStats(
            documents=sum(counts.values()),
            over_one_window=sum(n for k, n in counts.items() if k > 1),
            hit_max_windows=self.total.hit_max_windows,
            counts=counts,
        )

    @property
    def windows_mean(self) -> float:
        return round(self.window_stats.mean, 3)

    @property
    def windows_p99(self) -> int:
        return self.window_stats.percentile(99)

    def long_document_summary(self) -> str:
        """One line on long documents, as ``IngestReport.long_document_summary`` says it."""
        total = self.total
        if self.long_documents == "truncate":
            return f"{total.truncated:,} truncated at the window"
        return (
            f"{self.long_documents}: {total.over_one_window:,} of {self.window_stats.documents:,} "
            f"longer than one window; windows per document mean {self.windows_mean:.2f}, p99 "
            f"{self.windows_p99}; {total.hit_max_windows:,} cut at max_windows"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": {k: asdict(v) for k, v in self.workers.items()},
            "total": asdict(self.total),
            "dead_lettered": len(self.dead_letters),
            "long_documents": self.long_documents,
            "windows_mean": self.windows_mean,
            "windows_p99": self.windows_p99,
        }


def warn_if_truncated(summary: ScaleOutSummary) -> None:
    """A job that dropped text says so, with the count over every worker, at its end."""
    truncated = summary.total.truncated
    if not truncated:
        return
    if summary.long_documents == "truncate":
        log.warning(
            "%d documents lost their text past the model's window (long_documents truncate): "
            "maxpool or passages encode all of it",
            truncated,
        )
    else:
        log.warning("%d documents lost their text past max_windows", truncated)


def merge_window_counts(
    into: dict[int, int], counts: Mapping[int, int] | Mapping[str, int]
) -> dict[int, int]:
    """``into`` plus ``counts`` (windows -> documents; JSON keys are strings). Pure on
    ``counts``; returns ``into``."""
    for windows, documents in counts.items():
        into[int(windows)] = into.get(int(windows), 0) + int(documents)
    return into


def summarize(
    rows: Sequence[dict[str, Any]], *, long_documents: str = defaults.LONG_DOCUMENTS
) -> ScaleOutSummary:
    """Fold per-batch stats rows (``stats_row``: worker, read, indexed, dead_lettered, the
    long-document counts, dead_letters) into a summary. Pure; shared by the Ray and Spark
    integrations."""
    per_worker: dict[str, dict[str, int]] = {}
    dead: list[dict[str, Any]] = []
    window_counts: dict[int, int] = {}
    for row in rows:
        counts = per_worker.setdefault(str(row["worker"]), dict.fromkeys((*COUNTED, "batches"), 0))
        for key in COUNTED:
            counts[key] += int(row.get(key) or 0)
        counts["batches"] += 1
        dead.extend(json.loads(row.get("dead_letters") or "[]"))
        merge_window_counts(window_counts, json.loads(row.get("window_counts") or "{}"))
    workers = {name: WorkerCounts(**c) for name, c in sorted(per_worker.items())}
    total = WorkerCounts(
        **{key: sum(getattr(c, key) for c in workers.values()) for key in (*COUNTED, "batches")}
    )
    return ScaleOutSummary(workers, total, tuple(dead), long_documents, window_counts)


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
