"""OpenSearch 2.x / 3.x.

Version facts this dialect relies on (from the OpenSearch documentation):

* ``rank_features`` + ``rank_feature`` query with ``linear``: every 2.x / 3.x.
* ``neural_sparse`` query with raw ``query_tokens``: 2.14+ (neural-search plugin). Each token
  becomes Lucene ``FeatureField.newLinearQuery(field, token, weight)``, which refuses a weight
  outside (0, 64] (apache/lucene ``lucene/core/src/java/org/apache/lucene/document/
  FeatureField.java``); ``method_parameters`` are a parse error before 3.3 and ignored on a
  ``rank_features`` field after (neural-search ``NeuralSparseQueryBuilder``).
* ``sparse_vector`` field with the SEISMIC method: 3.3+, needs ``index.sparse: true`` and
  integer token ids as keys; queried with ``neural_sparse`` + ``method_parameters`` (k, top_n,
  heap_factor). With them, segments below ``approximate_threshold`` documents are scored by
  the exact fallback query and larger ones by SEISMIC (approximate); without them the plain
  query runs everywhere and fails on SEISMIC segments (neural-search 3.3.0.0
  ``NeuralSparseQueryBuilder.doToQuery``, ``sparse/query/SparseQueryWeight.scorerSupplier``,
  ``sparse/codec/SparsePostingsEnum``). So they are always sent.
* ``hybrid`` query + ``normalization-processor`` search pipeline: 2.10+;
  ``score-ranker-processor`` (RRF): 2.19+. Its ``rank_constant`` is read from
  ``combination.parameters`` on 2.19 / 3.0 and from ``combination`` from 3.1 (neural-search
  ``processor/factory/RRFProcessorFactory.java`` at 2.19.0.0, 3.0.0.0, 3.1.0.0; #1322).
  Weights are read as doubles (``ScoreCombinationUtil.getWeights``): an integer is refused.
* Passages (a ``nested`` vector field, ``nested`` query with ``score_mode: max``): core
  ``NestedQueryBuilder`` (ToParentBlockJoinQuery, Max) and nested ``inner_hits`` (default size
  3, sorted by score; ``_source`` filtered by full paths, then cut to the passage object:
  ``FetchPhase.prepareNestedHitContext``) on 2.19 and 3.3 alike. ``rank_feature`` and
  ``neural_sparse`` score a nested ``rank_features`` sub-field like a top-level one. The
  SEISMIC field's mapper, codec and query work per Lucene document, so a nested one is exact
  below ``approximate_threshold`` like a top-level one, counting passages (and their parent
  documents) as documents (neural-search 3.3.2.0 ``sparse/mapper/SparseVectorFieldMapper``,
  ``sparse/query/SparseQueryWeight``, ``sparse/common/PredicateUtils``). A ``hybrid`` query
  drops its sub-queries' inner hits before neural-search 3.0 (no ``extractInnerHitBuilders``
  until PR #1253, 3.0.0.0).
* Point in time (``create_pit``): 2.4+; the ``_shard_doc`` tiebreaker that makes
  ``search_after`` paging exact across shards: 3.3+ (OpenSearch PR #18924). Older versions
  are read with a scroll.
* Index settings of remote-backed storage and searchable snapshots belong to one index and are
  not copied; ``index.replication.type`` (document / segment replication) is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError, InputError
from ..fusion import OPENSEARCH, FusionRules
from ..tokens import KeyScheme
from .base import (
    Dialect,
    FieldType,
    Hybrid,
    HybridMethod,
    Query,
    QueryStyle,
    SearchRequest,
    with_filters,
)

# Lucene FeatureField.newLinearQuery accepts query weights in (0, MAX_WEIGHT].
MAX_QUERY_WEIGHT = 64.0
# SEISMIC query parameters and their defaults (neural-search 3.3.0.0
# sparse/query/SparseAnnQueryBuilder.java: DEFAULT_QUERY_CUT, DEFAULT_TOP_K,
# DEFAULT_HEAP_FACTOR; the same values the documentation gives).
SEISMIC_QUERY_DEFAULTS: dict[str, Any] = {"top_n": 10, "k": 10, "heap_factor": 1.0}
SEISMIC_QUERY_PARAMETERS = frozenset({*SEISMIC_QUERY_DEFAULTS, "filter"})
NEURAL_SEARCH_PLUGIN = "opensearch-neural-search"
# A plugin installed from its zip is listed by name; one loaded from the classpath (an embedded
# node: Node(..., classpathPlugins)) by its class name (PluginsService: PluginInfo of the class).
NEURAL_SEARCH_CLASS = "org.opensearch.neuralsearch.plugin.NeuralSearch"
NEURAL_SEARCH_CAPABILITIES = frozenset(
    {"field:sparse_vector", "query:neural_sparse", "hybrid:linear", "hybrid:rrf"}
)


class OpenSearchDialect(Dialect):
    engine = "opensearch"

    def field_types(self) -> tuple[FieldType, ...]:
        return ("rank_features", "sparse_vector") if self.since(3, 3) else ("rank_features",)

    def _field_type_requirement(self, field_type: FieldType) -> str:
        return "needs OpenSearch 3.3+ with the neural-search plugin"

    def query_styles(self, field_type: FieldType) -> tuple[QueryStyle, ...]:
        if field_type == "sparse_vector":
            return ("neural_sparse",) if self.since(3, 3) else ()
        return ("rank_feature", "neural_sparse") if self.since(2, 14) else ("rank_feature",)

    def hybrid_methods(self) -> tuple[HybridMethod, ...]:
        methods: list[HybridMethod] = ["sum"]
        if self.since(2, 19):
            methods.append("rrf")
        if self.since(2, 10):
            methods.append("linear")
        return tuple(methods)

    def key_scheme(self, field_type: FieldType) -> KeyScheme:
        return "id" if field_type == "sparse_vector" else "token"

    def fusion_rules(self) -> FusionRules:
        return OPENSEARCH

    def fusion_window(self, hybrid: Hybrid, k: int) -> int:
        # Each sub-query of a hybrid query returns its top ``size`` hits per shard unless the
        # request sets ``pagination_depth`` (neural-search 2.19.6.0 / 3.3.2.0
        # search/query/HybridCollectorManager.getSubqueryResultsRetrievalSize); ours does not,
        # so ``rank_window_size`` does not apply here.
        return k

    def approximation(self, field_type: FieldType, *, passages: bool = False) -> str | None:
        if field_type != "sparse_vector":
            return None
        if passages:
            return (
                "exact in segments below the field's approximate_threshold Lucene documents "
                "(default 1,000,000; every passage counts, and every parent document); SEISMIC "
                "(approximate: top_n query tokens, k passages per segment) above"
            )
        return (
            "exact in segments below the field's approximate_threshold documents (default "
            "1,000,000); SEISMIC (approximate: top_n query tokens, k per segment) above"
        )

    def _fused_inner_hits(self) -> bool:
        # neural-search 3.0.0.0 HybridQueryBuilder.extractInnerHitBuilders (PR #1253); before,
        # the hybrid query keeps AbstractQueryBuilder's no-op and the inner hits are dropped.
        return self.since(3, 0)

    def required_plugin(self, capability: str) -> str | None:
        # neural_sparse, the SEISMIC field and the hybrid query / search pipeline processors
        # all come from the neural-search plugin; rank_features and bool queries are core.
        if capability in NEURAL_SEARCH_CAPABILITIES:
            return NEURAL_SEARCH_PLUGIN
        return None

    def plugin_listed(self, plugin: str, plugins: Sequence[str]) -> bool:
        if plugin == NEURAL_SEARCH_PLUGIN:
            return any(p in (NEURAL_SEARCH_PLUGIN, NEURAL_SEARCH_CLASS) for p in plugins)
        return plugin in plugins

    def _native_sparse_query(
        self,
        features: Mapping[str, float],
        field: str,
        field_type: FieldType,
        style: QueryStyle,
        options: dict[str, Any],
    ) -> Query:
        unknown = set(options) - {"method_parameters"}
        if unknown:
            raise ConfigurationError(f"unknown neural_sparse query options: {sorted(unknown)}")
        check_query_weights(features, field)
        body: dict[str, Any] = {"query_tokens": dict(features)}
        if field_type == "sparse_vector":
            body["method_parameters"] = seismic_parameters(options.get("method_parameters"))
        elif "method_parameters" in options:
            # Before 3.3 the engine refuses them; from 3.3 it ignores them on this field type.
            raise ConfigurationError(
                "method_parameters apply to a sparse_vector (SEISMIC) field only, not to "
                f"the rank_features field {field!r}"
            )
        return {"neural_sparse": {field: body}}

    def _fused_request(
        self,
        sparse: Query,
        lexical: Query,
        hybrid: Hybrid,
        *,
        k: int,
        filters: Sequence[Query],
        source: Any,
    ) -> SearchRequest:
        # Filters go into each sub-query: the hybrid query's own ``filter`` is 2.19+ only.
        queries = [with_filters(lexical, filters), with_filters(sparse, filters)]
        body = {
            "query": {"hybrid": {"queries": queries}},
            "size": k,
            "_source": source,
        }
        return SearchRequest(body, {"search_pipeline": hybrid.pipeline_name})

    def pit_sort(self) -> list[Any] | None:
        return ["_shard_doc"] if self.since(3, 3) else None

    def open_pit(self, client: Any, index: str, keep_alive: str) -> str:
        pit_id: str = client.create_pit(index=index, keep_alive=keep_alive)["pit_id"]
        return pit_id

    def close_pit(self, client: Any, pit_id: str) -> None:
        client.delete_pit(body={"pit_id": [pit_id]})

    def hybrid_pipeline_body(self, hybrid: Hybrid) -> dict[str, Any] | None:
        """The search pipeline a ``linear`` / ``rrf`` hybrid runs through (queries in the
        order lexical, sparse); None for ``sum``, which is a plain ``bool`` query."""
        self.check_hybrid(hybrid)
        if hybrid.method == "sum":
            return None
        if hybrid.method == "rrf":
            combination: dict[str, Any] = {"technique": "rrf"}
            if self.since(3, 1):
                combination["rank_constant"] = int(hybrid.rank_constant)
            else:  # 2.19 / 3.0 read it here only, and ignore it anywhere else
                combination["parameters"] = {"rank_constant": int(hybrid.rank_constant)}
            processor = {"score-ranker-processor": {"combination": combination}}
        else:
            # Doubles, always: the engine casts each weight to Double (an int 0 or 1 fails).
            weights = [float(hybrid.bm25_weight), float(1.0 - hybrid.bm25_weight)]
            processor = {
                "normalization-processor": {
                    "normalization": {"technique": hybrid.normalizer},
                    "combination": {
                        "technique": "arithmetic_mean",
                        "parameters": {"weights": weights},
                    },
                }
            }
        return {
            "description": f"splade-es hybrid ({hybrid.method}): BM25 + SPLADE",
            "phase_results_processors": [processor],
        }

    def _drop_private_settings(self, settings: dict[str, Any]) -> None:
        # Remote-backed storage: the repositories of this index's segments and translog,
        # decided by the cluster at creation (a new index gets the cluster's own).
        settings.pop("remote_store", None)
        # Searchable snapshots: this index is a mounted snapshot.
        store = settings.get("store")
        if isinstance(store, dict) and store.get("type") == "remote_snapshot":
            store.pop("type")
            settings.pop("searchable_snapshot", None)


def check_query_weights(features: Mapping[str, float], field: str) -> None:
    """Refuse a ``neural_sparse`` query weight the engine would refuse with a 400.

    Refused, not scaled: dividing every weight by one factor would keep the ranking but make
    ``_score`` that factor smaller than the dot product, silently breaking ``explain``, score
    thresholds and comparisons with in-memory scores. SPLADE query weights are far below 64;
    a larger one means the vector is not a SPLADE vector (or wants the ``rank_feature`` style,
    whose boost has no such limit).
    """
    for key, weight in features.items():
        if not 0.0 < weight <= MAX_QUERY_WEIGHT:
            raise InputError(
                f"query token {key!r} has weight {weight:g}: OpenSearch neural_sparse takes "
                f"weights in (0, {MAX_QUERY_WEIGHT:g}]; use the rank_feature query style on a "
                "rank_features field, or scale the query vector yourself",
                field=field,
            )


def seismic_parameters(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``method_parameters`` for a SEISMIC ``sparse_vector`` query: the engine's defaults,
    overridden by ``given``."""
    given = dict(given or {})
    unknown = set(given) - SEISMIC_QUERY_PARAMETERS
    if unknown:
        raise ConfigurationError(
            f"unknown method_parameters {sorted(unknown)}: expected "
            f"{', '.join(sorted(SEISMIC_QUERY_PARAMETERS))}"
        )
    return {**SEISMIC_QUERY_DEFAULTS, **given}
