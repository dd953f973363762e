"""The Dialect interface: everything that differs between engines and versions lives in a
dialect, and nowhere else.

A dialect turns engine-neutral inputs (feature dicts made by ``TokenCodec``, user filters, a
lexical query) into the request bodies one engine version understands, and says what that
version can do. Bodies are plain dicts any application can send; the few calls whose client
method differs per engine (point-in-time readers) are made here too, and nothing else.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, Literal

from .. import defaults
from ..connect import Engine, Version
from ..exceptions import ConfigurationError, UnsupportedFeatureError
from ..fusion import NORMALIZERS, FusionRules, Normalizer
from ..tokens import KeyScheme

FieldType = Literal["rank_features", "sparse_vector"]
QueryStyle = Literal["rank_feature", "sparse_vector", "neural_sparse"]
HybridMethod = Literal["sum", "rrf", "linear"]

FIELD_TYPES: tuple[FieldType, ...] = ("rank_features", "sparse_vector")
HYBRID_METHODS: tuple[HybridMethod, ...] = ("sum", "rrf", "linear")
DEFAULT_CLAUSE_LIMIT = 1024
CLAUSE_LIMIT_SETTING = "indices.query.bool.max_clause_count"

Query = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Hybrid:
    """How to mix BM25 into a SPLADE query.

    ``method``:
      ``"sum"``    ``bm25_weight * BM25 + (1 - bm25_weight) * SPLADE`` in one ``bool`` query;
                   raw scores, every engine and version.
      ``"linear"`` min-max normalised scores, then the same weighted sum: Elasticsearch
                   ``linear`` retriever (8.18+), OpenSearch ``hybrid`` query with a
                   ``normalization-processor`` search pipeline (2.10+).
      ``"rrf"``    reciprocal rank fusion: Elasticsearch ``rrf`` retriever (8.14+),
                   OpenSearch ``score-ranker-processor`` pipeline (2.19+). Weights unused.
    Elasticsearch's retrievers need an Enterprise or trial license.
    ``normalizer`` (``linear``): ``"min_max"`` (the default) or ``"l2"`` (each list divided by
    the L2 norm of its scores: OpenSearch ``l2``, Elasticsearch ``l2_norm``, 8.19 / 9.1+).
    """

    bm25_weight: float = 0.5
    method: HybridMethod = "sum"
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS
    rank_window_size: int = 100
    rank_constant: int = 60
    pipeline: str | None = None  # OpenSearch search pipeline name (linear/rrf)
    normalizer: Normalizer = "min_max"

    def __post_init__(self) -> None:
        if not 0.0 <= self.bm25_weight <= 1.0:
            raise ConfigurationError.bad_value("bm25_weight", self.bm25_weight, "must be in [0, 1]")
        if self.method not in HYBRID_METHODS:
            raise ConfigurationError.bad_value(
                "method", self.method, f"must be one of {HYBRID_METHODS}"
            )
        if not self.text_fields:
            raise ConfigurationError("a hybrid query needs at least one text field")
        # Both engines refuse a constant below 1; OpenSearch also above 10,000 (neural-search
        # RRFNormalizationTechnique.validateRankConstant).
        if not 1 <= self.rank_constant <= 10_000:
            raise ConfigurationError.bad_value(
                "rank_constant", self.rank_constant, "must be in [1, 10000]"
            )
        if self.rank_window_size < 1:
            raise ConfigurationError.bad_value(
                "rank_window_size", self.rank_window_size, "must be >= 1"
            )
        if self.normalizer not in NORMALIZERS:
            raise ConfigurationError.bad_value(
                "normalizer", self.normalizer, f"must be one of {NORMALIZERS}"
            )

    @property
    def pipeline_name(self) -> str:
        """The search pipeline this hybrid uses on OpenSearch (named after its parameters)."""
        if self.pipeline:
            return self.pipeline
        if self.method == "rrf":
            return f"splade-es-hybrid-rrf-{self.rank_constant}"
        kind = "linear" if self.normalizer == "min_max" else f"linear-{self.normalizer}"
        return f"splade-es-hybrid-{kind}-{round(self.bm25_weight * 1000):04d}"


@dataclass(frozen=True)
class SearchRequest:
    """A search body plus URL parameters (``search_pipeline`` on OpenSearch)."""

    body: Query
    params: Mapping[str, str] = field(default_factory=dict)


class Dialect(ABC):
    """One engine at one version. Subclasses fill in the engine-specific parts."""

    engine: ClassVar[Engine]

    def __init__(self, version: Version) -> None:
        self.version = version

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'.'.join(map(str, self.version))})"

    # ------------------------------------------------------------------ capabilities
    @abstractmethod
    def field_types(self) -> tuple[FieldType, ...]:
        """Sparse field types this version can store."""

    @abstractmethod
    def query_styles(self, field_type: FieldType) -> tuple[QueryStyle, ...]:
        """Query styles that score ``field_type`` with the exact dot product; first = default."""

    @abstractmethod
    def hybrid_methods(self) -> tuple[HybridMethod, ...]:
        """Hybrid methods this version supports."""

    def key_scheme(self, field_type: FieldType) -> KeyScheme:
        """The TokenCodec scheme for feature keys of ``field_type``."""
        return "token"

    def required_plugin(self, capability: str) -> str | None:
        """The engine plugin a capability (``"field:<type>"``, ``"query:<style>"``,
        ``"hybrid:<method>"``) needs beyond a default install, or None."""
        return None

    def required_license(self, capability: str) -> str | None:
        """The license level a capability needs, or None (any license)."""
        return None

    def check_field_type(self, field_type: FieldType) -> None:
        if field_type not in FIELD_TYPES:
            raise ConfigurationError(
                f"unknown field type {field_type!r}: expected one of {FIELD_TYPES}"
            )
        if field_type not in self.field_types():
            raise UnsupportedFeatureError(
                f"{self.engine} {self.version_text} has no {field_type!r} field "
                f"({self._field_type_requirement(field_type)}); use rank_features"
            )

    def check_passages(self, field_type: FieldType) -> None:
        """Refuse the passages layout (a ``nested`` vector field, one object per passage, scored
        by its best passage) where this version cannot store or score it as the exact dot
        product. ``ConfigurationError`` with the reason; an unknown or missing field type is
        ``check_field_type``'s error."""
        self.check_field_type(field_type)
        reason = self._passages_refusal(field_type)
        if reason:
            raise ConfigurationError(
                f"{self.engine} {self.version_text} cannot keep passages in a "
                f"{field_type!r} field: {reason}"
            )

    def _passages_refusal(self, field_type: FieldType) -> str | None:
        """Why ``field_type`` cannot hold passages on this version, or None (it can)."""
        return None

    def inner_hits_with(self, hybrid: Hybrid | None) -> bool:
        """Whether a request of this kind returns a passages query's inner hits (the matching
        passages). A plain or ``sum`` query is one ``bool`` query: always. A fused hybrid
        runs the sparse query inside the engine's fusion, which may drop them."""
        if hybrid is None or hybrid.method == "sum":
            return True
        return self._fused_inner_hits()

    def _fused_inner_hits(self) -> bool:
        return False

    def style_for(self, field_type: FieldType, style: QueryStyle | None) -> QueryStyle:
        """The query style to use: ``style`` if this version supports it, else the default."""
        styles = self.query_styles(field_type)
        if not styles:
            raise UnsupportedFeatureError(
                f"{self.engine} {self.version_text} cannot query a {field_type!r} field "
                "by vector; use rank_features"
            )
        if style is None:
            return styles[0]
        if style not in styles:
            raise UnsupportedFeatureError(
                f"{self.engine} {self.version_text} cannot use a {style!r} query on a "
                f"{field_type!r} field; available: {', '.join(styles)}"
            )
        return style

    def check_hybrid(self, hybrid: Hybrid) -> None:
        if hybrid.method not in self.hybrid_methods():
            raise UnsupportedFeatureError(
                f"{self.engine} {self.version_text} does not support hybrid method "
                f"{hybrid.method!r}; available: {', '.join(self.hybrid_methods())}"
            )
        missing = self._hybrid_option_refusal(hybrid)
        if missing:
            raise UnsupportedFeatureError(f"{self.engine} {self.version_text}: {missing}")

    def _hybrid_option_refusal(self, hybrid: Hybrid) -> str | None:
        """Why this version cannot run ``hybrid``'s options (its method being supported), or
        None."""
        return None

    # ------------------------------------------------------------------ fusion
    @abstractmethod
    def fusion_rules(self) -> FusionRules:
        """How this engine fuses a ``linear`` / ``rrf`` hybrid (``splade_es.fusion``): what a
        client must compute to rank and score as the engine does."""

    def fusion_window(self, hybrid: Hybrid, k: int) -> int:
        """How many hits of each side (BM25, SPLADE) the engine fuses for a ``k``-hit
        ``search_request`` with ``hybrid``: the window a client-side fusion must use."""
        return max(hybrid.rank_window_size, k)

    def plugin_listed(self, plugin: str, plugins: Sequence[str]) -> bool:
        """Whether ``plugins`` (the ``_cat/plugins`` components) hold ``plugin``."""
        return plugin in plugins

    def license_covers(self, level: str, license: str | None) -> bool:
        """Whether ``license`` (as ``read_license`` reads it; None: unknown) is at least
        ``level`` (a ``required_license`` answer)."""
        return True

    def engine_fusion_refusal(
        self, hybrid: Hybrid, *, plugins: Sequence[str] | None, license: str | None
    ) -> str | None:
        """Why this cluster cannot fuse ``hybrid`` itself (its version, a plugin it lacks, its
        license), or None when it can (``sum`` needs nothing: one ``bool`` query). ``plugins``
        and ``license`` as ``doctor`` reads them; None where they could not be read, which
        counts as lacking what is needed."""
        if hybrid.method == "sum":
            return None
        if hybrid.method not in self.hybrid_methods():
            return f"{self.engine} {self.version_text} has no {hybrid.method} hybrid"
        missing = self._hybrid_option_refusal(hybrid)
        if missing:
            return f"{self.engine} {self.version_text}: {missing}"
        capability = f"hybrid:{hybrid.method}"
        plugin = self.required_plugin(capability)
        if plugin and (plugins is None or not self.plugin_listed(plugin, plugins)):
            unread = " (the plugin list could not be read)" if plugins is None else ""
            return f"the {hybrid.method} hybrid needs the {plugin} plugin{unread}"
        level = self.required_license(capability)
        if level and not self.license_covers(level, license):
            return (
                f"the {hybrid.method} hybrid needs an {level} (or trial) license; the "
                f"cluster's is {license or 'unknown'}"
            )
        return None

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def since(self, *version: int) -> bool:
        return self.version >= tuple(version)

    # ------------------------------------------------------------------ index bodies
    def index_body(
        self,
        field_type: FieldType = defaults.FIELD_TYPE,
        *,
        sparse_field: str = defaults.VECTOR_FIELD,
        shards: int = 1,
        replicas: int = 1,
        passages: bool = False,
    ) -> dict[str, Any]:
        """The ``PUT /<index>`` body from ``mappings/<engine>.<field_type>.json``, adjusted
        to this version, with the sparse field renamed to ``sparse_field``.

        ``passages``: the field is ``nested``, one object per passage of a long document:
        ``{"vector": <the sparse field as above>, "start": integer, "end": integer}``
        (sub-field names ``defaults.PASSAGE_*``); query it with ``passage_query``."""
        if passages:
            self.check_passages(field_type)
        else:
            self.check_field_type(field_type)
        if not sparse_field or "." in sparse_field:
            raise ConfigurationError.bad_value(
                "sparse_field", sparse_field, "must be a field name without '.'"
            )
        body = copy.deepcopy(load_template(self.engine, field_type))
        body["settings"]["number_of_shards"] = shards
        body["settings"]["number_of_replicas"] = replicas
        properties = body["mappings"]["properties"]
        properties[sparse_field] = properties.pop("splade")  # the templates' field name
        self._adjust_index_body(body, field_type, sparse_field)
        if passages:
            properties[sparse_field] = passages_mapping(properties[sparse_field])
        return body

    def _adjust_index_body(self, body: dict[str, Any], field_type: FieldType, field: str) -> None:
        """Version-specific edits of a template (nothing by default)."""
        return

    def _field_type_requirement(self, field_type: FieldType) -> str:
        return "not supported"

    # ------------------------------------------------------------------ queries
    def sparse_query(
        self,
        features: Mapping[str, float],
        *,
        field: str,
        field_type: FieldType = defaults.FIELD_TYPE,
        style: QueryStyle | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Query:
        """A query whose score is ``sum(features[key] * stored[key])`` over the doc's keys.

        ``options`` go into the engine's own query object (``pruning_config`` for an
        Elasticsearch ``sparse_vector`` query, ``method_parameters`` for OpenSearch
        ``neural_sparse`` on ``sparse_vector``).
        """
        style = self.style_for(field_type, style)
        if style == "rank_feature":
            if options:
                raise ConfigurationError("a rank_feature query takes no engine options")
            return rank_feature_query(features, field)
        return self._native_sparse_query(features, field, field_type, style, dict(options or {}))

    def passage_query(
        self, sparse: Query, *, field: str, inner_hits: int = defaults.PASSAGE_HITS
    ) -> Query:
        """``sparse`` (a ``sparse_query`` on ``<field>.vector``) over the passages of each
        document: a ``nested`` query on ``field`` whose score is the best passage's
        (``score_mode: max``), so a document scores its best passage's dot product.

        ``inner_hits`` > 0: each hit also returns its ``inner_hits`` best matching passages,
        best first, with their scores and ``start`` / ``end`` only (never the vectors)."""
        nested: dict[str, Any] = {"path": field, "score_mode": "max", "query": sparse}
        if inner_hits < 0:
            raise ConfigurationError.bad_value("inner_hits", inner_hits, "must be >= 0")
        if inner_hits:
            nested["inner_hits"] = {
                "size": inner_hits,
                # Nested inner hits filter the root document's _source by full paths, then
                # return the passage object alone: {"start": ..., "end": ...}.
                "_source": [f"{field}.{defaults.PASSAGE_START}", f"{field}.{defaults.PASSAGE_END}"],
            }
        return {"nested": nested}

    @abstractmethod
    def _native_sparse_query(
        self,
        features: Mapping[str, float],
        field: str,
        field_type: FieldType,
        style: QueryStyle,
        options: dict[str, Any],
    ) -> Query: ...

    def search_request(
        self,
        sparse: Query,
        *,
        k: int,
        filters: Sequence[Query] = (),
        lexical: Query | None = None,
        hybrid: Hybrid | None = None,
        source: Any = True,
    ) -> SearchRequest:
        """A full search request for ``sparse`` (a ``sparse_query``), filtered, optionally
        mixed with the ``lexical`` (BM25) query."""
        if hybrid is None:
            return SearchRequest(
                {"query": with_filters(sparse, filters), "size": k, "_source": source}
            )
        if lexical is None:
            raise ConfigurationError("a hybrid search needs the query text")
        self.check_hybrid(hybrid)
        if hybrid.method == "sum":
            query = {
                "bool": {
                    "should": [
                        {"bool": {"must": [sparse], "boost": 1.0 - hybrid.bm25_weight}},
                        {"bool": {"must": [lexical], "boost": hybrid.bm25_weight}},
                    ],
                    "minimum_should_match": 1,
                }
            }
            return SearchRequest(
                {"query": with_filters(query, filters), "size": k, "_source": source}
            )
        return self._fused_request(sparse, lexical, hybrid, k=k, filters=filters, source=source)

    @abstractmethod
    def _fused_request(
        self,
        sparse: Query,
        lexical: Query,
        hybrid: Hybrid,
        *,
        k: int,
        filters: Sequence[Query],
        source: Any,
    ) -> SearchRequest: ...

    def hybrid_pipeline_body(self, hybrid: Hybrid) -> dict[str, Any] | None:
        """The search pipeline ``hybrid`` needs on this engine, or None (no pipeline)."""
        return None

    def lexical_query(self, text: str, fields: Sequence[str]) -> Query:
        """The BM25 side of a hybrid (and of ``--mode bm25``)."""
        return {"multi_match": {"query": text, "fields": list(fields)}}

    def source_with_vectors(self, fields: Sequence[str]) -> Any:
        """A ``_source`` spec that returns ``fields``, sparse vectors included."""
        return list(fields)

    def full_source(self) -> Any:
        """The ``_source`` spec of every request that reads whole documents back (the
        migration reader, verification): every field, vector fields included."""
        return True

    # ------------------------------------------------------------------ reading an index
    def pit_sort(self) -> list[Any] | None:
        """Sort for paging a point-in-time reader with ``search_after``; ``None`` when this
        version has no unique tiebreaker (read with a scroll instead)."""
        return ["_shard_doc"]

    def check_pit_reader(self) -> list[Any]:
        """The point-in-time sort, or a clear error where this version has none."""
        sort = self.pit_sort()
        if sort is None:
            raise UnsupportedFeatureError(
                f"{self.engine} {self.version_text} has no _shard_doc tiebreaker, so a "
                "point-in-time reader cannot page exactly across shards; read with a scroll "
                "(method='scroll', or 'auto' which picks it)"
            )
        return sort

    # ------------------------------------------------------------------ copying an index
    def copyable_settings(self, index_settings: Mapping[str, Any]) -> dict[str, Any]:
        """An index's settings (the nested ``settings.index`` of ``GET /<index>``) without
        what the cluster generated or what belongs to that index alone, so they can create a
        copy of it. Allocation filters and other user choices are kept. Pure."""
        settings = copy.deepcopy(dict(index_settings))
        for key in _GENERATED_SETTINGS:
            settings.pop(key, None)
        routing = settings.get("routing")
        if isinstance(routing, dict) and isinstance(routing.get("allocation"), dict):
            # Set by shrink/split/clone for the source's own shards (a node id): not a choice.
            routing["allocation"].pop("initial_recovery", None)
        self._drop_private_settings(settings)
        return _without_empty(settings)

    def _drop_private_settings(self, settings: dict[str, Any]) -> None:
        """Remove this engine's settings that describe one index's storage or origin."""
        return

    @abstractmethod
    def open_pit(self, client: Any, index: str, keep_alive: str) -> str:
        """Open a point-in-time reader on ``index``; returns its id."""

    @abstractmethod
    def close_pit(self, client: Any, pit_id: str) -> None: ...

    def add_write_block(self, client: Any, index: str) -> None:
        """Refuse writes to ``index`` with the add-index-block API, which (unlike setting
        ``index.blocks.write`` directly) returns only once every shard has finished the
        writes already in flight, so nothing acknowledged lands after it (ES 7.9+, and every
        OpenSearch: ``TransportVerifyShardIndexBlockAction``)."""
        client.indices.add_block(index=index, block="write")

    def remove_write_block(self, client: Any, index: str) -> None:
        """Lift the write block (``index.blocks.write`` back to its default)."""
        client.indices.put_settings(index=index, body={"index.blocks.write": None})

    def read_license(self, client: Any) -> str | None:
        """The cluster's license (type and status), where the engine has licenses."""
        return None

    def approximation(self, field_type: FieldType, *, passages: bool = False) -> str | None:
        """When queries on ``field_type`` (holding passages, with ``passages``) stop being the
        exact dot product (None: never)."""
        return None

    # ------------------------------------------------------------------ cluster settings
    # True where the engine derives its clause limit (from heap and threads) instead of
    # enforcing the setting: only a refused query tells the real value.
    derives_clause_limit: ClassVar[bool] = False

    def clause_limit(self, settings: Mapping[str, Any]) -> int:
        """The bool clause limit, from ``GET _cluster/settings?include_defaults&flat_settings``."""
        for section in ("transient", "persistent", "defaults"):
            value = settings.get(section, {}).get(CLAUSE_LIMIT_SETTING)
            if value is not None:
                return int(value)
        return DEFAULT_CLAUSE_LIMIT


# Index settings every engine generates (or that describe one index's state, not its
# configuration); copying them into a new index is refused or wrong.
_GENERATED_SETTINGS = (
    "uuid",
    "creation_date",
    "creation_date_string",
    "version",
    "provided_name",
    "resize",
    "verified_before_close",
    "history",
    "blocks",
    "lifecycle",
    "frozen",
    "hidden",
)


def _without_empty(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` minus the groups that removing keys left empty (recursively)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            value = _without_empty(value)
            if not value:
                continue
        out[key] = value
    return out


def rank_feature_query(features: Mapping[str, float], field: str) -> Query:
    """``bool.should`` of linear ``rank_feature`` clauses, boost = query weight: the score is
    the dot product (never the default ``saturation`` function)."""
    return {
        "bool": {
            "should": [
                {"rank_feature": {"field": f"{field}.{key}", "linear": {}, "boost": weight}}
                for key, weight in features.items()
            ]
        }
    }


def passages_mapping(vector: Mapping[str, Any]) -> dict[str, Any]:
    """The ``nested`` mapping of a passages field whose ``vector`` sub-field is mapped as
    ``vector`` (a sparse field mapping)."""
    return {
        "type": "nested",
        "properties": {
            defaults.PASSAGE_VECTOR: dict(vector),
            defaults.PASSAGE_START: {"type": "integer"},
            defaults.PASSAGE_END: {"type": "integer"},
        },
    }


def with_filters(query: Query, filters: Sequence[Query]) -> Query:
    """``query`` restricted to documents matching every filter; filters do not score."""
    if not filters:
        return query
    return {"bool": {"must": [query], "filter": list(filters)}}


def load_template(engine: Engine, field_type: FieldType) -> dict[str, Any]:
    """The JSON body shipped in ``splade_es/mappings`` (``mappings/`` at the repository root)."""
    text = resources.files("splade_es.mappings").joinpath(f"{engine}.{field_type}.json")
    body: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return body
