"""Run judged queries through the cluster and score them: nDCG@10, MRR@10, Recall@100
(computed by ir-measures), with p50/p95 latency split into encoding and search.

>>> report = evaluate(client, "scifact", queries, qrels, encoder=encoder)   # doctest: +SKIP
>>> report.to_json()["ndcg@10"]                                              # doctest: +SKIP
0.61...

``in_memory_run`` scores the same queries exactly in memory (full-precision dot products over
all documents), the reference the cluster's ranking is compared with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import ir_measures
import numpy as np

from . import defaults
from .connect import ClientOrCluster, client_of
from .encoding.protocol import Encoder
from .engines import Hybrid, SearchRequest
from .exceptions import ConfigurationError, EmptyQueryError
from .query import PruneReport, QueryBuilder
from .search import Hit, hits_of, search_vector, send
from .sparse import SparseBatch

log = logging.getLogger(__name__)

Mode = Literal["splade", "bm25", "hybrid"]
Run = dict[str, dict[str, float]]

# Our names -> ir-measures measures (RR is the reciprocal rank, MRR when averaged).
MEASURES = {
    "ndcg@10": ir_measures.parse_measure("nDCG@10"),
    "mrr@10": ir_measures.parse_measure("RR@10"),
    "recall@100": ir_measures.parse_measure("R@100"),
}


@dataclass(frozen=True)
class Latency:
    p50: float
    p95: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Latency:
        if not samples_ms:
            return cls(0.0, 0.0)
        p50, p95 = np.percentile(np.asarray(samples_ms, dtype=np.float64), [50, 95])
        return cls(round(float(p50), 3), round(float(p95), 3))


@dataclass(frozen=True)
class EvaluationReport:
    metrics: Mapping[str, float]
    queries: int
    latency_ms: Mapping[str, Latency]  # "encode", "search", "total"
    pruned_queries: int
    run: Mapping[str, Mapping[str, float]]
    empty_queries: int = 0  # queries with no tokens left: scored as misses

    def to_json(self) -> dict[str, Any]:
        """The ``evaluate --json`` object."""
        return {
            **{name: round(value, 6) for name, value in self.metrics.items()},
            "queries": self.queries,
            "latency_ms": {
                stage: {"p50": lat.p50, "p95": lat.p95} for stage, lat in self.latency_ms.items()
            },
            "pruned_queries": self.pruned_queries,
            "empty_queries": self.empty_queries,
        }


def score_run(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100 of ``run`` over the queries of ``qrels`` (a judged query
    with no results scores 0)."""
    judged = {qid: dict(docs) for qid, docs in qrels.items()}
    full_run = {qid: dict(run.get(qid, {})) for qid in judged}
    # ir-measures skips queries without results; a placeholder makes them count as misses.
    for docs in full_run.values():
        if not docs:
            docs["__no_result__"] = 0.0
    aggregate = ir_measures.calc_aggregate(list(MEASURES.values()), judged, full_run)
    return {name: float(aggregate[measure]) for name, measure in MEASURES.items()}


@dataclass(frozen=True)
class QueryRun:
    """Results and timings of a set of queries run through the cluster."""

    run: Mapping[str, Mapping[str, float]]  # query id -> {doc id: score}, best first
    encode_ms: Sequence[float]
    search_ms: Sequence[float]
    pruned_queries: int
    empty_queries: int = 0  # no tokens to search for: no results (a miss), nothing sent

    def latency(self) -> dict[str, Latency]:
        total = [e + s for e, s in zip(self.encode_ms, self.search_ms, strict=True)]
        return {
            "encode": Latency.of(self.encode_ms),
            "search": Latency.of(self.search_ms),
            "total": Latency.of(total),
        }


def run_queries(
    client: ClientOrCluster,
    index: str,
    queries: Mapping[str, str],
    *,
    encoder: Encoder | None = None,
    mode: Mode = "splade",
    k: int = defaults.EVALUATION_DEPTH,
    hybrid: Hybrid | None = None,
    builder: QueryBuilder | None = None,
    field: str = defaults.VECTOR_FIELD,
    text_fields: Sequence[str] = defaults.TEXT_FIELDS,
    progress: Callable[[int], None] | None = None,
) -> QueryRun:
    """Run every query (``{id: text}``) through ``index`` in ``mode``; no judgments needed."""
    client = client_of(client)
    _check_mode(mode, encoder)
    # None in bm25 mode: no query vectors to build
    sparse_builder = (
        None if mode == "bm25" else builder or QueryBuilder.for_index(client, index, field=field)
    )
    if mode == "hybrid":
        hybrid = hybrid or Hybrid(text_fields=tuple(text_fields))
    run: Run = {}
    encode_ms: list[float] = []
    search_ms: list[float] = []
    pruned = empty = 0
    for n, (qid, text) in enumerate(queries.items(), 1):
        if sparse_builder is None or encoder is None:  # bm25 (the checks above)
            response, elapsed = send(client, index, _bm25_request(text, text_fields, k))
            hits, encoded = hits_of(response), 0.0
        else:
            hits, encoded, elapsed, report = _sparse_search(
                client,
                index,
                text,
                encoder,
                sparse_builder,
                k,
                hybrid if mode == "hybrid" else None,
            )
            empty += report is None
            pruned += report is not None and report.pruned
        encode_ms.append(encoded)
        search_ms.append(elapsed)
        run[qid] = {hit.id: hit.score for hit in hits}
        if progress:
            progress(n)
    if empty:
        log.warning("%d of %d queries had no tokens to search for (no results)", empty, n)
    return QueryRun(
        run=run,
        encode_ms=encode_ms,
        search_ms=search_ms,
        pruned_queries=pruned,
        empty_queries=empty,
    )


def _check_mode(mode: str, encoder: Encoder | None) -> None:
    """A known mode, with the encoder it needs (every mode but bm25 encodes the query)."""
    if mode not in ("splade", "bm25", "hybrid"):
        raise ConfigurationError.bad_value("mode", mode, "must be splade, bm25 or hybrid")
    if mode != "bm25" and encoder is None:
        raise ConfigurationError(
            f"mode {mode!r} needs an encoder (the model the index was built with)"
        )


def _sparse_search(
    client: ClientOrCluster,
    index: str,
    text: str,
    encoder: Encoder,
    builder: QueryBuilder,
    k: int,
    hybrid: Hybrid | None,
) -> tuple[tuple[Hit, ...], float, float, PruneReport | None]:
    """(hits, encode ms, search ms, pruning) of one SPLADE / hybrid query. A query with no
    tokens to search for (empty text, or pruned to nothing) finds nothing: no hits, no
    request, pruning None."""
    if not text.strip():
        return (), 0.0, 0.0, None
    started = time.perf_counter()
    vector = encoder.encode_queries([text])
    encoded = (time.perf_counter() - started) * 1000
    try:
        result = search_vector(
            client, index, vector, builder=builder, text=text, k=k, hybrid=hybrid, source=False
        )
    except EmptyQueryError:
        return (), encoded, 0.0, None
    return result.hits, encoded, result.search_ms, result.prune


def evaluate(
    client: ClientOrCluster,
    index: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    encoder: Encoder | None = None,
    mode: Mode = "splade",
    k: int = defaults.EVALUATION_DEPTH,
    hybrid: Hybrid | None = None,
    builder: QueryBuilder | None = None,
    field: str = defaults.VECTOR_FIELD,
    text_fields: Sequence[str] = defaults.TEXT_FIELDS,
    progress: Callable[[int], None] | None = None,
) -> EvaluationReport:
    """Run every judged query (those in ``qrels``) through ``index`` and score the run.
    ``client``: an Elasticsearch or OpenSearch client, or a ``Cluster`` from ``connect``."""
    judged = {qid: queries[qid] for qid in qrels if qid in queries}
    result = run_queries(
        client,
        index,
        judged,
        encoder=encoder,
        mode=mode,
        k=k,
        hybrid=hybrid,
        builder=builder,
        field=field,
        text_fields=text_fields,
        progress=progress,
    )
    return EvaluationReport(
        metrics=score_run(result.run, {qid: qrels[qid] for qid in judged}),
        queries=len(judged),
        latency_ms=result.latency(),
        pruned_queries=result.pruned_queries,
        run=result.run,
        empty_queries=result.empty_queries,
    )


def overlap_at(
    run: Mapping[str, Mapping[str, float]],
    reference: Mapping[str, Mapping[str, float]],
    k: int = defaults.TOP_K,
) -> float:
    """Mean share of ``reference``'s top-``k`` documents that ``run`` also has in its top
    ``k``, over the queries where ``reference`` returned anything (1.0: same top ``k``)."""
    shares = []
    for qid, docs in reference.items():
        top_ref = list(docs)[:k]
        if top_ref:
            top_run = set(list(run.get(qid, {}))[:k])
            shares.append(len(set(top_ref) & top_run) / len(top_ref))
    return float(np.mean(shares)) if shares else 0.0


def _bm25_request(text: str, fields: Sequence[str], k: int) -> SearchRequest:
    query = {"multi_match": {"query": text, "fields": list(fields)}}
    return SearchRequest({"query": query, "size": k, "_source": False})


def in_memory_run(
    queries: SparseBatch,
    query_ids: Sequence[str],
    documents: SparseBatch,
    doc_ids: Sequence[str],
    *,
    k: int = defaults.EVALUATION_DEPTH,
) -> Run:
    """Exact top-``k`` by full-precision dot product, for every query. Pure."""
    scores = queries.to_scipy().astype(np.float64) @ documents.to_scipy().astype(np.float64).T
    scores = scores.toarray()
    run: Run = {}
    for row, qid in enumerate(query_ids):
        top = np.argsort(-scores[row], kind="stable")[:k]
        run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top if scores[row, j] > 0}
    return run
