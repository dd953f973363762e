"""Bulk ingestion: read, encode, bulk-index; retried, dead-lettered, resumable.

* ``sources``     JSONL, CSV, Parquet, BEIR folders, iterables -> ``Record``; ``prepare``
* ``bulk``        chunking, per-item results, bounded retries with jitter
* ``checkpoint``  watermark, atomic checkpoint file, dead-letter file
* ``stages``      the stages ``ingest`` composes (selection, encoding, sending, ledger)
* ``pipeline``    ``ingest``: the stages composed, with bounded queues between
"""

from ..retry import RetryPolicy
from .pipeline import IngestConfig, IngestReport, ingest, ingest_file
from .sources import FORMATS, Record, parse_shard, read_source

__all__ = [
    "FORMATS",
    "IngestConfig",
    "IngestReport",
    "Record",
    "RetryPolicy",
    "ingest",
    "ingest_file",
    "parse_shard",
    "read_source",
]
