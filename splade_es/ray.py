"""Scale-out on Ray Data: encode and index a dataset with a pool of actors.

Each actor loads the model once (on a GPU when it is given one) and indexes every batch it
receives through the same pipeline as ``splade-es ingest``: validation, deterministic ids,
per-item retries with jitter, dead letters. Ray restarts an actor that dies and re-runs its
batch; the ids are deterministic, so a re-run batch overwrites, never duplicates.

::

    import ray
    from splade_es import ConnectionConfig
    from splade_es.ray import ingest

    ds = ray.data.read_json("s3://bucket/corpus/")            # any Ray dataset of dicts
    summary = ingest(ds, index="docs", model="naver/splade-v3",
                     client_config=ConnectionConfig(hosts=("https://es:9200",), api_key=...),
                     gpus_per_worker=1, workers=8)
    print(summary.total)                                       # read / indexed / dead-lettered

Ray is imported only when this module is used (``pip install 'splade-es[ray]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any

from .connect import ConnectionConfig, connect
from .engines import FieldType
from .exceptions import ConfigurationError
from .ingest import IngestConfig, RetryPolicy
from .ingest import ingest as ingest_records
from .ingest.pipeline import ensure_index

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
        device: str = "auto",
        crash_marker: str | None = None,
    ) -> None:
        from .encoder import SpladeEncoder

        self.encoder = SpladeEncoder.from_pretrained(model, device=device)
        self.client = connect(client_config).client
        self.config = config
        self.crash_marker = crash_marker
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    def index_rows(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        crash_once_if_asked(self.client, self.crash_marker)
        with NamedTemporaryFile("r", suffix=".jsonl") as dead:
            config = replace(self.config, dead_letter=dead.name)
            report = ingest_records(self.client, rows, encoder=self.encoder, config=config)
            letters = [json.loads(line) for line in Path(dead.name).read_text().splitlines()]
        return {
            "worker": self.name,
            "read": report.read,
            "indexed": report.indexed,
            "dead_lettered": report.dead_lettered,
            "dead_letters": json.dumps(letters, default=str),
        }


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


class _RayIndexer(BatchIndexer):
    """The actor: a ``map_batches`` callable over pandas batches."""

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        rows = [_plain(row) for row in batch.to_dict(orient="records")]
        return pd.DataFrame([self.index_rows(rows)])


def ingest(
    dataset: Any,
    *,
    index: str,
    model: str,
    client_config: ConnectionConfig,
    id_field: str | None = "_id",
    text_fields: tuple[str, ...] = ("title", "text"),
    sparse_field: str = "splade",
    create: bool = False,
    field_type: FieldType = "rank_features",
    workers: int = 2,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    batch_size: int = 32,
    rows_per_task: int = 500,
    retry: RetryPolicy | None = None,
    max_restarts: int = 3,
    dead_letter: str | None = None,
) -> ScaleOutSummary:
    """Encode and index a Ray dataset of dicts with ``workers`` actors.

    ``gpus_per_worker``: None = 1 when the Ray cluster has GPUs, else 0 (CPU encoding).
    ``cpus_per_worker``: Ray also caps each actor's torch threads at this many.
    ``dead_letter``: a JSONL file the driver writes the refused records to.
    """
    import ray

    if workers < 1:
        raise ConfigurationError("workers must be >= 1")
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    config = IngestConfig(
        index=index,
        id_field=id_field,
        text_fields=text_fields,
        sparse_field=sparse_field,
        batch_size=batch_size,
        bulk_docs=rows_per_task,
        workers=1,
        retry=retry or RetryPolicy(),
        create=create,
        field_type=field_type,
    )
    ensure_index(connect(client_config).client, config)
    stats = dataset.map_batches(
        _RayIndexer,
        batch_size=rows_per_task,
        batch_format="pandas",
        concurrency=workers,
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
        fn_constructor_kwargs={
            "model": model,
            "client_config": client_config,
            "config": config,
            "device": "cuda" if gpus_per_worker else "cpu",
            "crash_marker": crash_marker(),
        },
        max_restarts=max_restarts,
        max_task_retries=max_restarts,
    )
    summary = summarize(stats.to_pandas().to_dict(orient="records"))
    if dead_letter:
        with open(dead_letter, "w", encoding="utf-8") as handle:
            for entry in summary.dead_letters:
                handle.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
    return summary


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Pandas/NumPy scalars and NaN (a missing field) back to plain Python."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item() if getattr(value, "ndim", 0) == 0 else value.tolist()
        if isinstance(value, float) and value != value:  # NaN: the row had no such field
            continue
        out[key] = value
    return out
