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

PySpark is imported only when this module is used (``pip install 'splade-es[spark]'``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import defaults
from .connect import ConnectionConfig
from .documents import read_document
from .encoding.protocol import DocumentEncoder
from .engines import FieldType
from .exceptions import ConfigurationError, InputError
from .ingest import IngestConfig, IngestReport, Record, RetryPolicy
from .scaleout import (
    ScaleOutSummary,
    WorkerCounts,
    crash_marker,
    crash_once_if_asked,
    prepare_job,
    row_records,
)
from .tokens import KeyScheme, TokenCodec

if TYPE_CHECKING:
    from .encoding.encoder import SpladeEncoder

ERROR_COL = "splade_error"  # encode's column of why a row has no vector

_ENCODERS: dict[tuple[str, str], SpladeEncoder] = {}  # per Python worker: (model, device)


def _encoder(model: str, device: str) -> SpladeEncoder:
    from .encoding.encoder import SpladeEncoder

    key = (model, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = SpladeEncoder.from_pretrained(model, device=device)
    return _ENCODERS[key]


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
) -> Iterator[Any]:
    """Pandas frames (the rows of one partition, in order) with ``output_col`` (feature key
    -> weight) and ``error_col`` (why the row has no vector) added; for use outside Spark.
    ``encode`` runs the same over Arrow batches, which keep integers and nulls as they are."""
    encoder = _encoder(model, device)
    codec = TokenCodec(encoder.vocab, scheme=key_scheme)
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
        )
        done += len(rows)
        out = frame.copy()
        out[output_col] = vectors
        out[error_col] = errors
        yield out


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
) -> Iterator[Any]:
    """The ``mapInArrow`` function of ``encode``: each Arrow batch gains ``output_col`` and
    ``error_col``."""
    import pyarrow as pa

    encoder = _encoder(model, device)
    codec = TokenCodec(encoder.vocab, scheme=key_scheme)
    vector_type = pa.map_(pa.string(), pa.float32())
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
        )
        done += len(rows)
        pairs = [None if v is None else list(v.items()) for v in vectors]
        yield pa.RecordBatch.from_arrays(
            [*batch.columns, pa.array(pairs, type=vector_type), pa.array(errors, pa.string())],
            names=[*batch.schema.names, output_col, error_col],
        )


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
) -> tuple[list[dict[str, float] | None], list[str | None]]:
    """Per row, its vector or why it has none (one of them null; both for a blank JSON
    line, which is no document, as ingest skips it)."""
    vectors: list[dict[str, float] | None] = [None] * len(rows)
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
    if texts:
        batch = encoder.encode_documents(list(texts.values()), batch_size=batch_size)
        for i, slot in enumerate(texts):
            vectors[slot] = codec.encode(batch, i)
    return vectors, errors


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
) -> Any:
    """``df`` plus ``output_col: map<string, float>`` (the engines' feature keys) and
    ``error_col: string``: each row has a vector, or the reason ``splade-es ingest`` would
    dead-letter it (then the vector is null).

    ``text_cols``: the fields the text is made of (columns, or fields of the JSON document);
    ``id_col``: also refuse rows without a usable id there, as ingest does; ``json_col``: a
    column of JSONL lines (``spark.read.text`` names it ``value``), each read as ingest
    reads a line.
    """
    from pyspark.sql.types import FloatType, MapType, StringType, StructField, StructType

    taken = {output_col, error_col} & set(df.columns)
    if taken:
        raise ConfigurationError(f"the DataFrame already has column(s) {sorted(taken)}")
    schema = StructType(
        [
            *df.schema.fields,
            StructField(output_col, MapType(StringType(), FloatType()), True),
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
) -> ScaleOutSummary:
    """Encode and index every row of ``df`` (``foreachPartition``); returns the accounting,
    with the refused records in ``dead_letters`` when ``dead_letter_dir`` keeps them.

    ``json_field``: a column of JSONL lines (``spark.read.text`` names it ``value``), each
    read as ``splade-es ingest`` reads a line."""
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
    )
    spark_context = df.sparkSession.sparkContext
    read, indexed, dead = (spark_context.accumulator(0) for _ in range(3))
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
        report = _index_partition(documents, client_config, marker, (model, device), job)
        read.add(report.read)
        indexed.add(report.indexed)
        dead.add(report.dead_lettered)

    df.foreachPartition(index_partition)
    total = WorkerCounts(read=read.value, indexed=indexed.value, dead_lettered=dead.value)
    return ScaleOutSummary({"spark": total}, total, _read_dead_letters(dead_letter_dir))


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
) -> IngestReport:
    """One partition's records through ``splade-es ingest``'s pipeline, on a worker (the
    worker's encoder is loaded after the client connects)."""
    from .connect import connect
    from .ingest import ingest

    client = connect(client_config).client
    crash_once_if_asked(client, marker)
    return ingest(client, documents, encoder=_encoder(*model_on_device), config=config)


def _read_dead_letters(dead_letter_dir: str | None) -> tuple[dict[str, Any], ...]:
    """Every partition's dead letters, partition by partition."""
    letters: list[dict[str, Any]] = []
    if dead_letter_dir:
        for path in sorted(Path(dead_letter_dir).glob("part-*.jsonl")):
            letters.extend(json.loads(line) for line in path.read_text().splitlines())
    return tuple(letters)
