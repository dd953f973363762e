"""Run judged queries through the cluster and score them: nDCG@10, MRR@10, Recall@100
(computed by ir-measures), with p50/p95 latency split into encoding and search.

>>> report = evaluate(client, "scifact", queries, qrels, encoder=encoder)   # doctest: +SKIP
>>> report.to_json()["ndcg@10"]                                              # doctest: +SKIP
0.61...

``in_memory_run`` scores the same queries exactly in memory (full-precision dot products over
all documents), the reference the cluster's ranking is compared with.

``compare_long_documents`` chooses how long documents are encoded on the user's own judgments:
the corpus encoded once per mode (truncate, maxpool, passages; ``encoding/windows.py``), every
judged query scored exactly in memory against each, the measures, the index size and the query
cost per mode side by side (``splade-es evaluate --corpus ... --long-documents a,b,c``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import ir_measures
import numpy as np

from . import defaults
from .connect import ClientOrCluster, client_of
from .documents import read_document, read_jsonl
from .encoding.protocol import EmptyPolicy, Encoder, ProgressCallback
from .encoding.windows import LONG_DOCUMENT_MODES, LongDocuments, WindowPolicy, WindowStats
from .engines import Hybrid, SearchRequest
from .exceptions import ConfigurationError, EmptyQueryError, InputError
from .query import PruneReport, QueryBuilder
from .search import Fusion, FusionChoice, Hit, choose_fusion, hits_of, search_vector, send
from .sparse import PassageBatch, SparseBatch

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
    # Who fused a linear/rrf hybrid ("engine" / "client"; None: nothing fused), and why.
    fusion: FusionChoice | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``evaluate --json`` object."""
        out = {
            **{name: round(value, 6) for name, value in self.metrics.items()},
            "queries": self.queries,
            "latency_ms": {
                stage: {"p50": lat.p50, "p95": lat.p95} for stage, lat in self.latency_ms.items()
            },
            "pruned_queries": self.pruned_queries,
            "empty_queries": self.empty_queries,
        }
        if self.fusion is not None and self.fusion.fusion is not None:
            out["fusion"] = self.fusion.fusion
            out["fusion_note"] = self.fusion.note
        return out


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
    fusion: FusionChoice | None = None  # hybrid mode: who fused it

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
    fusion: Fusion | FusionChoice = "engine",
) -> QueryRun:
    """Run every query (``{id: text}``) through ``index`` in ``mode``; no judgments needed.
    ``fusion``: who fuses a linear/rrf hybrid (``splade_es.search``), resolved once."""
    client = client_of(client)
    _check_mode(mode, encoder)
    # None in bm25 mode: no query vectors to build
    sparse_builder = (
        None if mode == "bm25" else builder or QueryBuilder.for_index(client, index, field=field)
    )
    choice = None
    if mode == "hybrid":
        hybrid = hybrid or Hybrid(text_fields=tuple(text_fields))
        dialect = sparse_builder.dialect if sparse_builder is not None else None
        choice = choose_fusion(client, hybrid, fusion, dialect=dialect, index=index)
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
                choice,
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
        fusion=choice,
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
    fusion: FusionChoice | None = None,
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
            client,
            index,
            vector,
            builder=builder,
            text=text,
            k=k,
            hybrid=hybrid,
            source=False,
            fusion=fusion or "engine",
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
    fusion: Fusion | FusionChoice = "engine",
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
        fusion=fusion,
    )
    return EvaluationReport(
        metrics=score_run(result.run, {qid: qrels[qid] for qid in judged}),
        queries=len(judged),
        latency_ms=result.latency(),
        pruned_queries=result.pruned_queries,
        run=result.run,
        empty_queries=result.empty_queries,
        fusion=result.fusion,
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
    return {qid: top_documents(scores[row], doc_ids, k) for row, qid in enumerate(query_ids)}


def top_documents(scores: np.ndarray, doc_ids: Sequence[str], k: int) -> dict[str, float]:
    """``{doc id: score}`` of the ``k`` best-scoring documents (ties in document order), best
    first; a document that shares no token with the query (score 0) is not retrieved."""
    top = np.argsort(-scores, kind="stable")[:k]
    return {doc_ids[j]: float(scores[j]) for j in top if scores[j] > 0}


# ---------------------------------------------------------------- long documents, compared
class WindowedEncoder(Encoder, Protocol):
    """What ``compare_long_documents`` needs of an encoder (``SpladeEncoder`` is one): a
    document as one vector under a ``WindowPolicy`` (truncate, maxpool), or as passages."""

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        empty: EmptyPolicy = ...,
        progress: ProgressCallback | None = None,
        long_documents: WindowPolicy | None = None,
    ) -> SparseBatch: ...

    def encode_passages(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        empty: EmptyPolicy = ...,
        progress: ProgressCallback | None = None,
        window: int | None = None,
        overlap: int | None = None,
        max_windows: int | None = None,
    ) -> PassageBatch: ...


@dataclass(frozen=True)
class IndexSize:
    """What one mode's vectors cost the index."""

    documents: int
    vectors: int  # stored vectors: one per document, or one per passage
    postings: int  # non-zero weights over all vectors (the inverted index's postings)
    json_bytes: int  # the vectors (and passage offsets) as compact UTF-8 JSON, as bulk sends them

    @property
    def per_document(self) -> float:
        """Non-zero weights per document (over all its passages)."""
        return self.postings / self.documents if self.documents else 0.0


@dataclass(frozen=True)
class EncodedCorpus:
    """A corpus encoded in one long-documents mode, and how long that took."""

    mode: LongDocuments
    vectors: SparseBatch | PassageBatch
    seconds: float

    def window_stats(self) -> WindowStats:
        """Windows encoded per document; ``hit_max_windows``: documents whose tail was
        dropped (for truncate, every document longer than one window)."""
        stats = WindowStats()
        vectors = self.vectors
        windows = vectors.windows if vectors.windows is not None else np.ones(len(vectors), int)
        truncated = (
            vectors.truncated if vectors.truncated is not None else np.zeros(len(vectors), bool)
        )
        stats.add(windows, truncated)
        return stats

    def size(self) -> IndexSize:
        stored = self.vectors.stored()
        rows = stored.passages if isinstance(stored, PassageBatch) else stored
        as_json = (
            json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in stored.to_dicts()
        )
        return IndexSize(
            documents=len(stored),
            vectors=len(rows),
            postings=int(rows.indptr[-1]),
            json_bytes=sum(len(text.encode("utf-8")) for text in as_json),
        )


class ExactScorer:
    """One query at a time, exactly (float64), against every vector of a corpus: a document
    scores its vector's dot product with the query or, as passages, its best passage's
    (``PassageBatch.best_scores``: a ``nested`` query's ``score_mode: max``)."""

    def __init__(self, vectors: SparseBatch | PassageBatch) -> None:
        rows = vectors.passages if isinstance(vectors, PassageBatch) else vectors
        self._columns = rows.to_scipy().astype(np.float64).T.tocsr()  # [vocab, vectors]
        self._documents = len(vectors)
        self._starts: np.ndarray | None = None
        self._owners = np.zeros(0, np.int64)
        if isinstance(vectors, PassageBatch):
            document = vectors.document
            self._starts = np.flatnonzero(np.r_[True, document[1:] != document[:-1]])
            self._owners = document[self._starts] if len(document) else self._owners
        self.postings = np.diff(self._columns.indptr)  # vectors holding each token

    def scores(self, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """[documents]: every document's score for the query ``(ids, weights)``."""
        dots = np.asarray(self._columns[ids].T @ weights.astype(np.float64)).ravel()
        if self._starts is None:
            return dots
        scores = np.zeros(self._documents, dtype=np.float64)
        if len(dots):
            scores[self._owners] = np.maximum.reduceat(dots, self._starts)
        return scores

    def postings_read(self, ids: np.ndarray) -> int:
        """Postings an inverted index reads for a query of these tokens."""
        return int(self.postings[ids].sum())


@dataclass(frozen=True)
class ModeResult:
    """One long-documents mode evaluated in memory: a row of ``compare_long_documents``."""

    mode: LongDocuments
    metrics: Mapping[str, float]
    queries: int
    size: IndexSize
    windows: WindowStats
    encode_s: float  # encoding the corpus in this mode
    latency_ms: Latency  # one query scored exactly against every vector and ranked, in memory
    postings_per_query: float  # mean postings an inverted index reads per query
    run: Mapping[str, Mapping[str, float]]

    def to_json(self) -> dict[str, Any]:
        """One mode of the ``evaluate --long-documents ... --json`` object."""
        return {
            "mode": self.mode,
            **{name: round(value, 6) for name, value in self.metrics.items()},
            "queries": self.queries,
            "documents": self.size.documents,
            "vectors": self.size.vectors,
            "postings": self.size.postings,
            "nonzeros_per_document": round(self.size.per_document, 2),
            "json_bytes": self.size.json_bytes,
            "windows_per_document": {
                "mean": round(self.windows.mean, 3),
                "p99": self.windows.percentile(99),
            },
            "truncated_documents": self.windows.hit_max_windows,
            "encode_s": round(self.encode_s, 3),
            "score_ms": {"p50": self.latency_ms.p50, "p95": self.latency_ms.p95},
            "postings_per_query": round(self.postings_per_query, 1),
        }


def one_vector_policy(mode: LongDocuments, policy: WindowPolicy) -> WindowPolicy:
    """``policy`` for a one-vector mode. ``truncate`` with a ``window`` reads the first window
    only (maxpool cut at one window: the same tokens truncation at that length keeps), so that
    every mode reads windows of one length and the comparison is about aggregation alone."""
    if mode == "truncate" and policy.window is not None:
        return replace(policy, mode="maxpool", max_windows=1)
    return replace(policy, mode=mode)


def encode_corpus(
    encoder: WindowedEncoder,
    texts: Sequence[str],
    mode: LongDocuments,
    policy: WindowPolicy,
    *,
    batch_size: int = defaults.BATCH_SIZE,
    progress: ProgressCallback | None = None,
) -> EncodedCorpus:
    """Every text encoded in ``mode`` with ``policy``'s windows (an empty text: no tokens)."""
    started = time.perf_counter()
    vectors: SparseBatch | PassageBatch
    if mode == "passages":
        vectors = encoder.encode_passages(
            texts,
            batch_size=batch_size,
            empty="empty_vector",
            progress=progress,
            window=policy.window,
            overlap=policy.overlap,
            max_windows=policy.max_windows,
        )
    else:
        vectors = encoder.encode_documents(
            texts,
            batch_size=batch_size,
            empty="empty_vector",
            progress=progress,
            long_documents=one_vector_policy(mode, policy),
        )
    return EncodedCorpus(mode, vectors, time.perf_counter() - started)


def measure_mode(
    encoded: EncodedCorpus,
    queries: SparseBatch,
    qrels: Mapping[str, Mapping[str, int]],
    doc_ids: Sequence[str],
    *,
    k: int = defaults.EVALUATION_DEPTH,
) -> ModeResult:
    """Score query ``i`` (the ``i``-th id of ``qrels``) exactly against ``encoded``, one
    query at a time (timed), and measure the run."""
    scorer = ExactScorer(encoded.vectors)
    run: Run = {}
    score_ms: list[float] = []
    postings = 0
    for row, qid in enumerate(qrels):
        ids, weights = queries.row(row)
        started = time.perf_counter()
        run[qid] = top_documents(scorer.scores(ids, weights), doc_ids, k)
        score_ms.append((time.perf_counter() - started) * 1000)
        postings += scorer.postings_read(ids)
    return ModeResult(
        mode=encoded.mode,
        metrics=score_run(run, qrels),
        queries=len(qrels),
        size=encoded.size(),
        windows=encoded.window_stats(),
        encode_s=encoded.seconds,
        latency_ms=Latency.of(score_ms),
        postings_per_query=postings / len(qrels) if qrels else 0.0,
        run=run,
    )


def compare_long_documents(
    encoder: WindowedEncoder,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    modes: Sequence[LongDocuments] = LONG_DOCUMENT_MODES,
    policy: WindowPolicy | None = None,
    *,
    k: int = defaults.EVALUATION_DEPTH,
    batch_size: int = defaults.BATCH_SIZE,
    progress: Callable[[LongDocuments, int], None] | None = None,
) -> list[ModeResult]:
    """Each of ``modes`` on the user's judgments, in memory: ``corpus`` (``{doc id: text}``)
    encoded once per mode with ``policy``'s windows (its own mode is not used; None: windows of
    the model's max length), every judged query (encoded once) scored exactly against it and
    measured (``score_run``). One ``ModeResult`` per mode, in the order given; one mode's
    vectors are held at a time. ``progress(mode, texts)``: texts just encoded."""
    unknown = [m for m in modes if m not in LONG_DOCUMENT_MODES]
    if unknown or not modes:
        raise ConfigurationError.bad_value(
            "long_documents", ",".join(unknown), f"choose from {', '.join(LONG_DOCUMENT_MODES)}"
        )
    policy = policy or WindowPolicy()
    judged = {qid: queries[qid] for qid in qrels if qid in queries}
    vectors = encoder.encode_queries(
        list(judged.values()), batch_size=batch_size, empty="empty_vector"
    )
    judgments = {qid: qrels[qid] for qid in judged}
    doc_ids, texts = list(corpus), list(corpus.values())
    results = []
    for mode in dict.fromkeys(modes):
        report = (lambda n, m=mode: progress(m, n)) if progress else None
        encoded = encode_corpus(
            encoder, texts, mode, policy, batch_size=batch_size, progress=report
        )
        results.append(measure_mode(encoded, vectors, judgments, doc_ids, k=k))
    return results


def corpus_texts(
    path: str | Path, text_fields: Sequence[str] = defaults.TEXT_FIELDS
) -> tuple[dict[str, str], int]:
    """``({doc id: text}, documents without text)`` of a BEIR ``corpus.jsonl`` (ids from
    ``defaults.ID_FIELD``; the text fields joined as ingestion joins them). A document with no
    text in ``text_fields`` is left out and counted: nothing could retrieve it. A line that is
    not a document object with an id raises ``InputError`` naming it."""
    texts: dict[str, str] = {}
    without_text = 0
    for line_no, obj in read_jsonl(path):
        try:
            doc = read_document(
                obj,
                id_field=defaults.ID_FIELD,
                text_fields=text_fields,
                position=line_no,
                unit="line",
            )
        except InputError as exc:
            if exc.doc_id is None:
                raise
            without_text += 1
            continue
        texts[doc.doc_id] = doc.text
    return texts, without_text
