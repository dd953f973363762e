"""Elasticsearch 8.x / 9.x.

Version facts this dialect relies on (from the Elasticsearch reference and changelogs):

* ``rank_features`` + ``rank_feature`` query with the ``linear`` function: every 8.x / 9.x.
* ``sparse_vector`` field: 8.11+. ``sparse_vector`` query with ``query_vector``: 8.15+.
* From 8.19 / 9.1 a new ``sparse_vector`` field prunes query tokens by default
  (``index_options.prune``); we turn that off in the mapping and in every query, because a
  pruned query does not score the exact dot product. ``index_options`` is refused before that.
* 9.2+ leaves vectors out of ``_source`` unless ``index.mapping.exclude_source_vectors`` is
  false (set at index creation) or the request asks ``"_source": {"exclude_vectors": false}``.
* Retrievers: ``rrf`` 8.14+, ``linear`` 8.18+ (both Enterprise/trial license). The ``rrf``
  window is ``window_size`` on 8.14 and ``rank_window_size`` from 8.15
  (elastic/elasticsearch-specification, branches 8.14 / 8.15,
  ``specification/_types/Retriever.ts``, renamed in PR #2562).
* Passages (a ``nested`` vector field, ``nested`` query with ``score_mode: max``): core
  ``NestedQueryBuilder`` / ``InnerHitBuilder`` (inner hits default size 3, by score;
  ``_source`` filtered by full paths, then cut to the passage object:
  ``FetchSourcePhase.extractNested``), 8.15.0 and 9.1.0 alike. ``sparse_vector`` inside
  ``nested`` is what ``semantic_text`` itself maps and queries (x-pack inference
  ``SemanticTextFieldMapper``: nested ``chunks.embeddings``, ``NestedQueryBuilder(...,
  ScoreMode.Max)``). Compound retrievers (rrf, linear) run the sparse query in their own
  searches: its inner hits are not asked for there.
* Point in time + ``search_after`` with the ``_shard_doc`` tiebreaker: every 8.x / 9.x.
* Index settings that describe one index's storage or origin (time series bounds, searchable
  snapshot mounts, downsampling) are not copied into a new index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError
from ..fusion import ELASTICSEARCH, FusionRules
from .base import (
    Dialect,
    FieldType,
    Hybrid,
    HybridMethod,
    Query,
    QueryStyle,
    SearchRequest,
)


class ElasticsearchDialect(Dialect):
    engine = "elasticsearch"

    def field_types(self) -> tuple[FieldType, ...]:
        return ("rank_features", "sparse_vector") if self.since(8, 11) else ("rank_features",)

    def _field_type_requirement(self, field_type: FieldType) -> str:
        return "needs Elasticsearch 8.11+"

    def query_styles(self, field_type: FieldType) -> tuple[QueryStyle, ...]:
        if field_type == "rank_features":
            return ("rank_feature",)
        return ("sparse_vector",) if self.since(8, 15) else ()

    def hybrid_methods(self) -> tuple[HybridMethod, ...]:
        methods: list[HybridMethod] = ["sum"]
        if self.since(8, 14):
            methods.append("rrf")
        if self.since(8, 18):
            methods.append("linear")
        return tuple(methods)

    def required_license(self, capability: str) -> str | None:
        # The rrf and linear retrievers are Enterprise features (a trial license covers them).
        return "enterprise" if capability in ("hybrid:rrf", "hybrid:linear") else None

    def license_covers(self, level: str, license: str | None) -> bool:
        # ``read_license``: "<type> (<status>)". Enterprise features are covered by an active
        # enterprise or trial license (a platinum one does not cover them).
        if license is None:
            return False
        kind, _, status = license.partition(" ")
        covering = {"enterprise": ("enterprise", "trial")}.get(level, (level, "trial"))
        return kind.lower() in covering and status.strip("()").lower() == "active"

    def fusion_rules(self) -> FusionRules:
        return ELASTICSEARCH

    def _hybrid_option_refusal(self, hybrid: Hybrid) -> str | None:
        # The linear retriever's l2_norm normalizer (L2ScoreNormalizer, feature
        # LINEAR_RETRIEVER_L2_NORM) shipped after minmax: 8.19 and 9.1.
        if hybrid.method == "linear" and hybrid.normalizer == "l2" and not self._has_l2_norm:
            return "the linear retriever's l2_norm normalizer needs 8.19 or 9.1+"
        return None

    @property
    def _has_l2_norm(self) -> bool:
        return (8, 19) <= self.version[:2] < (9, 0) or self.since(9, 1)

    @property
    def _has_sparse_index_options(self) -> bool:
        return (8, 19) <= self.version[:2] < (9, 0) or self.since(9, 1)

    @property
    def _excludes_source_vectors(self) -> bool:
        return self.since(9, 2)

    def _adjust_index_body(self, body: dict[str, Any], field_type: FieldType, field: str) -> None:
        if field_type != "sparse_vector":
            return
        if not self._has_sparse_index_options:
            body["mappings"]["properties"][field].pop("index_options", None)
        if self._excludes_source_vectors:
            body["settings"]["index.mapping.exclude_source_vectors"] = False

    def _native_sparse_query(
        self,
        features: Mapping[str, float],
        field: str,
        field_type: FieldType,
        style: QueryStyle,
        options: dict[str, Any],
    ) -> Query:
        # No weight range to check: the query boosts each term (BoostQuery), unlike
        # FeatureField.newLinearQuery (elastic/elasticsearch, x-pack ml WeightedTokensUtils).
        unknown = set(options) - {"prune", "pruning_config"}
        if unknown:
            raise ConfigurationError(f"unknown sparse_vector query options: {sorted(unknown)}")
        query: dict[str, Any] = {"field": field, "query_vector": dict(features)}
        # Explicit, because the field's index_options may turn pruning on by default.
        query["prune"] = bool(options.get("prune", "pruning_config" in options))
        if "pruning_config" in options:
            query["pruning_config"] = dict(options["pruning_config"])
        return {"sparse_vector": query}

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
        window = max(hybrid.rank_window_size, k)
        normalizer = "minmax" if hybrid.normalizer == "min_max" else "l2_norm"

        def standard(query: Query) -> Query:
            retriever: dict[str, Any] = {"query": query}
            if filters:
                retriever["filter"] = list(filters)
            return {"standard": retriever}

        if hybrid.method == "rrf":
            retriever = {
                "rrf": {
                    "retrievers": [standard(lexical), standard(sparse)],
                    self._rrf_window_parameter: window,
                    "rank_constant": hybrid.rank_constant,
                }
            }
        else:
            retriever = {
                "linear": {
                    "retrievers": [
                        {
                            "retriever": standard(lexical),
                            "weight": hybrid.bm25_weight,
                            "normalizer": normalizer,
                        },
                        {
                            "retriever": standard(sparse),
                            "weight": 1.0 - hybrid.bm25_weight,
                            "normalizer": normalizer,
                        },
                    ],
                    "rank_window_size": window,
                }
            }
        return SearchRequest({"retriever": retriever, "size": k, "_source": source})

    @property
    def _rrf_window_parameter(self) -> str:
        # 8.14 shipped the rrf retriever with ``window_size``; 8.15 renamed it.
        return "rank_window_size" if self.since(8, 15) else "window_size"

    def open_pit(self, client: Any, index: str, keep_alive: str) -> str:
        pit_id: str = client.open_point_in_time(index=index, keep_alive=keep_alive)["id"]
        return pit_id

    def close_pit(self, client: Any, pit_id: str) -> None:
        client.close_point_in_time(id=pit_id)

    def read_license(self, client: Any) -> str | None:
        found = client.license.get()["license"]
        return f"{found.get('type')} ({found.get('status')})"

    def source_with_vectors(self, fields: Sequence[str]) -> Any:
        if self._excludes_source_vectors:
            return {"includes": list(fields), "exclude_vectors": False}
        return list(fields)

    def full_source(self) -> Any:
        # 9.2+ leaves dense_vector / sparse_vector values out of _source by default, in
        # _search, _get and _mget alike; a copy or a comparison without them is wrong.
        return {"exclude_vectors": False} if self._excludes_source_vectors else True

    def _drop_private_settings(self, settings: dict[str, Any]) -> None:
        # Time series: bounds and routing of one backing index of a data stream; a plain
        # copy is a standard index (dimension/metric mappings are allowed there).
        if settings.get("mode") == "time_series":
            settings.pop("mode")
        for key in ("routing_path", "time_series", "look_ahead_time", "look_back_time"):
            settings.pop(key, None)
        # Downsampling: where this rollup came from.
        settings.pop("downsample", None)
        # Searchable snapshot mounts: the store is a snapshot, and the tier preference was
        # chosen by the mount (a frozen tier takes no regular index).
        store = settings.get("store")
        if isinstance(store, dict) and store.get("type") == "snapshot":
            store.pop("type")
            store.pop("snapshot", None)
            recovery = settings.get("recovery")
            if isinstance(recovery, dict):
                recovery.pop("type", None)  # snapshot_prewarm: the mount's recovery
            include = settings.get("routing", {}).get("allocation", {}).get("include", {})
            include.pop("_tier_preference", None)

    derives_clause_limit = True  # 8.0+: SearchUtils.calculateMaxClauseValue(threadPool)

    def clause_limit(self, settings: Mapping[str, Any]) -> int:
        # Since 8.0 the limit is derived from heap and thread pool sizes; the old setting is
        # still reported (deprecated, ignored). Only an explicit value means anything.
        for section in ("transient", "persistent"):
            value = settings.get(section, {}).get("indices.query.bool.max_clause_count")
            if value is not None:
                return int(value)
        return 1024
