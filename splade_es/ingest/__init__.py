"""Bulk ingestion: read, encode, bulk-index; retried, dead-lettered, resumable.

* ``sources``     JSONL, CSV, Parquet, BEIR folders, iterables -> ``Record``; ``prepare``
* ``bulk``        chunking, per-item results, bounded retries with jitter
* ``checkpoint``  watermark, atomic checkpoint file, dead-letter file
* ``pipeline``    the threads and bounded queues that tie them together: ``ingest``
"""

from .bulk import RetryPolicy
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
