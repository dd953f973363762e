"""QueryBuilder: a SPLADE query vector -> a plain-dict request for one engine dialect.

No cluster needed, so any application can build bodies and send them with its own client::

    from splade_es import QueryBuilder, SpladeEncoder

    encoder = SpladeEncoder.from_pretrained("naver/splade-v3")
    builder = QueryBuilder.for_engine("elasticsearch", version="8.15", field="splade")
    query = builder.sparse_query(encoder.encode_queries(["tax depreciation"]))
    es.search(index="docs", query=query)          # _score == SPLADE dot product

``QueryBuilder.for_index(client, index)`` reads engine, version, field type and the clause
limit from the cluster instead.

``passages=True`` (found in the mapping by ``for_index``): the field is ``nested``, one object
per passage of a long document (``{"vector": {...}, "start": 0, "end": 812}``); the query is
a ``nested`` query whose score is the best passage's dot product, and it asks for the best
matching passages (inner hits: start, end, score) of each hit.

Pruning (``QueryPruning``) keeps the heaviest tokens: top-k, a minimum weight, a kept fraction
of the total weight, and never more tokens than the cluster's bool clause limit. What was cut
is reported (``PruneReport``), never an error, unless nothing is left: a query without tokens
raises ``EmptyQueryError`` (it would match nothing; sent as an empty ``bool`` query it would
match every document with score 1.0). In a hybrid query the empty SPLADE part matches nothing
and BM25 alone ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import defaults
from .connect import ClientOrCluster, Version, call, client_of
from .engines import (
    FIELD_TYPES,
    Dialect,
    FieldType,
    Hybrid,
    QueryStyle,
    SearchRequest,
    dialect_for,
    dialect_of,
)
from .engines.base import DEFAULT_CLAUSE_LIMIT, with_filters
from .exceptions import ClusterError, ConfigurationError, EmptyQueryError
from .sparse import SparseBatch
from .tokens import TokenCodec, escape_token, is_storable

log = logging.getLogger(__name__)

QueryVector = SparseBatch | Mapping[str, float]


@dataclass(frozen=True, kw_only=True)
class QueryPruning:
    """Which query tokens to keep, heaviest first. ``None`` = no limit of that kind.

    ``mass``: keep the fewest heaviest tokens whose weights sum to at least this fraction of
    the total (0.9 keeps 90% of the query's weight).
    """

    top_k: int | None = None
    min_weight: float | None = None
    mass: float | None = None

    def describe(self) -> str:
        """``"top 5, minimum weight 0.3"``: the limits in words, for messages."""
        parts = []
        if self.top_k is not None:
            parts.append(f"top {self.top_k}")
        if self.min_weight is not None:
            parts.append(f"minimum weight {self.min_weight:g}")
        if self.mass is not None:
            parts.append(f"{100 * self.mass:g}% of the weight")
        return ", ".join(parts) or "none"

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ConfigurationError.bad_value("top_k", self.top_k, "must be >= 1")
        if self.min_weight is not None and self.min_weight < 0:
            raise ConfigurationError.bad_value("min_weight", self.min_weight, "must be >= 0")
        if self.mass is not None and not 0.0 < self.mass <= 1.0:
            raise ConfigurationError.bad_value("mass", self.mass, "must be in (0, 1]")


@dataclass(frozen=True)
class PruneReport:
    """What pruning did to one query."""

    kept: int
    dropped: int
    kept_weight: float  # fraction of the query's total weight that was kept
    clause_limited: bool  # True when the clause limit (not the user's pruning) cut tokens

    @property
    def pruned(self) -> bool:
        return self.dropped > 0

    @property
    def empty(self) -> bool:
        """No token left: the query matches nothing."""
        return self.kept == 0


def prune_features(
    features: Mapping[str, float], pruning: QueryPruning, *, max_clauses: int | None = None
) -> tuple[dict[str, float], PruneReport]:
    """The kept ``{key: weight}`` (heaviest first) and what was cut. Pure function.

    >>> prune_features({"a": 1.0, "b": 3.0, "c": 0.5}, QueryPruning(top_k=2))[0]
    {'b': 3.0, 'a': 1.0}
    >>> prune_features({"a": 1.0, "b": 3.0}, QueryPruning(), max_clauses=1)[1].clause_limited
    True
    """
    ranked = sorted(features.items(), key=lambda kv: (-kv[1], kv[0]))
    total = math.fsum(w for _, w in ranked)
    kept = ranked
    if pruning.min_weight is not None:
        kept = [(k, w) for k, w in kept if w >= pruning.min_weight]
    if pruning.top_k is not None:
        kept = kept[: pruning.top_k]
    if pruning.mass is not None and total > 0:
        running, cut = 0.0, len(kept)
        for i, (_, w) in enumerate(kept):
            running += w
            if running >= pruning.mass * total * (1 - 1e-12):
                cut = i + 1
                break
        kept = kept[:cut]
    clause_limited = max_clauses is not None and len(kept) > max_clauses
    if clause_limited:
        kept = kept[:max_clauses]
    kept_weight = math.fsum(w for _, w in kept) / total if total > 0 else 1.0
    report = PruneReport(
        kept=len(kept),
        dropped=len(ranked) - len(kept),
        kept_weight=kept_weight,
        clause_limited=clause_limited,
    )
    return dict(kept), report


@dataclass(frozen=True)
class PreparedSearch:
    """A search request ready to send, the query features it holds, and their pruning."""

    request: SearchRequest
    features: Mapping[str, float]
    prune: PruneReport


class QueryBuilder:
    """Builds exact-dot-product SPLADE queries for one dialect, field and field type."""

    def __init__(
        self,
        dialect: Dialect,
        *,
        field: str = defaults.VECTOR_FIELD,
        field_type: FieldType = defaults.FIELD_TYPE,
        style: QueryStyle | None = None,
        pruning: QueryPruning | None = None,
        max_clauses: int | None = None,
        options: Mapping[str, Any] | None = None,
        passages: bool = False,
        passage_hits: int = defaults.PASSAGE_HITS,
    ) -> None:
        if passages:
            dialect.check_passages(field_type)
        else:
            dialect.check_field_type(field_type)
        if passage_hits < 0:
            raise ConfigurationError.bad_value("passage_hits", passage_hits, "must be >= 0")
        self.dialect = dialect
        self.field = field
        self.field_type = field_type
        self.passages = passages
        self.passage_hits = passage_hits
        self.style = dialect.style_for(field_type, style)
        self.pruning = pruning or QueryPruning()
        self.max_clauses = max_clauses
        self.options = dict(options or {})
        self.scheme = dialect.key_scheme(field_type)
        self._codecs: dict[int, TokenCodec] = {}

    def __repr__(self) -> str:
        return (
            f"QueryBuilder({self.dialect!r}, field={self.field!r}, "
            f"field_type={self.field_type!r}, style={self.style!r}"
            + (", passages=True)" if self.passages else ")")
        )

    @property
    def vector_field(self) -> str:
        """The field the sparse clause scores: ``field``, or ``<field>.vector`` for passages."""
        return f"{self.field}.{defaults.PASSAGE_VECTOR}" if self.passages else self.field

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_engine(
        cls, engine: str, *, version: str | Version = "8.15.0", **options: Any
    ) -> QueryBuilder:
        """A builder for an engine name and version, no cluster involved."""
        return cls(dialect_for(engine, version), **options)

    @classmethod
    def for_index(
        cls,
        client: ClientOrCluster,
        index: str,
        *,
        field: str = defaults.VECTOR_FIELD,
        **options: Any,
    ) -> QueryBuilder:
        """A builder for an existing index: engine and version from ``info()``, the field
        type and layout (``passages`` for a nested field) from the index mapping, the clause
        limit from the cluster settings.
        ``client``: an Elasticsearch or OpenSearch client, or a ``Cluster`` from ``connect``."""
        dialect = dialect_of(client)
        client = client_of(client)
        if "field_type" not in options or "passages" not in options:
            layout = field_layout_of(client, index, field)
            options.setdefault("field_type", layout.field_type)
            options.setdefault("passages", layout.passages)
        options.setdefault("max_clauses", clause_limit_of(client, dialect))
        return cls(dialect, field=field, **options)

    # ------------------------------------------------------------------ vectors -> features
    def codec(self, vocab: Sequence[str]) -> TokenCodec:
        """The codec of ``vocab`` under this field type's key scheme (cached)."""
        codec = self._codecs.get(id(vocab))
        if codec is None:
            codec = self._codecs[id(vocab)] = TokenCodec(vocab, scheme=self.scheme)
        return codec

    def features(self, vector: QueryVector) -> dict[str, float]:
        """Feature keys and weights of a query: a one-row ``SparseBatch`` (special tokens
        dropped) or a ``{token: weight}`` dict."""
        if isinstance(vector, SparseBatch):
            if len(vector) != 1:
                raise ConfigurationError(f"expected a one-row query batch, got {len(vector)} rows")
            return self.codec(vector.vocab).encode(vector, 0)
        if self.scheme == "id":
            raise ConfigurationError(
                "this field stores token ids: pass the SparseBatch from encode_queries "
                "(its vocabulary maps tokens to ids), not a {token: weight} dict"
            )
        return {
            escape_token(token): float(w) for token, w in vector.items() if is_storable(float(w))
        }

    def prune(
        self, vector: QueryVector, *, reserve: int = 0, pruning: QueryPruning | None = None
    ) -> tuple[dict[str, float], PruneReport]:
        """Pruned features of ``vector``; ``reserve`` clauses are left for other query parts.
        ``pruning`` replaces the builder's own for this call."""
        limit = None if self.max_clauses is None else max(1, self.max_clauses - reserve)
        kept, report = prune_features(
            self.features(vector), pruning or self.pruning, max_clauses=limit
        )
        if report.clause_limited:
            log.warning(
                "query pruned to %d tokens (cluster clause limit %s); kept %.1f%% of its weight",
                report.kept,
                self.max_clauses,
                100 * report.kept_weight,
            )
        return kept, report

    # ------------------------------------------------------------------ queries
    def sparse_query(
        self,
        vector: QueryVector,
        *,
        filters: Sequence[dict[str, Any]] = (),
        reserve: int = 0,
        pruning: QueryPruning | None = None,
    ) -> dict[str, Any]:
        """The query clause: its score is the dot product of ``vector`` with each document.
        ``EmptyQueryError`` when no token is left to search for."""
        kept, report = self.prune(vector, reserve=reserve, pruning=pruning)
        self._require_tokens(report)
        query = self._clause(kept)
        return with_filters(query, filters)

    def _require_tokens(self, report: PruneReport) -> None:
        if not report.empty:
            return
        if report.dropped:
            raise EmptyQueryError(
                f"nothing to search for: pruning ({self.pruning.describe()}) removed all "
                f"{report.dropped} query tokens"
            )
        raise EmptyQueryError("nothing to search for: the query has no tokens with a weight")

    def _clause(self, features: Mapping[str, float], *, inner_hits: bool = True) -> dict[str, Any]:
        """The dialect's query for already-pruned features, on this builder's field; for
        passages, wrapped in the nested query (with its inner hits unless ``inner_hits`` is
        False)."""
        sparse = self.dialect.sparse_query(
            features,
            field=self.vector_field,
            field_type=self.field_type,
            style=self.style,
            options=self.options,
        )
        if not self.passages:
            return sparse
        hits = self.passage_hits if inner_hits else 0
        return self.dialect.passage_query(sparse, field=self.field, inner_hits=hits)

    def search_request(
        self,
        vector: QueryVector,
        *,
        k: int = defaults.TOP_K,
        text: str | None = None,
        filters: Sequence[dict[str, Any]] = (),
        hybrid: Hybrid | None = None,
        source: Any = True,
        pruning: QueryPruning | None = None,
    ) -> PreparedSearch:
        """A whole search request (body + URL params), with the features and pruning report.

        With ``hybrid``, ``text`` is also matched with BM25 on ``hybrid.text_fields``.
        """
        lexical = None
        reserve = 0
        if hybrid is not None:
            if not text:
                raise ConfigurationError("a hybrid search needs the query text")
            lexical = self.dialect.lexical_query(text, hybrid.text_fields)
            # multi_match expands to about one clause per term and field.
            reserve = len(text.split()) * len(hybrid.text_fields) + 1
        kept, report = self.prune(vector, reserve=reserve, pruning=pruning)
        if hybrid is None:
            self._require_tokens(report)
        if report.empty:
            # Every document's dot product with an empty query is 0: match_none, so that BM25
            # alone ranks (an empty bool would add a constant 1.0 to every document).
            # elastic/elasticsearch and opensearch-project/OpenSearch (main):
            # server/src/main/java/org/{elasticsearch,opensearch}/index/query/
            # MatchNoneQueryBuilder.java -> MatchNoDocsQuery.
            log.warning("no SPLADE query tokens left; the hybrid query ranks by BM25 alone")
            sparse: dict[str, Any] = {"match_none": {}}
        else:
            sparse = self._clause(kept, inner_hits=self.dialect.inner_hits_with(hybrid))
        request = self.dialect.search_request(
            sparse, k=k, filters=filters, lexical=lexical, hybrid=hybrid, source=source
        )
        return PreparedSearch(request=request, features=kept, prune=report)


# ---------------------------------------------------------------------- cluster reads
@dataclass(frozen=True)
class FieldLayout:
    """How an index stores its vectors: the sparse field type, and whether the field is the
    passages layout (``nested``, the vector in ``<field>.vector``)."""

    field_type: FieldType
    passages: bool = False


def field_layout_of(client: ClientOrCluster, index: str, field: str) -> FieldLayout:
    """The sparse field's type and layout in ``index``'s mapping (``field_layout_from_mapping``)."""
    connection = client_of(client)
    mappings = call(lambda: connection.indices.get_mapping(index=index), f"reading {index} mapping")
    return field_layout_from_mapping(dict(mappings), index, field)


def field_type_of(client: ClientOrCluster, index: str, field: str) -> FieldType:
    """The sparse field's type in ``index``'s mapping (``field_type_from_mapping``)."""
    return field_layout_of(client, index, field).field_type


def field_type_from_mapping(mappings: Mapping[str, Any], index: str, field: str) -> FieldType:
    """The sparse field's type from a ``GET <index>/_mapping`` response (several indices for
    an alias or pattern: those without the field are skipped, the others must agree); for a
    passages field, its ``vector`` sub-field's type. Pure.

    >>> m = {"a": {"mappings": {"properties": {"splade": {"type": "rank_features"}}}}}
    >>> field_type_from_mapping(m, "a", "splade")
    'rank_features'
    """
    return field_layout_from_mapping(mappings, index, field).field_type


def field_layout_from_mapping(mappings: Mapping[str, Any], index: str, field: str) -> FieldLayout:
    """``field_type_from_mapping`` plus whether the field is the passages layout: ``nested``
    with a sparse ``vector`` sub-field. Pure.

    >>> vector = {"type": "rank_features"}
    >>> nested = {"type": "nested", "properties": {"vector": vector}}
    >>> field_layout_from_mapping({"a": {"mappings": {"properties": {"sp": nested}}}}, "a", "sp")
    FieldLayout(field_type='rank_features', passages=True)
    """
    if not mappings:
        raise ConfigurationError(f"index {index!r} not found")
    kinds = {
        name: _field_kind(body.get("mappings", {}).get("properties", {}).get(field, {}))
        for name, body in mappings.items()
    }
    layouts = {layout for kind in kinds.values() if (layout := _layout(kind)) is not None}
    if len(layouts) == 1:
        return layouts.pop()
    if len(layouts) > 1:
        listing = ", ".join(f"{name}: {kind}" for name, kind in sorted(kinds.items()) if kind)
        raise ConfigurationError(
            f"the indices of {index!r} disagree on the type of field {field!r} ({listing})"
        )
    other = sorted({kind for kind in kinds.values() if kind})
    raise ConfigurationError(
        f"index {index!r} has no rank_features or sparse_vector field {field!r}"
        + (f" (it is {', '.join(other)})" if other else "")
    )


_PASSAGES_KIND = "nested:"


def _field_kind(mapping: Mapping[str, Any]) -> str | None:
    """A field mapping's type; ``"nested:<type>"`` for a nested field with a typed ``vector``
    sub-field (the passages layout); None when unmapped."""
    kind = mapping.get("type")
    if kind != "nested":
        return None if kind is None else str(kind)
    vector = mapping.get("properties", {}).get(defaults.PASSAGE_VECTOR, {}).get("type")
    return f"{_PASSAGES_KIND}{vector}" if vector else "nested"


def _layout(kind: str | None) -> FieldLayout | None:
    """The layout of a ``_field_kind``, or None when it holds no sparse vectors."""
    if kind is None:
        return None
    name = kind.removeprefix(_PASSAGES_KIND)
    field_type = next((t for t in FIELD_TYPES if t == name), None)
    return None if field_type is None else FieldLayout(field_type, name != kind)


def clause_limit_of(client: ClientOrCluster, dialect: Dialect) -> int:
    """The cluster's bool clause limit (1024 when it cannot be read)."""
    connection = client_of(client)
    try:
        settings = call(
            lambda: connection.cluster.get_settings(include_defaults=True, flat_settings=True),
            "reading cluster settings",
        )
    except ClusterError:  # permission to read settings is not required to search
        log.info(
            "could not read cluster settings; assuming a clause limit of %d", DEFAULT_CLAUSE_LIMIT
        )
        return DEFAULT_CLAUSE_LIMIT
    return dialect.clause_limit(dict(settings))
