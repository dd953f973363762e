"""OpenSearch 2.x / 3.x.

Version facts this dialect relies on (from the OpenSearch documentation):

* ``rank_features`` + ``rank_feature`` query with ``linear``: every 2.x / 3.x.
* ``neural_sparse`` query with raw ``query_tokens``: 2.14+ (neural-search plugin).
* ``sparse_vector`` field with the SEISMIC method: 3.3+, needs ``index.sparse: true`` and
  integer token ids as keys; queried with ``neural_sparse`` (``method_parameters``: k, top_n,
  heap_factor). Approximate in segments above ``approximate_threshold`` documents.
* ``hybrid`` query + ``normalization-processor`` search pipeline: 2.10+;
  ``score-ranker-processor`` (RRF): 2.19+.
* Point in time (``create_pit``): 2.4+; the ``_shard_doc`` tiebreaker that makes
  ``search_after`` paging exact across shards: 3.3+. Older versions are read with a scroll.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError
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

    def _native_sparse_query(
        self, features: Mapping[str, float], field: str, style: QueryStyle, options: dict
    ) -> Query:
        unknown = set(options) - {"method_parameters"}
        if unknown:
            raise ConfigurationError(f"unknown neural_sparse query options: {sorted(unknown)}")
        body: dict[str, Any] = {"query_tokens": dict(features)}
        if "method_parameters" in options:
            body["method_parameters"] = dict(options["method_parameters"])
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
        return client.create_pit(index=index, keep_alive=keep_alive)["pit_id"]

    def close_pit(self, client: Any, pit_id: str) -> None:
        client.delete_pit(body={"pit_id": [pit_id]})

    def hybrid_pipeline_body(self, hybrid: Hybrid) -> dict[str, Any] | None:
        """The search pipeline a ``linear`` / ``rrf`` hybrid runs through (queries in the
        order lexical, sparse); None for ``sum``, which is a plain ``bool`` query."""
        self.check_hybrid(hybrid)
        if hybrid.method == "sum":
            return None
        if hybrid.method == "rrf":
            processor = {
                "score-ranker-processor": {
                    "combination": {"technique": "rrf", "rank_constant": hybrid.rank_constant}
                }
            }
        else:
            processor = {
                "normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {
                        "technique": "arithmetic_mean",
                        "parameters": {"weights": [hybrid.bm25_weight, 1.0 - hybrid.bm25_weight]},
                    },
                }
            }
        return {
            "description": f"splade-es hybrid ({hybrid.method}): BM25 + SPLADE",
            "phase_results_processors": [processor],
        }
