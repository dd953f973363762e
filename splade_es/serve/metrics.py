"""Prometheus metrics of one ``splade-es serve`` process (prometheus-client), in a registry
of their own so that several apps (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Sub-millisecond to seconds: encode of one query is ~1-3 ms on a CPU, a big batch 100s of ms.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric serve exports. ``__init__`` is a declarative table, one declaration per
    metric (name, help text, labels, buckets), grouped by the path that records it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._hits = self._lookups = 0
        r = self.registry

        # Every request, and the query path (search, msearch, /_splade/*).
        self.requests = Counter(
            "splade_es_requests",
            "Requests served, by route (passthrough, search, msearch, query, encode, "
            "embed_sparse, embed_document, embed_query, ...) and status class.",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "splade_es_request_seconds",
            "Time from request to response, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_seconds = Histogram(
            "splade_es_encode_seconds",
            "Model time per encoded batch (off the event loop).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "splade_es_upstream_seconds",
            "Round trip to the cluster per forwarded request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "splade_es_batch_size",
            "Texts per encoded batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "splade_es_query_cache_hits",
            "Query vectors served from the LRU cache.",
            registry=r,
        )
        self.cache_misses = Counter(
            "splade_es_query_cache_misses",
            "Query vectors that had to be encoded.",
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "splade_es_query_cache_hit_ratio",
            "Cache hits / lookups since start.",
            registry=r,
        )
        self.cache_hit_ratio.set_function(self._hit_ratio)
        self.upstream_errors = Counter(
            "splade_es_upstream_errors",
            "Forwarded requests the cluster did not answer (connection refused, timeout).",
            registry=r,
        )
        self.rewrites = Counter(
            "splade_es_rewritten_clauses",
            "splade clauses replaced by the dialect's query.",
            registry=r,
        )

        # The write path (serve --enrich).
        self.documents_enriched = Counter(
            "splade_es_documents_enriched",
            "Documents given a sparse vector on their way into the cluster.",
            registry=r,
        )
        self.enrich_encode_seconds = Histogram(
            "splade_es_enrich_encode_seconds",
            "Model time per encoded batch of documents (concurrent requests together).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.enrich_queue_depth = Gauge(
            "splade_es_enrich_queue_documents",
            "Documents admitted and waiting to be encoded.",
            registry=r,
        )
        self.enrich_item_errors = Counter(
            "splade_es_enrich_item_errors",
            "Write operations answered with an error by the proxy itself, by reason "
            "(encode: no or non-text text fields; script: scripted update of an enriched index).",
            ["reason"],
            registry=r,
        )
        self.enrich_passthrough = Counter(
            "splade_es_enrich_passthrough",
            "Documents forwarded without a vector, by reason (encode_error with "
            "--on-encode-error passthrough).",
            ["reason"],
            registry=r,
        )
        self.enrich_rejected = Counter(
            "splade_es_enrich_rejected_requests",
            "Write requests answered 429 because the encode queue was full.",
            registry=r,
        )
        self.enrich_retries = Counter(
            "splade_es_enrich_update_retries",
            "Enriched partial updates written again after a version conflict.",
            registry=r,
        )
        self.enrich_corrections = Counter(
            "splade_es_enrich_corrections",
            "Documents that reached an index other than the one the proxy resolved (an alias "
            "switched) and were written again with a vector.",
            registry=r,
        )
        self.enrich_corrections_failed = Counter(
            "splade_es_enrich_corrections_failed",
            "Documents an alias switch sent to an index with the sparse field whose vector "
            "could not be added afterwards (logged with their ids).",
            registry=r,
        )

        # Documents longer than the model reads (serve --long-documents, issue 24), whichever
        # path encoded them (--enrich, /_splade/embed/document).
        self.documents_truncated = Counter(
            "splade_es_documents_truncated",
            "Documents encoded whose text was cut, by mode: truncate (past the model's max "
            "length), maxpool and passages (past --max-windows). passages: the documents of "
            "indices whose sparse field holds passages, whatever --long-documents says.",
            ["mode"],
            registry=r,
        )
        self.document_passages = Counter(
            "splade_es_document_passages",
            "Passages (one per window) encoded for documents of passages indices and for "
            "/_splade/embed/document requests with passages: true.",
            registry=r,
        )

        # The engines' encoder (/_splade/embed/document, /_splade/embed/query); its requests
        # and their latency are splade_es_requests / splade_es_request_seconds, by route
        # embed_document and embed_query.
        self.embed_texts = Counter(
            "splade_es_embed_texts",
            "Texts answered by /_splade/embed/<kind>, by kind (document, query); blank ones "
            "included.",
            ["kind"],
            registry=r,
        )
        self.embed_blank_texts = Counter(
            "splade_es_embed_blank_texts",
            "Blank texts /_splade/embed/<kind> answered with an empty vector, by kind.",
            ["kind"],
            registry=r,
        )
        self.embed_rejected = Counter(
            "splade_es_embed_rejected_requests",
            "Embed requests answered 429 because the document encode queue was full.",
            ["kind"],
            registry=r,
        )

        # Access control (serve --api-key-file).
        self.auth_refused = Counter(
            "splade_es_auth_refused_requests",
            "Requests to the encoding endpoints refused, by reason (missing: no bearer key, "
            "answered 401; wrong: a key that is not one of serve's, answered 403).",
            ["reason"],
            registry=r,
        )

    def cache_lookups(self, hits: int, misses: int) -> None:
        self.cache_hits.inc(hits)
        self.cache_misses.inc(misses)
        self._hits += hits
        self._lookups += hits + misses

    def _hit_ratio(self) -> float:
        return self._hits / self._lookups if self._lookups else 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
