"""Search and explain on top of a dialect, with any Elasticsearch or OpenSearch client.

>>> from splade_es import SpladeEncoder, search                          # doctest: +SKIP
>>> encoder = SpladeEncoder.from_pretrained("naver/splade-v3")          # doctest: +SKIP
>>> result = search(client, "docs", "tax depreciation", encoder=encoder) # doctest: +SKIP
>>> result.hits[0].id, result.hits[0].score                              # doctest: +SKIP
('d1', 21.73...)

``explain`` breaks one document's score into per-token contributions
(query weight x stored document weight) that add up to the engine's ``_score``.

On a passages index (``QueryBuilder.passages``: one nested object per passage of a long
document) a hit's score is its best passage's dot product, and ``Hit.passages`` holds its best
matching passages (start, end, score), best first; ``explain`` explains the best passage.

A query with no tokens (an empty text, or one that pruning empties) raises
``EmptyQueryError`` instead of searching: it matches nothing (see ``splade_es.query``).

Fusion (``fusion=``) of a ``linear`` / ``rrf`` hybrid: ``"engine"`` (the default, as before)
sends the engine's own hybrid (Elasticsearch ``rrf`` / ``linear`` retriever, OpenSearch
``hybrid`` query + search pipeline); ``"client"`` sends the BM25 and the SPLADE searches in one
``_msearch`` and fuses them here with the engine's formulas (``splade_es.fusion``), which works
on every license and without the neural-search plugin; ``"auto"`` picks the engine's where the
cluster has it (version, plugin, license, and on OpenSearch the search pipeline) and the
client's otherwise. ``SearchResult.fusion`` says which ran, ``fusion_note`` why.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import defaults
from .connect import ClientOrCluster, call, client_of
from .encoding.protocol import Encoder
from .engines import Dialect, FieldType, Hybrid, SearchRequest, dialect_of
from .exceptions import (
    ClusterError,
    ConfigurationError,
    ConnectionFailedError,
    EmptyQueryError,
    InputError,
    UnsupportedFeatureError,
)
from .fusion import Fused, FusionRules, fuse
from .query import PruneReport, QueryBuilder, QueryPruning, QueryVector
from .sparse import SparseBatch, stored_precision
from .tokens import unescape_key

log = logging.getLogger(__name__)

Fusion = Literal["engine", "client", "auto"]
FUSIONS: tuple[Fusion, ...] = ("engine", "client", "auto")


@dataclass(frozen=True)
class Passage:
    """One matching passage of a hit: character offsets into the encoded text (``end``
    exclusive) and its own score (its dot product with the query)."""

    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    source: Mapping[str, Any]
    passages: tuple[Passage, ...] = ()  # passages index: best matching passages, best first


@dataclass(frozen=True)
class SearchResult:
    """Hits, plus what the query became and where the time went."""

    hits: tuple[Hit, ...]
    features: Mapping[str, float]  # the query's feature keys and weights, after pruning
    prune: PruneReport
    encode_ms: float
    search_ms: float  # client round trip
    took_ms: int | None  # as reported by the engine
    request: SearchRequest  # client fusion: the SPLADE search (``requests`` holds both)
    # Who fused a linear/rrf hybrid: "engine" or "client"; None when nothing was fused (no
    # hybrid, or a ``sum`` hybrid: one bool query). ``fusion_note``: why that one.
    fusion: Literal["engine", "client"] | None = None
    fusion_note: str = ""
    requests: tuple[SearchRequest, ...] = ()  # client fusion: the BM25 and SPLADE searches


@dataclass(frozen=True)
class TokenContribution:
    token: str
    key: str
    query_weight: float
    doc_weight: float  # as the engine stores it (9 significant bits)
    contribution: float


@dataclass(frozen=True)
class Explanation:
    """Why a document scored what it did: its matched tokens, heaviest contribution first.

    ``engine_score``: the ``_score`` the engine gives the document for the same query (None
    when it does not match); ``score``, the sum of the contributions, equals it."""

    doc_id: str
    contributions: tuple[TokenContribution, ...]
    engine_score: float | None = None
    passage: Passage | None = None  # passages index: the passage explained (the best one)

    @property
    def score(self) -> float:
        return math.fsum(c.contribution for c in self.contributions)


# ---------------------------------------------------------------------- index admin
def create_index(
    client: ClientOrCluster,
    index: str,
    *,
    field_type: FieldType = defaults.FIELD_TYPE,
    sparse_field: str = defaults.VECTOR_FIELD,
    shards: int = 1,
    replicas: int = 1,
    dialect: Dialect | None = None,
    passages: bool = False,
) -> dict[str, Any]:
    """Create ``index`` from the ``mappings/`` template for this engine and version
    (``passages``: the sparse field holds one nested object per passage).

    Returns the body that was sent. Refuses an existing index (nothing is overwritten).
    ``client``: an Elasticsearch or OpenSearch client, or a ``Cluster`` from ``connect``.
    """
    dialect = dialect or dialect_of(client)
    connection = client_of(client)
    body = dialect.index_body(
        field_type, sparse_field=sparse_field, shards=shards, replicas=replicas, passages=passages
    )
    if call(lambda: connection.indices.exists(index=index), f"checking index {index}"):
        raise ConfigurationError(f"index {index!r} already exists; nothing was changed")
    call(lambda: connection.indices.create(index=index, body=body), f"creating index {index}")
    return body


def create_hybrid_pipeline(
    client: ClientOrCluster, hybrid: Hybrid, *, dialect: Dialect | None = None
) -> str | None:
    """Create (or update) the search pipeline ``hybrid`` needs on this engine (OpenSearch
    ``linear``/``rrf``) and return its name; None when it needs none (Elasticsearch
    retrievers, ``sum`` hybrids)."""
    dialect = dialect or dialect_of(client)
    connection = client_of(client)
    body = dialect.hybrid_pipeline_body(hybrid)
    if body is None:
        return None
    name = hybrid.pipeline_name
    call(
        lambda: connection.search_pipeline.put(id=name, body=body),
        f"creating search pipeline {name}",
    )
    return name


# ---------------------------------------------------------------------- search
def search(
    client: ClientOrCluster,
    index: str,
    text: str,
    *,
    encoder: Encoder,
    k: int = defaults.TOP_K,
    filters: Sequence[dict] = (),
    hybrid: Hybrid | None = None,
    builder: QueryBuilder | None = None,
    field: str = defaults.VECTOR_FIELD,
    source: Any = True,
    fusion: Fusion | FusionChoice = "engine",
) -> SearchResult:
    """Encode ``text`` and search ``index``: the score is the exact SPLADE dot product
    (plus BM25 with ``hybrid``); on a passages index, the best passage's, and each hit
    carries its best matching passages (``Hit.passages``). Pass a ``builder`` when searching
    repeatedly; otherwise one is made from the index (three small requests), which finds a
    passages field in the mapping. ``client``: an Elasticsearch or OpenSearch client, or a
    ``Cluster`` from ``connect``.

    ``fusion`` (a ``linear`` / ``rrf`` hybrid only): ``"engine"`` fuses in the engine (as
    before), ``"client"`` here (one ``_msearch``, the engine's formulas), ``"auto"`` the
    engine where the cluster can, else here (a few cluster reads per call: pass the
    ``choose_fusion`` answer instead when searching repeatedly). ``SearchResult.fusion`` says
    which ran.

    ``EmptyQueryError`` when the text is empty or pruning leaves no token (a hybrid search
    then ranks by BM25 alone)."""
    if not text.strip():
        raise EmptyQueryError("nothing to search for: the query text is empty")
    builder = builder or QueryBuilder.for_index(client, index, field=field)
    client = client_of(client)
    started = time.perf_counter()
    vector = encoder.encode_queries([text])
    encode_ms = (time.perf_counter() - started) * 1000
    return search_vector(
        client,
        index,
        vector,
        builder=builder,
        text=text,
        k=k,
        filters=filters,
        hybrid=hybrid,
        source=source,
        encode_ms=encode_ms,
        fusion=fusion,
    )


def search_vector(
    client: ClientOrCluster,
    index: str,
    vector: QueryVector,
    *,
    builder: QueryBuilder,
    text: str | None = None,
    k: int = defaults.TOP_K,
    filters: Sequence[dict] = (),
    hybrid: Hybrid | None = None,
    source: Any = True,
    encode_ms: float = 0.0,
    fusion: Fusion | FusionChoice = "engine",
) -> SearchResult:
    """``search`` for a vector that is already encoded."""
    client = client_of(client)
    choice = choose_fusion(client, hybrid, fusion, dialect=builder.dialect, index=index)
    if choice.fusion == "client":
        assert hybrid is not None  # choose_fusion: only a fused hybrid is fused here
        plan = client_fusion(
            builder, vector, text=text, k=k, filters=filters, hybrid=hybrid, source=source
        )
        responses, search_ms = send_msearch(client, index, plan.requests)
        response = plan.response(responses)
        return SearchResult(
            hits=hits_of(response, passages_field=builder.field if builder.passages else None),
            features=plan.features,
            prune=plan.prune,
            encode_ms=encode_ms,
            search_ms=search_ms,
            took_ms=response.get("took"),
            request=plan.sparse,
            fusion="client",
            fusion_note=choice.note,
            requests=plan.requests,
        )
    prepared = builder.search_request(
        vector, k=k, text=text, filters=filters, hybrid=hybrid, source=source
    )
    response, search_ms = send(client, index, prepared.request)
    return SearchResult(
        hits=hits_of(response, passages_field=builder.field if builder.passages else None),
        features=prepared.features,
        prune=prepared.prune,
        encode_ms=encode_ms,
        search_ms=search_ms,
        took_ms=response.get("took"),
        request=prepared.request,
        fusion=choice.fusion,
        fusion_note=choice.note,
    )


# ---------------------------------------------------------------------- fusion
@dataclass(frozen=True)
class FusionChoice:
    """Who fuses a hybrid: ``"engine"``, ``"client"``, or None (nothing to fuse: no hybrid, or
    a ``sum`` hybrid, one ``bool`` query), and why, in words."""

    fusion: Literal["engine", "client"] | None
    note: str


def choose_fusion(
    client: ClientOrCluster,
    hybrid: Hybrid | None,
    fusion: Fusion | FusionChoice = "auto",
    *,
    dialect: Dialect | None = None,
    index: str | None = None,
) -> FusionChoice:
    """Resolve ``fusion`` for ``hybrid`` on this cluster. ``"auto"`` reads what ``doctor``
    reads (the version, the plugins where the engine needs one, the license where it needs
    one; on OpenSearch, whether the hybrid's search pipeline exists) and picks the engine's
    fusion where all of it is there, the client's otherwise; what cannot be read counts as
    missing (the client's fusion always works). A ``FusionChoice`` is returned as it is."""
    if isinstance(fusion, FusionChoice):
        return fusion
    if fusion not in FUSIONS:
        raise ConfigurationError.bad_value("fusion", fusion, f"must be one of {FUSIONS}")
    if hybrid is None or hybrid.method == "sum":
        what = "no hybrid" if hybrid is None else "a sum hybrid is one bool query"
        return FusionChoice(None, f"nothing to fuse ({what})")
    if fusion == "engine":
        return FusionChoice("engine", f"{hybrid.method} fused by the engine (fusion=engine)")
    if fusion == "client":
        return FusionChoice("client", f"{hybrid.method} fused client-side (fusion=client)")
    dialect = dialect or dialect_of(client)
    reason = engine_fusion_refusal(client, hybrid, dialect=dialect)
    if reason is None:
        choice = FusionChoice(
            "engine", f"{hybrid.method} fused by the engine (fusion=auto: the cluster has it)"
        )
    else:
        choice = FusionChoice(
            "client", f"{hybrid.method} fused client-side (fusion=auto: {reason})"
        )
    log.info("%s%s", choice.note, f" [{index}]" if index else "")
    return choice


def prepare_fusion(
    client: ClientOrCluster,
    hybrid: Hybrid | None,
    fusion: Fusion = "auto",
    *,
    dialect: Dialect | None = None,
    create_pipeline: bool = True,
) -> FusionChoice:
    """``choose_fusion`` for a command about to search repeatedly, creating what the
    engine's fusion needs: with ``"engine"``, the hybrid is checked against the version
    (``UnsupportedFeatureError``) and its search pipeline created (``create_pipeline``);
    with ``"auto"``, the pipeline is created where the engine can fuse (version, plugin,
    license) and the engine then fuses; ``"client"`` needs nothing."""
    if fusion not in FUSIONS:
        raise ConfigurationError.bad_value("fusion", fusion, f"must be one of {FUSIONS}")
    if hybrid is None or hybrid.method == "sum" or fusion == "client":
        return choose_fusion(client, hybrid, fusion, dialect=dialect)
    dialect = dialect or dialect_of(client)
    if fusion == "engine":
        dialect.check_hybrid(hybrid)
        if create_pipeline:
            create_hybrid_pipeline(client, hybrid, dialect=dialect)
        return choose_fusion(client, hybrid, "engine", dialect=dialect)
    reason = engine_fusion_refusal(
        client, hybrid, dialect=dialect, check_pipeline=not create_pipeline
    )
    if reason is None and create_pipeline:
        create_hybrid_pipeline(client, hybrid, dialect=dialect)
    if reason is None:
        note = f"{hybrid.method} fused by the engine (fusion=auto: the cluster has it)"
        return FusionChoice("engine", note)
    return FusionChoice("client", f"{hybrid.method} fused client-side (fusion=auto: {reason})")


def engine_fusion_refusal(
    client: ClientOrCluster,
    hybrid: Hybrid,
    *,
    dialect: Dialect | None = None,
    check_pipeline: bool = True,
) -> str | None:
    """Why the cluster cannot fuse ``hybrid`` itself now, or None when it can: the dialect's
    answer (``Dialect.engine_fusion_refusal``) for the plugins and license read from the
    cluster (only those the engine needs), then, where the engine fuses through a search
    pipeline (OpenSearch) and ``check_pipeline``, whether that pipeline exists
    (``create_hybrid_pipeline``)."""
    dialect = dialect or dialect_of(client)
    connection = client_of(client)
    capability = f"hybrid:{hybrid.method}"
    plugins = installed_plugins(connection) if dialect.required_plugin(capability) else ()
    license = _read_license(connection, dialect) if dialect.required_license(capability) else None
    reason = dialect.engine_fusion_refusal(hybrid, plugins=plugins, license=license)
    if reason is None and check_pipeline and dialect.hybrid_pipeline_body(hybrid) is not None:
        name = hybrid.pipeline_name
        try:
            call(lambda: connection.search_pipeline.get(id=name), f"reading search pipeline {name}")
        except ConnectionFailedError:
            raise
        except ClusterError:
            return f"the search pipeline {name} does not exist (create_hybrid_pipeline)"
    return reason


def installed_plugins(client: ClientOrCluster) -> tuple[str, ...] | None:
    """The plugin (component) names of the cluster's nodes, as ``doctor`` reads them; None
    when the list cannot be read (a privilege the user lacks, no such API)."""
    connection = client_of(client)
    try:
        rows = call(lambda: connection.cat.plugins(format="json"), "reading the plugins")
    except ConnectionFailedError:
        raise
    except ClusterError:
        return None
    if not isinstance(rows, list):
        rows = list(getattr(rows, "body", None) or [])
    return tuple(sorted({str(r.get("component")) for r in rows if r.get("component")}))


def _read_license(connection: Any, dialect: Dialect) -> str | None:
    try:
        return call(lambda: dialect.read_license(connection), "reading the license")
    except ConnectionFailedError:
        raise
    except (ClusterError, KeyError):
        return None  # no license API (serverless), or no privilege to read it


@dataclass(frozen=True)
class ClientFusion:
    """A ``linear`` / ``rrf`` hybrid fused by the client: the BM25 and the SPLADE searches
    (the engine's sub-queries, filtered alike, each for the engine's window of hits) to send
    in one ``_msearch``, and how to fuse their answers (``splade_es.fusion``). Pure."""

    lexical: SearchRequest
    sparse: SearchRequest
    hybrid: Hybrid
    window: int
    k: int
    rules: FusionRules
    features: Mapping[str, float]
    prune: PruneReport

    @property
    def requests(self) -> tuple[SearchRequest, SearchRequest]:
        """BM25 first, then SPLADE: the engines' order of the sub-queries."""
        return (self.lexical, self.sparse)

    def msearch_body(self, index: str) -> list[dict[str, Any]]:
        """The ``_msearch`` body (header, body, header, body)."""
        return msearch_body(index, self.requests)

    def fused(self, responses: Sequence[Mapping[str, Any]]) -> list[Fused]:
        """The fused documents, best first (the first ``k``); ids are ``<index>\x00<_id>``."""
        rankings = [
            [(_hit_key(h), float(h.get("_score") or 0.0)) for h in _hits(r)] for r in responses
        ]
        weights = [self.hybrid.bm25_weight, 1.0 - self.hybrid.bm25_weight]
        return fuse(
            rankings,
            "rrf" if self.hybrid.method == "rrf" else "linear",
            weights=weights,
            rank_constant=self.hybrid.rank_constant,
            normalizer=self.hybrid.normalizer,
            window=self.window,
            size=self.k,
            rules=self.rules,
        )

    def response(self, responses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """A search response of the fused hits (``_score`` the fused score; each hit as the
        SPLADE search returned it where it did, with its inner hits, else as BM25's);
        ``hits.total`` is the larger side's, a lower bound (``gte``) of the union's."""
        lexical, sparse = responses
        found = {_hit_key(h): h for r in (lexical, sparse) for h in _hits(r)}
        fused = self.fused(responses)
        hits = [{**found[f.id], "_score": f.score} for f in fused]
        totals = [_total(r) for r in responses]
        return {
            "took": max(int(r.get("took") or 0) for r in responses),
            "timed_out": any(bool(r.get("timed_out")) for r in responses),
            "_shards": sparse.get("_shards", lexical.get("_shards", {})),
            "hits": {
                "total": {"value": max(totals), "relation": "gte" if max(totals) else "eq"},
                "max_score": hits[0]["_score"] if hits else None,
                "hits": hits,
            },
        }


def client_fusion(
    builder: QueryBuilder,
    vector: QueryVector,
    *,
    text: str | None,
    k: int,
    hybrid: Hybrid,
    filters: Sequence[dict] = (),
    source: Any = True,
    pruning: QueryPruning | None = None,
) -> ClientFusion:
    """The two searches of a client-fused ``hybrid`` and how to fuse them. The SPLADE query
    is pruned as the engine's hybrid would prune it (the same clauses left for BM25), so both
    fusions fuse the same lists; a query pruned to nothing matches nothing (BM25 ranks)."""
    if not text:
        raise ConfigurationError("a hybrid search needs the query text")
    if hybrid.method == "sum":
        raise ConfigurationError("a sum hybrid is one bool query: nothing to fuse")
    dialect = builder.dialect
    lexical = dialect.lexical_query(text, hybrid.text_fields)
    # As QueryBuilder.search_request: multi_match expands to about one clause per term and field.
    reserve = len(text.split()) * len(hybrid.text_fields) + 1
    kept, report = builder.prune(vector, reserve=reserve, pruning=pruning)
    if report.empty:
        log.warning("no SPLADE query tokens left; the hybrid query ranks by BM25 alone")
        sparse: dict[str, Any] = {"match_none": {}}
    else:
        sparse = builder._clause(kept)
    window = dialect.fusion_window(hybrid, k)
    return ClientFusion(
        lexical=dialect.search_request(lexical, k=window, filters=filters, source=source),
        sparse=dialect.search_request(sparse, k=window, filters=filters, source=source),
        hybrid=hybrid,
        window=window,
        k=k,
        rules=dialect.fusion_rules(),
        features=kept,
        prune=report,
    )


def msearch_body(index: str, requests: Sequence[SearchRequest]) -> list[dict[str, Any]]:
    """An ``_msearch`` body running ``requests`` on ``index`` (their URL params in the
    headers)."""
    body: list[dict[str, Any]] = []
    for request in requests:
        body.append({"index": index, **dict(request.params)})
        body.append(dict(request.body))
    return body


def send_msearch(
    client: Any, index: str, requests: Sequence[SearchRequest]
) -> tuple[list[dict[str, Any]], float]:
    """Send ``requests`` in one ``_msearch``; returns their responses (in order) and the round
    trip in ms. A search the engine refused raises as a refused ``search`` would."""
    started = time.perf_counter()
    response = call(
        lambda: client.msearch(body=msearch_body(index, requests)), f"searching {index}"
    )
    elapsed = (time.perf_counter() - started) * 1000
    return msearch_responses(dict(response), index), elapsed


def msearch_responses(response: Mapping[str, Any], index: str) -> list[dict[str, Any]]:
    """The responses of an ``_msearch`` answer; ``ClusterError`` for one that failed
    (``UnsupportedFeatureError`` where the engine does not know the query)."""
    out = []
    for item in response.get("responses", []):
        error = item.get("error")
        if error is not None:
            reason = error.get("reason") if isinstance(error, Mapping) else str(error)
            kind = error.get("type", "") if isinstance(error, Mapping) else ""
            message = f"searching {index}: {item.get('status', '')} {kind}: {reason}".strip()
            if _UNSUPPORTED_ITEM.search(f"{kind} {reason}"):
                raise UnsupportedFeatureError(message)
            raise ClusterError(message)
        out.append(dict(item))
    return out


_UNSUPPORTED_ITEM = re.compile(
    r"unknown query|no \[query\] registered|No mapper found for type|unknown retriever",
    re.IGNORECASE,
)


def _hits(response: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(response.get("hits", {}).get("hits", []))


def _hit_key(hit: Mapping[str, Any]) -> str:
    return f"{hit.get('_index', '')}\x00{hit['_id']}"


def _total(response: Mapping[str, Any]) -> int:
    total = response.get("hits", {}).get("total", 0)
    return int(total.get("value", 0) if isinstance(total, Mapping) else total or 0)


def send(client: Any, index: str, request: SearchRequest) -> tuple[dict, float]:
    """Send a ``SearchRequest``; returns the response body and the round-trip time in ms."""
    started = time.perf_counter()
    response = call(
        lambda: client.search(index=index, body=request.body, **dict(request.params)),
        f"searching {index}",
    )
    return dict(response), (time.perf_counter() - started) * 1000


def hits_of(response: Mapping[str, Any], *, passages_field: str | None = None) -> tuple[Hit, ...]:
    """The hits of a search response. Each hit's passages come from the inner hits named
    ``passages_field`` (a passages query's, named after its field), or, when None, from any
    inner hits whose ``_source`` holds ``start`` and ``end``."""
    return tuple(
        Hit(
            id=str(h["_id"]),
            score=float(h["_score"] or 0.0),
            source=h.get("_source") or {},
            passages=passages_of(h, passages_field),
        )
        for h in response.get("hits", {}).get("hits", [])
    )


def passages_of(hit: Mapping[str, Any], field: str | None = None) -> tuple[Passage, ...]:
    """A hit's matching passages from its inner hits, best first. Pure.

    >>> inner = {"_score": 2.5, "_nested": {"field": "sp", "offset": 1},
    ...          "_source": {"start": 640, "end": 1490}}
    >>> passages_of({"inner_hits": {"sp": {"hits": {"hits": [inner]}}}})
    (Passage(start=640, end=1490, score=2.5),)
    """
    groups = hit.get("inner_hits") or {}
    names = list(groups) if field is None else [field]
    found = []
    for name in names:
        for inner in (groups.get(name) or {}).get("hits", {}).get("hits", []):
            source = inner.get("_source") or {}
            start, end = source.get(defaults.PASSAGE_START), source.get(defaults.PASSAGE_END)
            if start is None or end is None:
                continue
            found.append(Passage(int(start), int(end), float(inner.get("_score") or 0.0)))
    return tuple(sorted(found, key=lambda p: -p.score))


# ---------------------------------------------------------------------- explain
def contributions(
    query: Mapping[str, float],
    document: Mapping[str, float],
    *,
    token_of: Any = unescape_key,
) -> tuple[TokenContribution, ...]:
    """Per-key ``query weight x stored document weight`` for the keys both have. Pure.

    ``document`` holds the weights as indexed; they are rounded to the engine's storage
    precision here, so the contributions add up to the engine's score.
    """
    common = [key for key in query if key in document]
    stored = stored_precision([float(document[key]) for key in common])
    out = [
        TokenContribution(
            token=token_of(key),
            key=key,
            query_weight=float(query[key]),
            doc_weight=float(s),
            contribution=float(query[key]) * float(s),
        )
        for key, s in zip(common, stored, strict=True)
    ]
    return tuple(sorted(out, key=lambda c: -c.contribution))


def explain(
    client: ClientOrCluster,
    index: str,
    doc_id: str,
    vector: QueryVector,
    *,
    builder: QueryBuilder,
) -> Explanation:
    """The matched tokens of document ``doc_id`` for a query vector, with query weight,
    stored document weight and contribution; they sum to the document's ``_score`` for the
    (non-hybrid) query ``builder`` makes of ``vector``, which is read too (``engine_score``).
    ``EmptyQueryError`` when the query has no tokens."""
    connection = client_of(client)
    response = call(
        lambda: connection.search(index=index, body=explain_body(builder, doc_id)),
        f"reading {doc_id}",
    )
    document = stored_vector(response, builder, doc_id, index)
    scored = score_request(builder, vector, doc_id)
    return explanation(builder, vector, doc_id, document, send(connection, index, scored)[0])


# Pure pieces of ``explain``, shared with ``splade_es.aio``.
def explain_body(builder: QueryBuilder, doc_id: str) -> dict[str, Any]:
    """The search that reads document ``doc_id`` with its stored vector."""
    return {
        "query": {"ids": {"values": [doc_id]}},
        "_source": builder.dialect.source_with_vectors([builder.field]),
        "size": 1,
    }


StoredVector = Mapping[str, float] | Sequence[Mapping[str, Any]]
"""A document's stored vector, or (passages index) its passage objects."""


def stored_vector(
    response: Mapping[str, Any], builder: QueryBuilder, doc_id: str, index: str
) -> StoredVector:
    """The document's stored vector from the ``explain_body`` response; for a passages
    builder, its passages (objects with ``vector``, ``start``, ``end``)."""
    hits = hits_of(response)
    if not hits:
        raise InputError(f"document {doc_id!r} not found in {index!r}")
    document = hits[0].source.get(builder.field)
    if builder.passages:
        # One passage may be stored as an object rather than a one-element list.
        document = [document] if isinstance(document, Mapping) else document
        if isinstance(document, list) and all(isinstance(p, Mapping) for p in document):
            return document
    elif isinstance(document, Mapping):
        return document
    raise InputError(
        f"document {doc_id!r} has no {builder.field!r} vector in _source", field=builder.field
    )


def score_request(builder: QueryBuilder, vector: QueryVector, doc_id: str) -> SearchRequest:
    """The same query, restricted to the document (a filter does not change scores)."""
    return builder.search_request(vector, k=1, filters=[{"ids": {"values": [doc_id]}}]).request


def explanation(
    builder: QueryBuilder,
    vector: QueryVector,
    doc_id: str,
    document: StoredVector,
    scored_response: Mapping[str, Any],
) -> Explanation:
    """``Explanation`` from the stored vector and the ``score_request`` response; for
    passages, of the passage with the highest dot product (the one the engine scores the
    document by). ``EmptyQueryError`` when the query has no tokens."""
    query, _ = builder.prune(vector)
    scored_hits = hits_of(scored_response)
    namer = token_namer(builder, vector.vocab if isinstance(vector, SparseBatch) else None)
    passage = None
    if isinstance(document, Mapping):
        parts = contributions(query, document, token_of=namer)
    else:
        passage, parts = best_passage(query, document, token_of=namer)
    return Explanation(
        doc_id=doc_id,
        contributions=parts,
        engine_score=scored_hits[0].score if scored_hits else None,
        passage=passage,
    )


def best_passage(
    query: Mapping[str, float],
    passages: Sequence[Mapping[str, Any]],
    *,
    token_of: Any = unescape_key,
) -> tuple[Passage | None, tuple[TokenContribution, ...]]:
    """The passage (of objects with ``vector``, ``start``, ``end``) with the highest stored
    precision dot product with ``query`` (the first of equals), and its contributions; None
    and no contributions when no passage shares a key with the query. Pure."""
    best: tuple[Passage | None, tuple[TokenContribution, ...]] = (None, ())
    for stored in passages:
        parts = contributions(query, stored.get(defaults.PASSAGE_VECTOR) or {}, token_of=token_of)
        if not parts:
            continue
        score = math.fsum(c.contribution for c in parts)
        if best[0] is None or score > best[0].score:
            start, end = stored.get(defaults.PASSAGE_START), stored.get(defaults.PASSAGE_END)
            passage = Passage(int(start or 0), int(end or 0), score)
            best = (passage, parts)
    return best


def token_namer(builder: QueryBuilder, vocab: Sequence[str] | None) -> Callable[[str], str]:
    """Feature key -> readable token, for ``contributions`` (integer-id keys need the
    model's vocabulary; without it they stay ids)."""
    if builder.scheme == "id" and vocab is not None:
        return builder.codec(vocab).token
    return unescape_key
