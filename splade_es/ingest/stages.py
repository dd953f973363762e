"""The stages ``ingest`` composes, each a small function or class testable alone.

In the order a record meets them::

    BreakableInput ─► until ─► records_to_index ─► prepared_records ─► encoded_windows
      read once        stop      resumed / shard     text and id          encoder windows
                                 skipped             (bad: refused)
    ─► window_actions ─► chunk_actions ─► SenderPool ─► IndexChunk ─► JobLedger.settle
       serialized once    bulk-sized       bounded queue  send_bulk     dead letters, watermark,
                                           + threads                    checkpoint, counts

``JobLedger`` is where each record's fate is written down (counts, watermark, checkpoint,
dead letters); every stage that decides a fate tells it.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from .. import defaults
from ..connect import call
from ..encoding.windows import WindowStats
from ..exceptions import InputError, InputStreamError
from ..retry import RetryPolicy
from ..sparse import PassageBatch, SparseBatch
from ..tokens import TokenCodec
from .bulk import Action, BulkOutcome, send_bulk, vector_action
from .checkpoint import Checkpoint, CheckpointState, DeadLetters, Watermark, dead_letter_entry
from .sources import Prepared, Record, in_shard, records_of
from .vector_json import VectorJson

if TYPE_CHECKING:
    from ..encoding.protocol import DocumentEncoder, EmptyPolicy, PassageEncoder
    from ..encoding.windows import WindowPolicy
    from .pipeline import IngestConfig

ProgressCallback = Callable[[str, int], None]  # (stage, count): read/encoded/indexed/failed
STAGES = ("read", "encoded", "indexed", "failed")
POLL_SECONDS = 0.2  # how often a blocked put looks whether the senders stopped
T = TypeVar("T")


class Counters:
    """This run's counts, thread-safe; the ``STAGES`` ones are also passed to ``progress``."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self._lock = threading.Lock()
        self._progress = progress
        self.values = dict.fromkeys((*STAGES, "retried", "skipped_done", "other_shards"), 0)

    def add(self, name: str, n: int = 1) -> None:
        if not n:
            return
        with self._lock:
            self.values[name] += n
        if self._progress and name in STAGES:
            self._progress(name, n)


class JobLedger:
    """Where each record's fate is written down: the run's counts, the watermark (and the
    checkpoint file that keeps it), and the dead-letter file. A resumed job starts from its
    checkpoint; dead letters past that checkpoint are dropped, since they will be redone."""

    def __init__(self, config: IngestConfig, progress: ProgressCallback | None = None) -> None:
        shard = f"{config.shard[0]}/{config.shard[1]}"
        self.job = CheckpointState(config.input_name, config.index, shard, 0, 0, 0)
        self.checkpoint = Checkpoint(config.checkpoint) if config.checkpoint else None
        self.resumed = self.checkpoint.resume_from(self.job) if self.checkpoint else self.job
        self.dead_letters = DeadLetters(config.dead_letter)
        self.dead_letters.truncate_after(self.resumed.watermark)
        self.watermark = Watermark(
            self.resumed.watermark,
            indexed=self.resumed.indexed,
            dead_lettered=self.resumed.dead_lettered,
        )
        self.counters = Counters(progress)
        self.sparse_field = config.sparse_field
        self._save_lock = threading.Lock()

    @property
    def resumed_from(self) -> int:
        """The watermark of the run this one resumes (0: a fresh job)."""
        return self.resumed.watermark

    def refuse(self, record: Record, exc: InputError) -> None:
        """A record that cannot be indexed as read: dead-lettered, settled, counted."""
        self.dead_letters.write([refused_entry(record, exc)])
        self.watermark.settle(record.position, "dead_lettered")
        self.counters.add("failed")

    def settle(self, outcome: BulkOutcome) -> None:
        """A chunk's outcome: what the cluster refused dead-lettered (without its vector),
        every action settled and counted, then the checkpoint saved."""
        self.dead_letters.write(
            [
                dead_letter_entry(
                    f.action.position,
                    f.action.doc_id,
                    f.reason,
                    status=f.status,
                    document=_without(f.action.fields, self.sparse_field),
                )
                for f in outcome.failed
            ]
        )
        self.watermark.settle_all((a.position for a in outcome.indexed), "indexed")
        self.watermark.settle_all((f.action.position for f in outcome.failed), "dead_lettered")
        self.counters.add("indexed", len(outcome.indexed))
        self.counters.add("failed", len(outcome.failed))
        self.counters.add("retried", outcome.retried_items)
        self.save()

    def save(self) -> None:
        """Checkpoint the watermark (no-op without a checkpoint file)."""
        if not self.checkpoint:
            return
        with self._save_lock:
            w = self.watermark
            self.checkpoint.save(
                CheckpointState(
                    self.job.input,
                    self.job.index,
                    self.job.shard,
                    w.value,
                    w.indexed,
                    w.dead_lettered,
                )
            )


class BreakableInput:
    """The input's records until it ends, or until it breaks (a truncated compressed file):
    the break is kept rather than raised, so that what was read before still gets encoded,
    sent and checkpointed; ``raise_if_broken`` raises it after that."""

    def __init__(self, documents: Iterable[dict[str, Any] | Record]) -> None:
        self.documents = documents
        self.error: InputStreamError | None = None

    def __iter__(self) -> Iterator[Record]:
        try:
            yield from records_of(self.documents)
        except InputStreamError as exc:
            self.error = exc

    def raise_if_broken(self, counts: dict[str, int]) -> None:
        if self.error is None:
            return
        raise InputStreamError(
            f"{self.error} Stopped there: of the {counts['read']:,} records read before, "
            f"{counts['indexed']:,} were indexed and {counts['failed']:,} dead-lettered",
            position=self.error.position,
        ) from self.error


def until(records: Iterable[Record], stopped: Callable[[], bool]) -> Iterator[Record]:
    """``records`` while ``stopped()`` is false: a failed sender stops the reading."""
    for record in records:
        if stopped():
            return
        yield record


def records_to_index(
    records: Iterable[Record], ledger: JobLedger, shard: tuple[int, int]
) -> Iterator[Record]:
    """The records this run indexes: those an earlier run settled (at or before the resumed
    watermark) and other shards' are counted and passed over; the rest are registered."""
    for record in records:
        position = record.position
        if position <= ledger.resumed_from:
            ledger.counters.add("skipped_done")
        elif not in_shard(position, shard):
            ledger.counters.add("other_shards")
            ledger.watermark.skip_to(position)
        else:
            ledger.counters.add("read")
            ledger.watermark.register(position)
            yield record


def prepared_records(
    records: Iterable[Record],
    prepare_record: Callable[[Record], Prepared],
    refuse: Callable[[Record, InputError], None],
) -> Iterator[Prepared]:
    """Id, text and stored fields of each record (``prepare_record``: ``sources.prepare``
    with the job's fields); a record that has none (unreadable, no id, no text) goes to
    ``refuse``."""
    for record in records:
        try:
            prepared = prepare_record(record)
        except InputError as exc:
            refuse(record, exc)
            continue
        yield prepared


def refused_entry(record: Record, exc: InputError) -> dict[str, Any]:
    """The dead letter of a record refused as read: why, and the record as it came."""
    return dead_letter_entry(
        record.position,
        exc.doc_id,
        str(exc),
        field=exc.field,
        document=record.doc,
        raw=record.raw,
    )


def encoded_windows(
    prepared: Iterable[Prepared],
    encoder: DocumentEncoder,
    *,
    batch_size: int,
    empty: EmptyPolicy = "empty_vector",
    long_documents: WindowPolicy | None = None,
) -> Iterator[tuple[list[Prepared], SparseBatch]]:
    """Each window the encoder streams, with the records its rows are the vectors of. An
    empty text gets an empty vector by default (the document is still indexed).
    ``long_documents``: truncate or maxpool (None: the encoder's own)."""
    options: dict[str, Any] = {"batch_size": batch_size, "empty": empty}
    if long_documents is not None:  # test doubles and remote encoders may not take it
        options["long_documents"] = long_documents
    return _paired(prepared, partial(encoder.iter_encode, **options))


def encoded_passages(
    prepared: Iterable[Prepared],
    encoder: PassageEncoder,
    *,
    batch_size: int,
    policy: WindowPolicy,
    empty: EmptyPolicy = "empty_vector",
) -> Iterator[tuple[list[Prepared], PassageBatch]]:
    """``encoded_windows`` for the passages layout: each record's passages (one vector per
    window of its text, ``policy``'s windows). An empty text gets no passage (the document
    is still indexed, with an empty list)."""
    stream = partial(encoder.iter_passages, batch_size=batch_size, empty=empty, policy=policy)
    return _paired(prepared, stream)


Batch = TypeVar("Batch", SparseBatch, PassageBatch)


def _paired(
    prepared: Iterable[Prepared], stream: Callable[[Iterable[str]], Iterable[Batch]]
) -> Iterator[tuple[list[Prepared], Batch]]:
    """The batches ``stream`` makes of the records' texts, each with its records (a batch
    has one entry per text, in order)."""
    pending: deque[Prepared] = deque()

    def texts() -> Iterator[str]:
        for record in prepared:
            pending.append(record)
            yield record.text

    for batch in stream(texts()):
        yield [pending.popleft() for _ in range(len(batch))], batch


class _Raised:
    """An exception the thread making items raised: the consumer raises it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def made_ahead(items: Iterable[T], *, name: str) -> Iterator[T]:
    """``items``, each made in a thread of its own one step ahead: while the consumer works
    on one item, the next is being made (the encoder runs while the window before is turned
    into bulk actions). One item at most waits, made, for the consumer. What the thread
    raises is raised here; closing this generator stops the thread once the item it is
    making is done, and closes ``items`` there."""
    made: queue.SimpleQueue[object] = queue.SimpleQueue()
    turn = threading.Semaphore(1)  # the item being made: the next waits for a take
    stop = threading.Event()

    def make() -> None:
        source = iter(items)
        try:
            while turn.acquire() and not stop.is_set():
                item = next(source, _END)
                made.put(item)
                if item is _END:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            made.put(_Raised(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=make, name=name, daemon=True)
    thread.start()
    try:
        while (item := made.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            turn.release()
            yield cast(T, item)
    finally:
        stop.set()
        turn.release()
        thread.join()


def window_actions(
    windows: Iterable[tuple[list[Prepared], SparseBatch]],
    codec: TokenCodec,
    *,
    sparse_field: str,
    encoded: Callable[[int], None],
    tally: LongDocumentTally | None = None,
) -> Iterator[Action]:
    """The bulk action of each encoded record (its stored fields plus its vector, keyed as
    the index wants); ``encoded`` is told each window's size once its actions are out,
    ``tally`` what each window says of long documents."""
    vectors = VectorJson(codec)
    for records, window in windows:
        texts = vectors.rows(window)  # the whole window's JSON at once, in NumPy
        for row, record in enumerate(records):
            vector = (texts[row], partial(codec.encode, window, row))
            yield vector_action(record.position, record.doc_id, record.source, sparse_field, vector)
        if tally is not None:
            tally.add(window.truncated, window.windows)
        encoded(len(records))


def passage_actions(
    batches: Iterable[tuple[list[Prepared], PassageBatch]],
    codec: TokenCodec,
    *,
    sparse_field: str,
    encoded: Callable[[int], None],
    tally: LongDocumentTally | None = None,
) -> Iterator[Action]:
    """``window_actions`` for passages: the sparse field holds the record's passages, one
    object each (``defaults.PASSAGE_*``: the vector and its character span), in text order."""
    vectors = VectorJson(codec)
    for records, batch in batches:
        texts = vectors.rows(batch.passages)
        for d, record in enumerate(records):
            rows = batch.passage_range(d)
            value = (
                _passages_json([texts[p] for p in rows], batch.spans[rows.start : rows.stop]),
                partial(passages_value, codec, batch, rows),
            )
            yield vector_action(record.position, record.doc_id, record.source, sparse_field, value)
        if tally is not None:
            tally.add(batch.truncated, batch.windows)
        encoded(len(records))


_PASSAGE_PARTS = (
    b'{"%s":' % defaults.PASSAGE_VECTOR.encode(),
    b',"%s":%%d,"%s":%%d}' % (defaults.PASSAGE_START.encode(), defaults.PASSAGE_END.encode()),
)


def _passages_json(vectors: list[bytes], spans: np.ndarray) -> bytes:
    """The JSON ``to_json`` writes for ``_passages_value``'s list, from the vectors' JSON."""
    head, tail = _PASSAGE_PARTS
    items = [
        head + vector + tail % (start, end)
        for vector, (start, end) in zip(vectors, spans.tolist(), strict=True)
    ]
    return b"[" + b",".join(items) + b"]"


def passages_value(codec: TokenCodec, batch: PassageBatch, rows: range) -> list[dict[str, Any]]:
    """Passages ``rows`` of ``batch`` as the index stores them (``defaults.PASSAGE_*``)."""
    return [
        {
            defaults.PASSAGE_VECTOR: codec.encode(batch.passages, p),
            defaults.PASSAGE_START: int(batch.spans[p, 0]),
            defaults.PASSAGE_END: int(batch.spans[p, 1]),
        }
        for p in rows
    ]


class LongDocumentTally:
    """What a run's windows say of long documents: how many documents lost text (past the
    window when truncating, past ``max_windows`` otherwise) and, where documents are cut
    into windows, windows per document (``WindowStats``)."""

    def __init__(self) -> None:
        self.truncated = 0
        self.windows = WindowStats()

    def add(self, truncated: np.ndarray | None, windows: np.ndarray | None) -> None:
        if truncated is not None:
            self.truncated += int(np.count_nonzero(truncated))
        if windows is not None:
            dropped = truncated if truncated is not None else np.zeros(len(windows), bool)
            self.windows.add(windows, dropped)


@dataclass(frozen=True)
class IndexChunk:
    """Sends one chunk (retried as ``policy`` says) and writes its outcome in the ledger;
    what stops the whole job (credentials, a missing index) is raised as our error."""

    client: Any
    index: str
    policy: RetryPolicy
    ledger: JobLedger

    def __call__(self, chunk: list[Action]) -> None:
        outcome: BulkOutcome = call(
            lambda: send_bulk(self.client, self.index, chunk, policy=self.policy),
            f"bulk indexing into {self.index}",
        )
        self.ledger.settle(outcome)


class SenderPool:
    """``workers`` threads, each handing chunks from a bounded queue to ``send``. The bound
    is the backpressure: when the senders fall behind, ``put`` blocks, and the reader stops
    pulling records. The first failure of any sender stops them all (``failure``)."""

    def __init__(self, send: Callable[[list[Action]], None], *, workers: int) -> None:
        self._send = send
        self._chunks: queue.Queue[list[Action] | None] = queue.Queue(maxsize=workers * 2)
        self._stop = threading.Event()
        self._failures: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run, name=f"splade-bulk-{i}", daemon=True)
            for i in range(workers)
        ]

    def __enter__(self) -> SenderPool:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def failure(self) -> BaseException | None:
        """The first exception a sender raised (None: none did)."""
        return self._failures[0] if self._failures else None

    def stopped(self) -> bool:
        return self._stop.is_set()

    def put(self, chunk: list[Action]) -> bool:
        """Queue ``chunk``, waiting for room; False (not queued) once the senders stopped."""
        while not self.stopped():
            try:
                self._chunks.put(chunk, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Let the senders finish what is queued (dropped if they stopped), then join them."""
        for _ in self._threads:
            while True:
                try:
                    self._chunks.put(None, timeout=POLL_SECONDS)
                    break
                except queue.Full:
                    if self.stopped():
                        _drain(self._chunks)
        for thread in self._threads:
            thread.join()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        while True:
            chunk = self._chunks.get()
            if chunk is None or self.stopped():
                return
            try:
                self._send(chunk)
            except BaseException as exc:  # any sender failure stops the job, reported by ingest
                self._failures.append(exc)
                self._stop.set()
                return


def _without(source: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k != field}


def _drain(chunks: queue.Queue[list[Action] | None]) -> None:
    try:
        while True:
            chunks.get_nowait()
    except queue.Empty:
        pass
