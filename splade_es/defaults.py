"""The one home of splade-es's defaults: every function, config class and CLI option reads
its default from here, so changing one changes it everywhere (and the docs can cite one place).

Grouped by the stage of the data flow they belong to.
"""

from __future__ import annotations

from typing import Final

# ------------------------------------------------------------------ documents
TEXT_FIELDS: Final[tuple[str, ...]] = ("title", "text")
"""The source fields joined (with a space) into the text a document is encoded from."""
ID_FIELD: Final = "_id"
"""Where a document's id is read from in input records."""

# ------------------------------------------------------------------ encoding
BATCH_SIZE: Final = 32
"""Texts per forward pass."""
DEVICE: Final = "auto"
"""``auto``: the GPU when there is one, else the CPU."""
LONG_DOCUMENTS: Final = "truncate"
"""What happens to the tokens past one window: ``truncate`` (dropped, counted), ``maxpool``
(every window encoded, the elementwise max taken) or ``passages`` (one vector per window)."""
WINDOW_OVERLAP: Final = 32
"""Content tokens shared by consecutive windows (``maxpool``, ``passages``)."""
MAX_WINDOWS: Final = 64
"""Windows per document at most (``maxpool``, ``passages``): the rest is dropped and counted as
truncated. 64 windows of 512 tokens read ~30,000 tokens, a 100-page text."""

# ------------------------------------------------------------------ the index
VECTOR_FIELD: Final = "splade"
"""The field that holds a document's sparse vector."""
FIELD_TYPE: Final = "rank_features"
"""The sparse field type every supported engine version has (``sparse_vector`` where newer)."""
PASSAGE_VECTOR: Final = "vector"
"""Passages layout (``long_documents="passages"``): the vector field is ``nested``, one object
per passage; this sub-field holds the passage's sparse vector."""
PASSAGE_START: Final = "start"
"""Passages layout: where the passage starts (character offset into the encoded text)."""
PASSAGE_END: Final = "end"
"""Passages layout: where the passage ends (character offset, exclusive)."""
PASSAGE_HITS: Final = 3
"""Matching passages a passages query returns per hit (inner hits, best first); the engines'
own inner-hits default."""

# ------------------------------------------------------------------ search
TOP_K: Final = 10
"""Hits a search returns."""
EVALUATION_DEPTH: Final = 100
"""Hits per query an evaluation ranks."""

# ------------------------------------------------------------------ ingestion
BULK_DOCS: Final = 500
"""Documents per bulk request (at most)."""
BULK_BYTES: Final = 8 * 1024 * 1024
"""Bytes per bulk request (at most; a larger single document is sent alone)."""
PAGE_SIZE: Final = 500
"""Documents per page when reading an existing index (PIT + search_after)."""
KEEP_ALIVE: Final = "5m"
"""How long a point in time stays open between pages."""
WORKERS: Final = 2
"""Bulk requests in flight at once (ingest, migrate, ray)."""

# ------------------------------------------------------------------ serving (splade-es serve)
LISTEN: Final = "127.0.0.1:9280"
"""Where ``serve`` listens: loopback only unless told otherwise."""
MAX_WAIT_MS: Final = 2.0
"""How long a query micro-batch may wait for more texts under load."""
QUERY_CACHE_SIZE: Final = 10_000
"""Query vectors kept in serve's LRU cache."""
MAX_CONNECTIONS: Final = 256
"""Connections serve keeps open to the cluster."""
MAX_CLIENT_REQUESTS: Final = 256
"""Requests of one client address in flight at once."""
ENRICH_QUEUE_DOCS: Final = 4096
"""Documents waiting to be encoded on the write path; more -> 429."""
ENRICH_BATCH_DOCS: Final = 256
"""Documents of concurrent write requests encoded in one model call."""
UPDATE_RETRIES: Final = 3
"""Version conflicts of an enriched partial update retried at least this often."""

# ------------------------------------------------------------------ retries (splade_es.retry)
MAX_RETRIES: Final = 8
"""Re-sends after the first try of what the cluster pushed back on."""
INITIAL_BACKOFF: Final = 0.5
"""Seconds before the first re-send; doubled each time, up to MAX_BACKOFF."""
MAX_BACKOFF: Final = 30.0
JITTER: Final = 1.0
"""Up to this many random seconds added to each wait, so clients do not retry in step."""

# ------------------------------------------------------------------ register (splade-es register)
REGISTER_NAME: Final = "splade-es"
"""The prefix of what ``register`` names on the cluster (connectors, models, pipelines...)."""
ENGINE_BATCH_TEXTS: Final = 256
"""Texts an engine sends serve's ``/_splade/embed/<kind>`` in one call (OpenSearch: the
connector's step size and the ingest processor's batch); serve takes at least 256 a call."""
CONNECTOR_CONNECT_TIMEOUT_S: Final = 10
"""Seconds an OpenSearch connector waits to connect to serve."""
CONNECTOR_READ_TIMEOUT_S: Final = 60
"""Seconds an OpenSearch connector waits for serve's answer (a batch of documents)."""
CONNECTOR_RETRY_TIMEOUT_S: Final = 120
"""Seconds an OpenSearch connector keeps retrying serve's 429s (``MAX_RETRIES`` times at most)."""
CONNECTOR_MAX_CONNECTIONS: Final = 30
"""Connections an OpenSearch connector keeps to serve (ml-commons' own default)."""
TASK_POLLS: Final = 40
"""Times ``register`` reads an ml-commons task or model state before giving up (waits grow
from INITIAL_BACKOFF to TASK_POLL_MAX_WAIT seconds: about 3 minutes in all)."""
TASK_POLL_MAX_WAIT: Final = 5.0
