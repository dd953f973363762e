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
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from .. import defaults
from ..connect import call, client_of
from ..encoding.protocol import DocumentEncoder, PassageEncoder
from ..encoding.windows import WindowPolicy
from ..engines import Dialect, FieldType, dialect_of
from ..exceptions import ConfigurationError
from ..query import FieldLayout, field_layout_of
from ..retry import RetryPolicy
from ..search import create_index
from ..tokens import TokenCodec
from .bulk import Action, chunk_actions
from .inputs import InputFile
from .sources import Format, Prepared, Record, prepare, read_source
from .stages import (
    STAGES,
    BreakableInput,
    IndexChunk,
    JobLedger,
    LongDocumentTally,
    ProgressCallback,
    SenderPool,
    encoded_passages,
    encoded_windows,
    made_ahead,
    passage_actions,
    prepared_records,
    records_to_index,
    until,
    window_actions,
)

__all__ = [
    "STAGES",
    "IngestConfig",
    "IngestReport",
    "ProgressCallback",
    "check_resumable",
    "ensure_index",
    "ingest",
    "ingest_file",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """What to index where, and how hard to push. See ``splade-es ingest --help``."""

    index: str
    id_field: str | None = defaults.ID_FIELD  # None: a content hash of the document
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS
    keep_fields: tuple[str, ...] | None = None  # None: every field of the document
    sparse_field: str = defaults.VECTOR_FIELD
    batch_size: int = defaults.BATCH_SIZE
    bulk_docs: int = defaults.BULK_DOCS
    bulk_bytes: int = defaults.BULK_BYTES
    workers: int = defaults.WORKERS
    checkpoint: str | None = None
    # JSONL of refused records. None keeps none (a warning says how many); the CLI always
    # names one (``checkpoint.default_dead_letter``).
    dead_letter: str | None = None
    shard: tuple[int, int] = (0, 1)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    create: bool = False
    field_type: FieldType = defaults.FIELD_TYPE  # used with create=True
    input_name: str = "<iterable>"  # identifies the input in the checkpoint
    add_id_field: bool = True  # store the id in an ``id`` field when the document has none
    # How a text longer than one window is encoded (encoding/windows.py); None: the
    # encoder's own. "passages" indexes one vector per window in a nested field.
    long_documents: WindowPolicy | None = None

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
    long_documents: str = defaults.LONG_DOCUMENTS  # the mode the documents were encoded in
    truncated: int = 0  # documents that lost text: past the window, or past max_windows
    over_one_window: int = 0  # maxpool / passages: documents cut into several windows
    windows_mean: float = 0.0  # maxpool / passages: windows per document
    windows_p99: int = 0
    hit_max_windows: int = 0

    def long_document_summary(self) -> str:
        """One line on long documents for the run's summary."""
        if self.long_documents == "truncate":
            return f"{self.truncated:,} truncated at the window"
        return (
            f"{self.long_documents}: {self.over_one_window:,} of {self.encoded:,} longer than "
            f"one window; windows per document mean {self.windows_mean:.2f}, p99 "
            f"{self.windows_p99}; {self.hit_max_windows:,} cut at max_windows"
        )

    @property
    def docs_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_second": round(self.docs_per_second, 2)}


def ingest_file(
    client: Any,
    path: str | Path,
    *,
    encoder: DocumentEncoder,
    config: IngestConfig,
    fmt: Format | None = None,
    progress: ProgressCallback | None = None,
    input_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """``ingest`` over a JSONL / CSV / Parquet file (compressed ones too), a stream (``-``,
    ``/dev/stdin``, a FIFO) or a BEIR folder, read once. ``input_progress`` is told the
    bytes of the input consumed as they are read (compressed bytes for a compressed file;
    the total to expect: ``sources.input_size``)."""
    source = check_resumable(path, config)
    if config.input_name == "<iterable>":
        name = source.name if source.is_stdin else str(Path(path).resolve())
        config = replace(config, input_name=name)
    records = read_source(path, fmt, consumed=input_progress)
    return ingest(client, records, encoder=encoder, config=config, progress=progress)


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
    encoder: DocumentEncoder,
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
    policy = long_document_policy(encoder, config)
    config = replace(config, long_documents=policy)
    codec = _prepare_index(client, encoder, config)
    ledger = JobLedger(config, progress)
    source = BreakableInput(documents)
    send = IndexChunk(client, config.index, config.retry, ledger)
    tally = LongDocumentTally()
    with SenderPool(send, workers=config.workers) as senders:
        chunks = document_chunks(
            source, senders.stopped, ledger, encoder, codec, config, tally=tally
        )
        with contextlib.closing(chunks):  # a stop closes the stages (and their threads) now
            for chunk in chunks:
                if not senders.put(chunk):
                    break
    ledger.save()
    senders.raise_failure()
    source.raise_if_broken(ledger.counters.values)
    _warn_if_refused_records_are_lost(ledger, config)
    _warn_if_truncated(tally, policy)
    return _report(ledger, config, time.perf_counter() - started, policy, tally)


def document_chunks(
    records: Iterable[Record],
    stopped: Callable[[], bool],
    ledger: JobLedger,
    encoder: DocumentEncoder,
    codec: TokenCodec,
    config: IngestConfig,
    *,
    tally: LongDocumentTally | None = None,
) -> Generator[list[Action], None, None]:
    """The data flow from input records to bulk chunks, one stage each (``stages``)."""
    to_index = records_to_index(until(records, stopped), ledger, config.shard)
    prepared = prepared_records(to_index, document_rule(config), ledger.refuse)
    encoded = partial(ledger.counters.add, "encoded")
    to_actions: dict[str, Any] = {
        "sparse_field": config.sparse_field,
        "encoded": encoded,
        "tally": tally,
    }
    policy = config.long_documents
    # The encoder makes the next window while this one becomes bulk actions (in this thread).
    actions: Iterator[Action]
    if policy is not None and policy.mode == "passages":
        passages = encoded_passages(
            prepared, _passage_encoder(encoder), batch_size=config.batch_size, policy=policy
        )
        actions = passage_actions(made_ahead(passages, name="splade-encode"), codec, **to_actions)
    else:
        windows = encoded_windows(
            prepared, encoder, batch_size=config.batch_size, long_documents=policy
        )
        actions = window_actions(made_ahead(windows, name="splade-encode"), codec, **to_actions)
    return chunk_actions(actions, max_docs=config.bulk_docs, max_bytes=config.bulk_bytes)


def long_document_policy(encoder: DocumentEncoder, config: IngestConfig) -> WindowPolicy | None:
    """The job's window policy: the config's, else the encoder's own, checked against the
    model (a window too long for it is refused before anything is read). None: an encoder
    that has none (a test double, a remote encoder), which truncates."""
    resolve = getattr(encoder, "window_policy", None)
    if resolve is not None:
        resolved = resolve(config.long_documents)
        return resolved if isinstance(resolved, WindowPolicy) else None
    return config.long_documents


def _passage_encoder(encoder: DocumentEncoder) -> PassageEncoder:
    if not isinstance(encoder, PassageEncoder):
        raise ConfigurationError.bad_value(
            "long_documents",
            "passages",
            f"needs an encoder that makes passages (iter_passages); {type(encoder).__name__} "
            "does not",
        )
    return encoder


def document_rule(config: IngestConfig) -> Callable[[Record], Prepared]:
    """``sources.prepare`` with the job's id, text and stored fields."""
    return partial(
        prepare,
        id_field=config.id_field,
        text_fields=config.text_fields,
        keep_fields=config.keep_fields,
        sparse_field=config.sparse_field,
        add_id_field=config.add_id_field,
    )


def _warn_if_refused_records_are_lost(ledger: JobLedger, config: IngestConfig) -> None:
    failed = ledger.counters.values["failed"]
    if failed and not config.dead_letter:
        log.warning(
            "%d records were not indexed and are not kept anywhere: name a dead-letter file "
            "(IngestConfig.dead_letter) to keep them",
            failed,
        )


def _warn_if_truncated(tally: LongDocumentTally, policy: WindowPolicy | None) -> None:
    if not tally.truncated:
        return
    if policy is None or policy.mode == "truncate":
        log.warning(
            "%d documents lost their text past the model's window (long_documents truncate): "
            "maxpool or passages encode all of it",
            tally.truncated,
        )
    else:
        log.warning(
            "%d documents lost their text past max_windows=%s windows",
            tally.truncated,
            policy.max_windows,
        )


def _report(
    ledger: JobLedger,
    config: IngestConfig,
    seconds: float,
    policy: WindowPolicy | None,
    tally: LongDocumentTally,
) -> IngestReport:
    values = ledger.counters.values
    windows = tally.windows
    return IngestReport(
        read=values["read"],
        encoded=values["encoded"],
        indexed=values["indexed"],
        dead_lettered=values["failed"],
        retried_items=values["retried"],
        skipped_done=values["skipped_done"],
        other_shards=values["other_shards"],
        resumed_from=ledger.resumed_from,
        total_indexed=ledger.watermark.indexed,
        total_dead_lettered=ledger.watermark.dead_lettered,
        seconds=seconds,
        index=config.index,
        dead_letter=config.dead_letter,
        long_documents=policy.mode if policy is not None else defaults.LONG_DOCUMENTS,
        truncated=tally.truncated,
        over_one_window=windows.over_one_window,
        windows_mean=round(windows.mean, 3),
        windows_p99=windows.percentile(99),
        hit_max_windows=windows.hit_max_windows,
    )


def ensure_index(client: Any, config: IngestConfig) -> tuple[Dialect, FieldType]:
    """Create ``config.index`` if asked and absent (in the passages layout for
    ``long_documents="passages"``); the dialect and the sparse field's type. An index whose
    layout is not the job's (one vector per document against passages) is refused."""
    dialect = dialect_of(client)
    passages = config.long_documents is not None and config.long_documents.mode == "passages"
    exists = call(lambda: client.indices.exists(index=config.index), "checking the index")
    if not exists:
        if not config.create:
            raise ConfigurationError(
                f"index {config.index!r} does not exist: create it (splade-es create-index"
                + (" --passages" if passages else "")
                + ", or --create)"
            )
        # "already exists" means another worker created it meanwhile: fine.
        with contextlib.suppress(ConfigurationError):
            create_index(
                client,
                config.index,
                field_type=config.field_type,
                sparse_field=config.sparse_field,
                dialect=dialect,
                passages=passages,
            )
    layout = field_layout_of(client, config.index, config.sparse_field)
    _require_layout(layout, passages, config)
    return dialect, layout.field_type


def _require_layout(layout: FieldLayout, passages: bool, config: IngestConfig) -> None:
    """The index must store what the job makes: passages in a nested field, or one vector."""
    if layout.passages == passages:
        return
    field = f"{config.index}/{config.sparse_field}"
    if passages:
        raise ConfigurationError(
            f"{field} holds one vector per document, and long_documents=passages makes one "
            "per window: index passages into an index created for them (create-index "
            "--passages, or --create on a new index)"
        )
    raise ConfigurationError(
        f"{field} holds passages (nested, one vector per window): index into it with "
        "long_documents=passages (--long-documents passages), or into another index"
    )


def _prepare_index(client: Any, encoder: DocumentEncoder, config: IngestConfig) -> TokenCodec:
    """Create the index if asked; check its sparse field; the codec for its key scheme."""
    dialect, field_type = ensure_index(client, config)
    return TokenCodec(encoder.vocab, scheme=dialect.key_scheme(field_type))
