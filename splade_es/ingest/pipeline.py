"""The ingestion pipeline: read -> encode -> bulk senders, with bounded queues between.

::

    records ──► prepare ──► encoder.iter_encode ──► chunker ──► [queue] ──► N bulk senders
      (main thread; tokenization in its own thread)             bounded      (threads)
                  │ bad input                                                    │
                  └──────────────► dead letters ◄──── permanent item errors ◄────┘
                                   watermark + checkpoint ◄── settled positions

Encoding of the next window overlaps the indexing of earlier chunks; when the senders fall
behind, the bounded queue blocks the encoder, which stops pulling records (backpressure), so
memory stays bounded whatever the input size.

>>> report = ingest_file(client, "corpus.jsonl", encoder=encoder,          # doctest: +SKIP
...                      config=IngestConfig(index="docs", create=True))
>>> report.indexed + report.dead_lettered == report.read                  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..connect import call, client_of
from ..engines import Dialect, FieldType, dialect_of
from ..exceptions import ConfigurationError, InputError, InputStreamError
from ..query import field_type_of
from ..search import create_index
from ..tokens import TokenCodec
from .bulk import Action, ActionChunker, RetryPolicy, make_action, send_bulk
from .checkpoint import Checkpoint, CheckpointState, DeadLetters, Watermark, dead_letter_entry
from .inputs import InputFile
from .sources import Format, Record, in_shard, prepare, read_source, records_of

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int], None]  # (stage, count): read/encoded/indexed/failed
STAGES = ("read", "encoded", "indexed", "failed")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """What to index where, and how hard to push. See ``splade-es ingest --help``."""

    index: str
    id_field: str | None = "_id"  # None: a content hash of the document
    text_fields: tuple[str, ...] = ("title", "text")
    keep_fields: tuple[str, ...] | None = None  # None: every field of the document
    sparse_field: str = "splade"
    batch_size: int = 32
    bulk_docs: int = 500
    bulk_bytes: int = 8 * 1024 * 1024
    workers: int = 2
    checkpoint: str | None = None
    # JSONL of refused records. None keeps none (a warning says how many); the CLI always
    # names one (``checkpoint.default_dead_letter``).
    dead_letter: str | None = None
    shard: tuple[int, int] = (0, 1)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    create: bool = False
    field_type: FieldType = "rank_features"  # used with create=True
    input_name: str = "<iterable>"  # identifies the input in the checkpoint
    add_id_field: bool = True  # store the id in an ``id`` field when the document has none

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_size < 1 or self.bulk_docs < 1 or self.bulk_bytes < 1:
            raise ConfigurationError("workers, batch size and bulk limits must be >= 1")
        if not self.text_fields:
            raise ConfigurationError("no text fields given")


@dataclass(frozen=True)
class IngestReport:
    """Counts of this run; ``read == indexed + dead_lettered`` when it completes."""

    read: int
    encoded: int
    indexed: int
    dead_lettered: int
    retried_items: int
    skipped_done: int  # settled by an earlier run (resume)
    other_shards: int
    resumed_from: int  # the checkpoint watermark this run started after (0: fresh)
    total_indexed: int  # over all runs of this job, from the checkpoint
    total_dead_lettered: int
    seconds: float
    index: str
    dead_letter: str | None = None  # the file refused records went to (None: not kept)

    @property
    def docs_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_second": round(self.docs_per_second, 2)}


class _Counters:
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


def ingest_file(
    client: Any,
    path: str | Path,
    *,
    encoder: Any,
    config: IngestConfig,
    fmt: Format | None = None,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """``ingest`` over a JSONL / CSV / Parquet file (compressed ones too), a stream (``-``,
    ``/dev/stdin``, a FIFO) or a BEIR folder."""
    source = check_resumable(path, config)
    if config.input_name == "<iterable>":
        name = source.name if source.is_stdin else str(Path(path).resolve())
        config = replace(config, input_name=name)
    return ingest(client, read_source(path, fmt), encoder=encoder, config=config, progress=progress)


def check_resumable(path: str | Path, config: IngestConfig) -> InputFile:
    """``path`` as an input; a checkpoint asked for on a stream is refused here, at start,
    since resuming re-reads the input from its start and a pipe's records are gone by then."""
    source = InputFile(str(path))
    if config.checkpoint and not (source.rereadable or Path(path).is_dir()):
        raise ConfigurationError(
            f"a checkpoint (--checkpoint) needs an input that can be read again to resume, and "
            f"{source.name} is a stream (a pipe, FIFO or standard input): save it to a file "
            "first (compressed is fine: .gz, .zst, .bz2, .xz are read as they are)"
        )
    return source


def ingest(
    client: Any,
    documents: Iterable[dict[str, Any] | Record],
    *,
    encoder: Any,
    config: IngestConfig,
    progress: ProgressCallback | None = None,
) -> IngestReport:
    """Encode and index ``documents`` (dicts or ``Record``s) into ``config.index``.

    Retries what the cluster pushes back on, dead-letters what it refuses and every bad
    input record, and (with ``config.checkpoint``) resumes after a crash without gaps or
    duplicates. Raises only for problems that stop the whole job (unreachable cluster,
    bad credentials, missing index). ``client``: an Elasticsearch or OpenSearch client, or a
    ``Cluster`` from ``connect``.
    """
    client = client_of(client)
    started = time.perf_counter()
    codec = _prepare_index(client, encoder, config)
    shard = f"{config.shard[0]}/{config.shard[1]}"
    fresh = CheckpointState(config.input_name, config.index, shard, 0, 0, 0)
    checkpoint = Checkpoint(config.checkpoint) if config.checkpoint else None
    state = checkpoint.resume_from(fresh) if checkpoint else fresh
    dead_letters = DeadLetters(config.dead_letter)
    dead_letters.truncate_after(state.watermark)
    watermark = Watermark(state.watermark, indexed=state.indexed, dead_lettered=state.dead_lettered)
    counters = _Counters(progress)
    save_lock = threading.Lock()

    def save_checkpoint() -> None:
        if checkpoint:
            with save_lock:
                checkpoint.save(
                    CheckpointState(
                        config.input_name,
                        config.index,
                        shard,
                        watermark.value,
                        watermark.indexed,
                        watermark.dead_lettered,
                    )
                )

    chunks: queue.Queue[list[Action] | None] = queue.Queue(maxsize=config.workers * 2)
    failure: list[BaseException] = []
    stop = threading.Event()

    def sender() -> None:
        while True:
            chunk = chunks.get()
            if chunk is None or stop.is_set():
                return
            try:
                outcome = call(
                    lambda chunk=chunk: send_bulk(client, config.index, chunk, policy=config.retry),
                    f"bulk indexing into {config.index}",
                )
                dead_letters.write(
                    [
                        dead_letter_entry(
                            f.action.position,
                            f.action.doc_id,
                            f.reason,
                            status=f.status,
                            document=_without(f.action.source, config.sparse_field),
                        )
                        for f in outcome.failed
                    ]
                )
                for action in outcome.indexed:
                    watermark.settle(action.position, "indexed")
                for failed in outcome.failed:
                    watermark.settle(failed.action.position, "dead_lettered")
                counters.add("indexed", len(outcome.indexed))
                counters.add("failed", len(outcome.failed))
                counters.add("retried", outcome.retried_items)
                save_checkpoint()
            except BaseException as exc:  # any sender failure stops the job, reported below
                failure.append(exc)
                stop.set()
                return

    threads = [
        threading.Thread(target=sender, name=f"splade-bulk-{i}", daemon=True)
        for i in range(config.workers)
    ]
    for thread in threads:
        thread.start()

    pending: deque = deque()
    broken_input: list[InputStreamError] = []

    def readable_records() -> Iterator[Record]:
        """The input's records until it ends, or until it breaks (a truncated compressed
        file): then what was read before still gets encoded, sent and checkpointed, and the
        break is raised after that (below)."""
        try:
            yield from records_of(documents)
        except InputStreamError as exc:
            broken_input.append(exc)

    def texts() -> Iterator[str]:
        for record in readable_records():
            if stop.is_set():
                return
            position = record.position
            if position <= state.watermark:
                counters.add("skipped_done")
                continue
            if not in_shard(position, config.shard):
                counters.add("other_shards")
                watermark.skip_to(position)
                continue
            counters.add("read")
            watermark.register(position)
            try:
                prepared = prepare(
                    record,
                    id_field=config.id_field,
                    text_fields=config.text_fields,
                    keep_fields=config.keep_fields,
                    sparse_field=config.sparse_field,
                    add_id_field=config.add_id_field,
                )
            except InputError as exc:
                dead_letters.write(
                    [
                        dead_letter_entry(
                            position,
                            exc.doc_id,
                            str(exc),
                            field=exc.field,
                            document=record.doc,
                            raw=record.raw,
                        )
                    ]
                )
                watermark.settle(position, "dead_lettered")
                counters.add("failed")
                continue
            pending.append(prepared)
            yield prepared.text

    def put(chunk: list[Action]) -> None:
        while not stop.is_set():
            try:
                chunks.put(chunk, timeout=0.2)
                return
            except queue.Full:
                continue

    chunker = ActionChunker(max_docs=config.bulk_docs, max_bytes=config.bulk_bytes)
    try:
        for window in encoder.iter_encode(
            texts(), batch_size=config.batch_size, empty="empty_vector"
        ):
            for row in range(len(window)):
                prepared = pending.popleft()
                source = {**prepared.source, config.sparse_field: codec.encode(window, row)}
                for chunk in chunker.add(make_action(prepared.position, prepared.doc_id, source)):
                    put(chunk)
            counters.add("encoded", len(window))
            if stop.is_set():
                break
        last = chunker.flush()
        if last:
            put(last)
    finally:
        for _ in threads:
            while True:
                try:
                    chunks.put(None, timeout=0.2)
                    break
                except queue.Full:
                    if stop.is_set():
                        _drain(chunks)
        for thread in threads:
            thread.join()
    if failure:
        save_checkpoint()
        raise failure[0]
    save_checkpoint()
    if broken_input:
        values = counters.values
        raise InputStreamError(
            f"{broken_input[0]} Stopped there: of the {values['read']:,} records read before, "
            f"{values['indexed']:,} were indexed and {values['failed']:,} dead-lettered",
            position=broken_input[0].position,
        ) from broken_input[0]
    values = counters.values
    if values["failed"] and not config.dead_letter:
        log.warning(
            "%d records were not indexed and are not kept anywhere: name a dead-letter file "
            "(IngestConfig.dead_letter) to keep them",
            values["failed"],
        )
    return IngestReport(
        read=values["read"],
        encoded=values["encoded"],
        indexed=values["indexed"],
        dead_lettered=values["failed"],
        retried_items=values["retried"],
        skipped_done=values["skipped_done"],
        other_shards=values["other_shards"],
        resumed_from=state.watermark,
        total_indexed=watermark.indexed,
        total_dead_lettered=watermark.dead_lettered,
        seconds=time.perf_counter() - started,
        index=config.index,
        dead_letter=config.dead_letter,
    )


def ensure_index(client: Any, config: IngestConfig) -> tuple[Dialect, FieldType]:
    """Create ``config.index`` if asked and absent; the dialect and the sparse field's type."""
    dialect = dialect_of(client)
    exists = call(lambda: client.indices.exists(index=config.index), "checking the index")
    if not exists:
        if not config.create:
            raise ConfigurationError(
                f"index {config.index!r} does not exist: create it (splade-es create-index, "
                "or --create)"
            )
        # "already exists" means another worker created it meanwhile: fine.
        with contextlib.suppress(ConfigurationError):
            create_index(
                client,
                config.index,
                field_type=config.field_type,
                sparse_field=config.sparse_field,
                dialect=dialect,
            )
    return dialect, field_type_of(client, config.index, config.sparse_field)


def _prepare_index(client: Any, encoder: Any, config: IngestConfig) -> TokenCodec:
    """Create the index if asked; check its sparse field; the codec for its key scheme."""
    dialect, field_type = ensure_index(client, config)
    return TokenCodec(encoder.vocab, scheme=dialect.key_scheme(field_type))


def _without(source: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k != field}


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
