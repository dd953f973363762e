"""Scale-out on Spark: encode a text column into a SPLADE map column, and bulk-index
partitions through the same pipeline as ``splade-es ingest``.

::

    from splade_es import ConnectionConfig
    from splade_es import spark as splade_spark

    vectors = splade_spark.encode(df, model="naver/splade-v3", text_cols=["title", "text"])
    vectors.select("_id", "splade", "splade_error").show()  # splade: map<string, float>

    summary = splade_spark.write(df, index="docs", model="naver/splade-v3",
                                 client_config=ConnectionConfig(hosts=("https://es:9200",)))

    lines = spark.read.text("corpus.jsonl")            # JSONL lines, read as ingest reads them
    summary = splade_spark.write(lines, json_field="value", index="docs", ...)

Which rows are refused, their id and the text their vector comes from, is the rule
``splade-es ingest`` applies (``documents.read_document``), so a row gets the vector ingest
gives the same record, or the same refusal. A reason names the row by its place in its
partition (``partition 3 row 7: field 'title' is int, expected text``). A typed DataFrame
cannot hold what a JSONL line can (``spark.read.json`` turns a number in a text column into
a string): read JSONL with ``spark.read.text`` and ``json_field``/``json_col`` to refuse
exactly what ingest refuses.

Each Python worker loads the model once and keeps it (Spark reuses Python workers). ``write``
runs a ``foreachPartition`` job: rows are validated, encoded and bulk-indexed with
deterministic ids and per-item retries; counts come back through accumulators (applied once
per successful task, so a retried partition is not counted twice); refused records go to
``dead_letter_dir/part-<partition>.jsonl`` (rewritten when a partition is retried) and come
back in ``summary.dead_letters``.

Long documents: ``long_documents="maxpool"`` (with ``window``, ``overlap``, ``max_windows``,
as ``SpladeEncoder.from_pretrained`` takes them) gives one vector per row, the max over its
windows. ``"passages"`` gives, in ``encode``, a column of passages instead of a map,
``passages_spark_type()``: ``array<struct<vector: map<string, float>, start: bigint, end:
bigint>>``, one struct per window, in text order, with its character offsets in the row's
text (``passages_arrow_type()`` in ``encode_batches``, lists of dicts in ``encode_frames``); in
``write`` one nested object per window in the index (``create=True`` makes the nested
layout). ``write``'s summary counts truncated documents and windows; its windows per
document (mean, p99) come from every partition's exact counts, merged.

PySpark is imported only when this module is used (``pip install 'splade-es[spark]'``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import defaults
from .connect import ConnectionConfig
from .documents import read_document
from .encoding.protocol import DocumentEncoder
from .encoding.windows import LongDocuments, WindowPolicy
from .engines import FieldType
from .exceptions import ConfigurationError, InputError
from .ingest import IngestConfig, IngestReport, Record, RetryPolicy
from .ingest.stages import LongDocumentTally, passages_value
from .scaleout import (
    COUNTED,
    ScaleOutSummary,
    TalliedEncoder,
    WorkerCounts,
    crash_marker,
    crash_once_if_asked,
    merge_window_counts,
    mode_of,
    prepare_job,
    row_records,
    stats_row,
    warn_if_truncated,
    window_policy,
)
from .sparse import PassageBatch
from .tokens import KeyScheme, TokenCodec

if TYPE_CHECKING:
    from .encoding.encoder import SpladeEncoder

ERROR_COL = "splade_error"  # encode's column of why a row has no vector

log = logging.getLogger(__name__)

Vector = dict[str, float]
Passages = list[dict[str, Any]]  # [{"vector": {key: weight}, "start": int, "end": int}]

_ENCODERS: dict[tuple[str, str], SpladeEncoder] = {}  # per Python worker: (model, device)


def _encoder(model: str, device: str) -> SpladeEncoder:
    from .encoding.encoder import SpladeEncoder

    key = (model, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = SpladeEncoder.from_pretrained(model, device=device)
    return _ENCODERS[key]


def vector_arrow_type() -> Any:
    """The Arrow type of a vector: ``map<string, float>`` (feature key -> weight)."""
    import pyarrow as pa

    return pa.map_(pa.string(), pa.float32())


def passages_arrow_type() -> Any:
    """The Arrow type of ``encode``'s passages column (``long_documents="passages"``): one
    struct per window of the row's text, in order: its vector and its ``[start, end)``
    character offsets (``defaults.PASSAGE_*``, the names the index's nested objects use)."""
    import pyarrow as pa

    return pa.list_(
        pa.struct(
            [
                pa.field(defaults.PASSAGE_VECTOR, vector_arrow_type()),
                pa.field(defaults.PASSAGE_START, pa.int64()),
                pa.field(defaults.PASSAGE_END, pa.int64()),
            ]
        )
    )


def passages_spark_type() -> Any:
    """``passages_arrow_type`` as a Spark SQL type:
    ``array<struct<vector: map<string, float>, start: bigint, end: bigint>>``."""
    from pyspark.sql.types import (
        ArrayType,
        FloatType,
        LongType,
        MapType,
        StringType,
        StructField,
        StructType,
    )

    return ArrayType(
        StructType(
            [
                StructField(defaults.PASSAGE_VECTOR, MapType(StringType(), FloatType()), True),
                StructField(defaults.PASSAGE_START, LongType(), True),
                StructField(defaults.PASSAGE_END, LongType(), True),
            ]
        ),
        True,
    )


def _worker_policy(encoder: SpladeEncoder, policy: WindowPolicy | None) -> WindowPolicy:
    """The job's policy checked against this worker's model (None: the encoder's own)."""
    return encoder.window_policy(policy)


def encode_frames(
    frames: Iterator[Any],
    *,
    model: str,
    text_cols: Sequence[str],
    output_col: str = defaults.VECTOR_FIELD,
    key_scheme: KeyScheme = "token",
    batch_size: int = defaults.BATCH_SIZE,
    device: str = defaults.DEVICE,
    id_col: str | None = None,
    json_col: str | None = None,
    error_col: str = ERROR_COL,
    long_documents: LongDocuments | WindowPolicy | None = None,
    window: int | None = None,
    overlap: int | None = None,
    max_windows: int | None = None,
) -> Iterator[Any]:
    """Pandas frames (the rows of one partition, in order) with ``output_col`` (feature key
    -> weight) and ``error_col`` (why the row has no vector) added; for use outside Spark.
    ``encode`` runs the same over Arrow batches, which keep integers and nulls as they are.
    With ``long_documents="passages"``, ``output_col`` holds each row's passages (a list of
    ``{"vector": {...}, "start": int, "end": int}``)."""
    policy = window_policy(long_documents, window=window, overlap=overlap, max_windows=max_windows)
    encoder = _encoder(model, device)
    resolved = _worker_policy(encoder, policy)
    codec = TokenCodec(encoder.vocab, scheme=key_scheme)
    tally = LongDocumentTally()
    done = 0
    for frame in frames:
        rows = frame.to_dict(orient="records")
        vectors, errors = _encode_rows(
            rows,
            encoder=encoder,
            codec=codec,
            text_cols=text_cols,
            id_col=id_col,
            json_col=json_col,
            batch_size=batch_size,
            start=done + 1,
            policy=resolved,
            tally=tally,
        )
        done += len(rows)
        out = frame.copy()
        out[output_col] = vectors
        out[error_col] = errors
        yield out
    _warn_if_truncated(tally, resolved)


def encode_batches(
    batches: Iterator[Any],
    *,
    model: str,
    text_cols: Sequence[str],
    output_col: str = defaults.VECTOR_FIELD,
    key_scheme: KeyScheme = "token",
    batch_size: int = defaults.BATCH_SIZE,
    device: str = defaults.DEVICE,
    id_col: str | None = None,
    json_col: str | None = None,
    error_col: str = ERROR_COL,
    long_documents: LongDocuments | WindowPolicy | None = None,
    window: int | None = None,
    overlap: int | None = None,
    max_windows: int | None = None,
) -> Iterator[Any]:
    """The ``mapInArrow`` function of ``encode``: each Arrow batch gains ``output_col``
    (``vector_arrow_type``, or ``passages_arrow_type`` for passages) and ``error_col``."""
    import pyarrow as pa

    policy = window_policy(long_documents, window=window, overlap=overlap, max_windows=max_windows)
    encoder = _encoder(model, device)
    resolved = _worker_policy(encoder, policy)
    codec = TokenCodec(encoder.vocab, scheme=key_scheme)
    passages = resolved.mode == "passages"
    output_type = passages_arrow_type() if passages else vector_arrow_type()
    tally = LongDocumentTally()
    done = 0
    for batch in batches:
        rows = batch.to_pylist()
        vectors, errors = _encode_rows(
            rows,
            encoder=encoder,
            codec=codec,
            text_cols=text_cols,
            id_col=id_col,
            json_col=json_col,
            batch_size=batch_size,
            start=done + 1,
            policy=resolved,
            tally=tally,
        )
        done += len(rows)
        values = [_arrow_value(v) for v in vectors]
        yield pa.RecordBatch.from_arrays(
            [*batch.columns, pa.array(values, type=output_type), pa.array(errors, pa.string())],
            names=[*batch.schema.names, output_col, error_col],
        )
    _warn_if_truncated(tally, resolved)


def _arrow_value(value: Vector | Passages | None) -> Any:
    """A vector or a list of passages as ``pa.array`` takes it (a map as its pairs)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return list(value.items())
    return [
        {**passage, defaults.PASSAGE_VECTOR: list(passage[defaults.PASSAGE_VECTOR].items())}
        for passage in value
    ]


def _warn_if_truncated(tally: LongDocumentTally, policy: WindowPolicy) -> None:
    """A partition that dropped text says so (in the worker's log), with the count."""
    if not tally.truncated:
        return
    past = "the model's window" if policy.mode == "truncate" else "max_windows"
    log.warning("%d rows lost their text past %s", tally.truncated, past)


def _encode_rows(
    rows: Sequence[dict[str, Any]],
    *,
    encoder: DocumentEncoder,
    codec: TokenCodec,
    text_cols: Sequence[str],
    id_col: str | None,
    json_col: str | None,
    batch_size: int,
    start: int,
    policy: WindowPolicy | None = None,
    tally: LongDocumentTally | None = None,
) -> tuple[list[Vector | Passages | None], list[str | None]]:
    """Per row, its vector (its passages, for ``policy`` passages) or why it has none (one
    of them null; both for a blank JSON line, which is no document, as ingest skips it).
    ``tally`` counts what the batch says of long documents."""
    vectors: list[Vector | Passages | None] = [None] * len(rows)
    errors: list[str | None] = [None] * len(rows)
    texts: dict[int, str] = {}
    for record in row_records(rows, json_field=json_col, unit=_row_unit(), start=start):
        slot = record.position - start
        try:
            if record.doc is None:
                raise InputError(record.error or "unreadable row", position=record.position)
            texts[slot] = read_document(
                record.doc,
                id_field=id_col,
                text_fields=text_cols,
                position=record.position,
                unit=record.unit,
            ).text
        except InputError as exc:
            errors[slot] = str(exc)
    if not texts:
        return vectors, errors
    if policy is not None and policy.mode == "passages":
        passages = _encode_passages(encoder, list(texts.values()), batch_size, policy)
        if tally is not None:
            tally.add(passages.truncated, passages.windows)
        for i, slot in enumerate(texts):
            vectors[slot] = passages_value(codec, passages, passages.passage_range(i))
        return vectors, errors
    options: dict[str, Any] = {"batch_size": batch_size}
    if policy is not None:  # test doubles and remote encoders may not take it
        options["long_documents"] = policy
    batch = encoder.encode_documents(list(texts.values()), **options)
    if tally is not None:
        tally.add(batch.truncated, batch.windows)
    for i, slot in enumerate(texts):
        vectors[slot] = codec.encode(batch, i)
    return vectors, errors


def _encode_passages(
    encoder: DocumentEncoder, texts: list[str], batch_size: int, policy: WindowPolicy
) -> PassageBatch:
    """The passages of ``texts`` (``policy``'s windows), in one batch."""
    stream = getattr(encoder, "iter_passages", None)
    if stream is None:
        raise ConfigurationError.bad_value(
            "long_documents",
            "passages",
            f"needs an encoder that makes passages; {type(encoder).__name__} does not",
        )
    return PassageBatch.concat(list(stream(texts, batch_size=batch_size, policy=policy)))


def _row_unit() -> str:
    """How messages name a row: by partition inside a Spark task, else by position."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
    except ImportError:
        context = None
    return f"partition {context.partitionId()} row" if context is not None else "row"


def encode(
    df: Any,
    *,
    model: str,
    text_cols: Sequence[str],
    output_col: str = defaults.VECTOR_FIELD,
    key_scheme: KeyScheme = "token",
    batch_size: int = defaults.BATCH_SIZE,
    device: str = defaults.DEVICE,
    id_col: str | None = None,
    json_col: str | None = None,
    error_col: str = ERROR_COL,
    long_documents: LongDocuments | WindowPolicy | None = None,
    window: int | None = None,
    overlap: int | None = None,
    max_windows: int | None = None,
) -> Any:
    """``df`` plus ``output_col: map<string, float>`` (the engines' feature keys) and
    ``error_col: string``: each row has a vector, or the reason ``splade-es ingest`` would
    dead-letter it (then the vector is null).

    ``long_documents``: "truncate" (the default), "maxpool" (one vector per row, the max over
    its windows) or "passages" (``output_col`` is then ``passages_spark_type()``: one
    ``{vector, start, end}`` struct per window), or a ``WindowPolicy``; ``window``,
    ``overlap``, ``max_windows`` replace its parts (``scaleout.window_policy``).

    ``text_cols``: the fields the text is made of (columns, or fields of the JSON document);
    ``id_col``: also refuse rows without a usable id there, as ingest does; ``json_col``: a
    column of JSONL lines (``spark.read.text`` names it ``value``), each read as ingest
    reads a line.
    """
    from pyspark.sql.types import FloatType, MapType, StringType, StructField, StructType

    taken = {output_col, error_col} & set(df.columns)
    if taken:
        raise ConfigurationError(f"the DataFrame already has column(s) {sorted(taken)}")
    policy = window_policy(long_documents, window=window, overlap=overlap, max_windows=max_windows)
    passages = policy is not None and policy.mode == "passages"
    output_type = passages_spark_type() if passages else MapType(StringType(), FloatType())
    schema = StructType(
        [
            *df.schema.fields,
            StructField(output_col, output_type, True),
            StructField(error_col, StringType(), True),
        ]
    )

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        return encode_batches(
            batches,
            model=model,
            text_cols=text_cols,
            output_col=output_col,
            key_scheme=key_scheme,
            batch_size=batch_size,
            device=device,
            id_col=id_col,
            json_col=json_col,
            error_col=error_col,
            long_documents=policy,
        )

    return df.mapInArrow(run, schema)


def write(
    df: Any,
    *,
    index: str,
    model: str,
    client_config: ConnectionConfig,
    id_field: str | None = defaults.ID_FIELD,
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS,
    sparse_field: str = defaults.VECTOR_FIELD,
    create: bool = False,
    field_type: FieldType = defaults.FIELD_TYPE,
    batch_size: int = defaults.BATCH_SIZE,
    bulk_docs: int = defaults.BULK_DOCS,
    retry: RetryPolicy | None = None,
    device: str = defaults.DEVICE,
    dead_letter_dir: str | None = None,
    json_field: str | None = None,
    long_documents: LongDocuments | WindowPolicy | None = None,
    window: int | None = None,
    overlap: int | None = None,
    max_windows: int | None = None,
) -> ScaleOutSummary:
    """Encode and index every row of ``df`` (``foreachPartition``); returns the accounting,
    with the refused records in ``dead_letters`` when ``dead_letter_dir`` keeps them.

    ``json_field``: a column of JSONL lines (``spark.read.text`` names it ``value``), each
    read as ``splade-es ingest`` reads a line.
    ``long_documents``: "truncate" (the default), "maxpool" or "passages" (one nested object
    per window; ``create`` makes the nested layout), or a ``WindowPolicy``; ``window``,
    ``overlap``, ``max_windows`` replace its parts (``scaleout.window_policy``)."""
    policy = window_policy(long_documents, window=window, overlap=overlap, max_windows=max_windows)
    config = prepare_job(
        client_config,
        index=index,
        id_field=id_field,
        text_fields=text_fields,
        sparse_field=sparse_field,
        batch_size=batch_size,
        bulk_docs=bulk_docs,
        retry=retry or RetryPolicy(),
        create=create,
        field_type=field_type,
        long_documents=policy,
    )
    accounting = _Accounting(df.sparkSession.sparkContext)
    marker = crash_marker()
    if dead_letter_dir:
        Path(dead_letter_dir).mkdir(parents=True, exist_ok=True)

    def index_partition(rows: Iterator[Any]) -> None:
        partition = _partition_id()
        documents = list(
            row_records(
                (row.asDict(recursive=True) for row in rows),
                json_field=json_field,
                unit=f"partition {partition} row",
            )
        )
        if not documents:
            return
        letters = _fresh_dead_letter_file(dead_letter_dir, partition)
        job = replace(config, dead_letter=letters)
        accounting.add(*_index_partition(documents, client_config, marker, (model, device), job))

    df.foreachPartition(index_partition)
    summary = accounting.summary(_read_dead_letters(dead_letter_dir), mode_of(policy))
    warn_if_truncated(summary)
    return summary


class _Accounting:
    """``write``'s counts as Spark accumulators: applied once per successful task, so a
    retried partition is not counted twice; the windows per document merged exactly."""

    def __init__(self, spark_context: Any) -> None:
        self.counted = {key: spark_context.accumulator(0) for key in COUNTED}
        self.window_counts = spark_context.accumulator({}, WindowCountsParam())

    def add(self, report: IngestReport, tally: LongDocumentTally) -> None:
        """One partition's report and long-document tally (in its task)."""
        row = stats_row("spark", report, tally)
        for key, accumulator in self.counted.items():
            accumulator.add(row[key])
        self.window_counts.add(dict(tally.windows.counts))

    def summary(self, dead_letters: tuple[dict[str, Any], ...], mode: str) -> ScaleOutSummary:
        """The job's summary (on the driver, once the job has run)."""
        total = WorkerCounts(**{key: acc.value for key, acc in self.counted.items()})
        return ScaleOutSummary(
            {"spark": total}, total, dead_letters, mode, dict(self.window_counts.value)
        )


class WindowCountsParam:
    """A Spark accumulator of windows per document (windows -> documents), merged exactly
    (``AccumulatorParam``'s two methods; PySpark needs no more)."""

    def zero(self, value: Mapping[int, int]) -> dict[int, int]:
        return {}

    def addInPlace(self, into: dict[int, int], counts: Mapping[int, int]) -> dict[int, int]:
        return merge_window_counts(into, counts)


def _partition_id() -> int:
    """The partition the running Spark task works on."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:  # index_partition runs in Spark tasks only
        raise RuntimeError("not inside a Spark task")
    return context.partitionId()


def _fresh_dead_letter_file(dead_letter_dir: str | None, partition: int) -> str | None:
    """This partition's dead-letter file, emptied: a retried partition starts afresh."""
    if not dead_letter_dir:
        return None
    letters = Path(dead_letter_dir) / f"part-{partition:05d}.jsonl"
    letters.unlink(missing_ok=True)
    return str(letters)


def _index_partition(
    documents: list[Record],
    client_config: ConnectionConfig,
    marker: str | None,
    model_on_device: tuple[str, str],
    config: IngestConfig,
) -> tuple[IngestReport, LongDocumentTally]:
    """One partition's records through ``splade-es ingest``'s pipeline, on a worker (the
    worker's encoder is loaded after the client connects), and what its windows say of
    long documents."""
    from .connect import connect
    from .ingest import ingest

    client = connect(client_config).client
    crash_once_if_asked(client, marker)
    encoder = TalliedEncoder(_encoder(*model_on_device))
    report = ingest(client, documents, encoder=cast(DocumentEncoder, encoder), config=config)
    return report, encoder.tally


def _read_dead_letters(dead_letter_dir: str | None) -> tuple[dict[str, Any], ...]:
    """Every partition's dead letters, partition by partition."""
    letters: list[dict[str, Any]] = []
    if dead_letter_dir:
        for path in sorted(Path(dead_letter_dir).glob("part-*.jsonl")):
            letters.extend(json.loads(line) for line in path.read_text().splitlines())
    return tuple(letters)
