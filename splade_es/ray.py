"""Scale-out on Ray Data: encode and index a dataset with a pool of actors.

Each actor loads the model once (on a GPU when it is given one) and indexes every batch it
receives through the same pipeline as ``splade-es ingest``: validation, deterministic ids,
per-item retries with jitter, dead letters. Ray restarts an actor that dies and re-runs its
batch; the ids are deterministic, so a re-run batch overwrites, never duplicates.

::

    import ray
    from splade_es import ConnectionConfig
    from splade_es.ray import ingest

    ds = ray.data.read_text("s3://bucket/corpus/")            # JSONL lines, read as ingest does
    summary = ingest(ds, index="docs", model="naver/splade-v3", json_field="text",
                     client_config=ConnectionConfig(hosts=("https://es:9200",), api_key=...),
                     gpus_per_worker=1, workers=8)
    print(summary.total)                                       # read / indexed / dead-lettered
    print(summary.dead_letters[:3])                            # id, reason, document of each

Any Ray dataset of dicts works too (without ``json_field``): its rows are the documents.

Which rows are refused, and with which reason, is the rule ``splade-es ingest`` applies
(``documents.read_document``); a reason names the row by its place in its batch
(``batch row 7: field 'title' is int, expected text``), the dead letter keeps its id.

``long_documents="maxpool"`` (with ``window``, ``overlap``, ``max_windows``, as
``SpladeEncoder.from_pretrained`` takes them) indexes one vector per row, the max over its
windows; ``"passages"`` indexes one nested object per window (``create=True`` makes the
nested layout; an index whose layout is not the job's is refused before any actor starts).
``summary.total`` counts truncated documents and windows, and ``summary.windows_mean`` /
``windows_p99`` come from every actor's exact windows-per-document counts, merged.

Ray is imported only when this module is used (``pip install 'splade-es[ray]'``).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any, cast

from . import defaults
from .connect import ConnectionConfig, connect
from .encoding.protocol import DocumentEncoder
from .encoding.windows import LongDocuments, WindowPolicy
from .engines import FieldType
from .exceptions import ConfigurationError
from .ingest import IngestConfig, RetryPolicy
from .ingest import ingest as ingest_records
from .scaleout import (
    ScaleOutSummary,
    TalliedEncoder,
    crash_marker,
    crash_once_if_asked,
    mode_of,
    prepare_job,
    row_records,
    stats_row,
    summarize,
    warn_if_truncated,
    window_policy,
)


class BatchIndexer:
    """Loads the encoder and a client once; indexes one batch of rows per call.

    Used as the Ray actor class (``map_batches``).
    """

    def __init__(
        self,
        *,
        model: str,
        client_config: ConnectionConfig,
        config: IngestConfig,
        device: str = defaults.DEVICE,
        crash_marker: str | None = None,
        json_field: str | None = None,
    ) -> None:
        from .encoding.encoder import SpladeEncoder

        self.encoder = SpladeEncoder.from_pretrained(model, device=device)
        if config.long_documents is not None:  # a window too long for the model: refused now
            self.encoder.window_policy(config.long_documents)
        self.client = connect(client_config).client
        self.config = config
        self.crash_marker = crash_marker
        self.json_field = json_field
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    def index_rows(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Index one batch of rows (documents, or JSON texts in ``json_field``)."""
        crash_once_if_asked(self.client, self.crash_marker)
        records = row_records(rows, json_field=self.json_field, unit="batch row")
        encoder = TalliedEncoder(self.encoder)  # counts this batch's windows
        with NamedTemporaryFile("r", suffix=".jsonl") as dead:
            config = replace(self.config, dead_letter=dead.name)
            report = ingest_records(
                self.client, records, encoder=cast(DocumentEncoder, encoder), config=config
            )
            letters = [json.loads(line) for line in Path(dead.name).read_text().splitlines()]
        return {
            **stats_row(self.name, report, encoder.tally),
            "dead_letters": json.dumps(letters, default=str),
        }


class _RayIndexer(BatchIndexer):
    """The actor: a ``map_batches`` callable over Arrow batches: ``to_pylist`` gives plain
    Python values, as ingest sees a record, whatever pandas dtypes a Ray version picks."""

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist([self.index_rows(batch.to_pylist())])


def ingest(
    dataset: Any,
    *,
    index: str,
    model: str,
    client_config: ConnectionConfig,
    id_field: str | None = defaults.ID_FIELD,
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS,
    sparse_field: str = defaults.VECTOR_FIELD,
    create: bool = False,
    field_type: FieldType = defaults.FIELD_TYPE,
    workers: int = defaults.WORKERS,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    batch_size: int = defaults.BATCH_SIZE,
    rows_per_task: int = defaults.BULK_DOCS,
    retry: RetryPolicy | None = None,
    max_restarts: int = 3,
    dead_letter: str | None = None,
    json_field: str | None = None,
    long_documents: LongDocuments | WindowPolicy | None = None,
    window: int | None = None,
    overlap: int | None = None,
    max_windows: int | None = None,
) -> ScaleOutSummary:
    """Encode and index a Ray dataset of dicts with ``workers`` actors.

    ``gpus_per_worker``: None = 1 when the Ray cluster has GPUs, else 0 (CPU encoding).
    ``cpus_per_worker``: Ray also caps each actor's torch threads at this many.
    ``dead_letter``: a JSONL file the driver writes the refused records to (they are also
    in ``summary.dead_letters``).
    ``json_field``: each row holds a JSONL line in this field (``ray.data.read_text`` names
    it ``text``), read as ``splade-es ingest`` reads one (``scaleout.row_records``).
    ``long_documents``: "truncate" (the default), "maxpool" or "passages", or a
    ``WindowPolicy``; ``window`` (model tokens, special ones included), ``overlap`` and
    ``max_windows`` replace its parts (``scaleout.window_policy``).
    """
    if workers < 1:
        raise ConfigurationError("workers must be >= 1")
    policy = window_policy(long_documents, window=window, overlap=overlap, max_windows=max_windows)
    gpus_per_worker = _gpus_per_worker(gpus_per_worker)
    config = prepare_job(
        client_config,
        index=index,
        id_field=id_field,
        text_fields=text_fields,
        sparse_field=sparse_field,
        batch_size=batch_size,
        bulk_docs=rows_per_task,
        retry=retry or RetryPolicy(),
        create=create,
        field_type=field_type,
        long_documents=policy,
    )
    stats = dataset.map_batches(
        _RayIndexer,
        batch_size=rows_per_task,
        batch_format="pyarrow",
        concurrency=workers,
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
        fn_constructor_kwargs=_actor_arguments(
            model, client_config, config, gpus_per_worker, json_field
        ),
        max_restarts=max_restarts,
        max_task_retries=max_restarts,
    )
    rows = stats.to_pandas().to_dict(orient="records")
    summary = summarize(rows, long_documents=mode_of(policy))
    warn_if_truncated(summary)
    if dead_letter:
        _write_dead_letters(dead_letter, summary)
    return summary


def _gpus_per_worker(requested: float | None) -> float:
    """``requested``, or (None) one GPU per actor when the Ray cluster has GPUs, else none."""
    import ray

    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _actor_arguments(
    model: str,
    client_config: ConnectionConfig,
    config: IngestConfig,
    gpus_per_worker: float,
    json_field: str | None,
) -> dict[str, Any]:
    """The keyword arguments each actor's ``BatchIndexer`` is constructed with."""
    return {
        "model": model,
        "client_config": client_config,
        "config": config,
        "device": "cuda" if gpus_per_worker else "cpu",
        "crash_marker": crash_marker(),
        "json_field": json_field,
    }


def _write_dead_letters(path: str, summary: ScaleOutSummary) -> None:
    """The refused records, one JSON object a line (the driver writes them)."""
    with open(path, "w", encoding="utf-8") as handle:
        for entry in summary.dead_letters:
            handle.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
