"""Scale-out on Spark: encode a text column into a SPLADE map column, and bulk-index
partitions through the same pipeline as ``splade-es ingest``.

::

    from splade_es import ConnectionConfig
    from splade_es import spark as splade_spark

    vectors = splade_spark.encode(df, model="naver/splade-v3", text_cols=["title", "text"])
    vectors.select("_id", "splade").show()        # splade: map<string, float>, engine keys

    summary = splade_spark.write(df, index="docs", model="naver/splade-v3",
                                 client_config=ConnectionConfig(hosts=("https://es:9200",)))

Each Python worker loads the model once and keeps it (Spark reuses Python workers). ``write``
runs a ``foreachPartition`` job: rows are validated, encoded and bulk-indexed with
deterministic ids and per-item retries; counts come back through accumulators (applied once
per successful task, so a retried partition is not counted twice); refused records go to
``dead_letter_dir/part-<partition>.jsonl`` (rewritten when a partition is retried).

PySpark is imported only when this module is used (``pip install 'splade-es[spark]'``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .connect import ConnectionConfig
from .engines import FieldType
from .ingest import RetryPolicy
from .scaleout import (
    ScaleOutSummary,
    WorkerCounts,
    crash_marker,
    crash_once_if_asked,
    prepare_job,
)
from .tokens import KeyScheme, TokenCodec

_ENCODERS: dict[tuple[str, str], Any] = {}  # per Python worker: (model, device) -> encoder


def _encoder(model: str, device: str) -> Any:
    from .encoder import SpladeEncoder

    key = (model, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = SpladeEncoder.from_pretrained(model, device=device)
    return _ENCODERS[key]


def encode_frames(
    frames: Iterator[Any],
    *,
    model: str,
    text_cols: Sequence[str],
    output_col: str = "splade",
    key_scheme: KeyScheme = "token",
    batch_size: int = 32,
    device: str = "auto",
) -> Iterator[Any]:
    """The ``mapInPandas`` function: each pandas frame gains ``output_col``, a dict of
    feature key -> weight (empty for a row without text). Usable outside Spark too."""
    encoder = _encoder(model, device)
    codec = TokenCodec(encoder.vocab, scheme=key_scheme)
    for frame in frames:
        texts = [
            " ".join(
                str(row[c]) for c in text_cols if row.get(c) is not None and str(row[c]).strip()
            )
            for row in frame.to_dict(orient="records")
        ]
        batch = encoder.encode_documents(texts, batch_size=batch_size, empty="empty_vector")
        out = frame.copy()
        out[output_col] = [codec.encode(batch, i) for i in range(len(batch))]
        yield out


def encode(
    df: Any,
    *,
    model: str,
    text_cols: Sequence[str],
    output_col: str = "splade",
    key_scheme: KeyScheme = "token",
    batch_size: int = 32,
    device: str = "auto",
) -> Any:
    """``df`` plus ``output_col: map<string, float>`` (the engines' feature keys)."""
    from pyspark.sql.types import FloatType, MapType, StringType, StructField, StructType

    schema = StructType(
        [*df.schema.fields, StructField(output_col, MapType(StringType(), FloatType()), False)]
    )

    def run(frames: Iterator[Any]) -> Iterator[Any]:
        return encode_frames(
            frames,
            model=model,
            text_cols=text_cols,
            output_col=output_col,
            key_scheme=key_scheme,
            batch_size=batch_size,
            device=device,
        )

    return df.mapInPandas(run, schema)


def write(
    df: Any,
    *,
    index: str,
    model: str,
    client_config: ConnectionConfig,
    id_field: str | None = "_id",
    text_fields: tuple[str, ...] = ("title", "text"),
    sparse_field: str = "splade",
    create: bool = False,
    field_type: FieldType = "rank_features",
    batch_size: int = 32,
    bulk_docs: int = 500,
    retry: RetryPolicy | None = None,
    device: str = "auto",
    dead_letter_dir: str | None = None,
) -> ScaleOutSummary:
    """Encode and index every row of ``df`` (``foreachPartition``); returns the accounting."""
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
        from pyspark import TaskContext

        from .connect import connect
        from .ingest import ingest

        partition = TaskContext.get().partitionId()
        documents = [_plain(row.asDict(recursive=True)) for row in rows]
        if not documents:
            return
        letters = None
        if dead_letter_dir:
            letters = str(Path(dead_letter_dir) / f"part-{partition:05d}.jsonl")
            Path(letters).unlink(missing_ok=True)  # a retried partition starts afresh
        client = connect(client_config).client
        crash_once_if_asked(client, marker)
        report = ingest(
            client,
            documents,
            encoder=_encoder(model, device),
            config=replace(config, dead_letter=letters),
        )
        read.add(report.read)
        indexed.add(report.indexed)
        dead.add(report.dead_lettered)

    df.foreachPartition(index_partition)
    total = WorkerCounts(read=read.value, indexed=indexed.value, dead_lettered=dead.value)
    letters: list[dict[str, Any]] = []
    if dead_letter_dir:
        for path in sorted(Path(dead_letter_dir).glob("part-*.jsonl")):
            letters.extend(json.loads(line) for line in path.read_text().splitlines())
    return ScaleOutSummary({"spark": total}, total, tuple(letters))


def _text(row: dict[str, Any], cols: Sequence[str]) -> str:
    parts = (row.get(c) for c in cols)
    return " ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if v is not None}
