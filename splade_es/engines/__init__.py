"""One dialect per engine; ``dialect_for`` picks it from the engine name and version.

>>> dialect_for("elasticsearch", "8.15.1")
ElasticsearchDialect(8.15.1)
>>> dialect_for("opensearch", (2, 19, 0)).query_styles("rank_features")
('rank_feature', 'neural_sparse')
"""

from __future__ import annotations

from ..connect import ENGINES, ClientOrCluster, Cluster, Engine, Version, parse_version
from ..exceptions import ConfigurationError
from .base import (
    FIELD_TYPES,
    HYBRID_METHODS,
    Dialect,
    FieldType,
    Hybrid,
    HybridMethod,
    QueryStyle,
    SearchRequest,
    load_template,
)
from .elasticsearch import ElasticsearchDialect
from .opensearch import OpenSearchDialect

_DIALECTS: dict[Engine, type[Dialect]] = {
    "elasticsearch": ElasticsearchDialect,
    "opensearch": OpenSearchDialect,
}


def dialect_for(engine: str, version: str | Version) -> Dialect:
    """The dialect of ``engine`` ("elasticsearch" / "opensearch") at ``version``."""
    if engine not in _DIALECTS:
        raise ConfigurationError(f"unknown engine {engine!r}: expected one of {ENGINES}")
    parsed = parse_version(version) if isinstance(version, str) else tuple(version)
    return _DIALECTS[engine](parsed)  # type: ignore[arg-type]


def dialect_of(target: ClientOrCluster) -> Dialect:
    """The dialect of a connected ``Cluster``, or of a client (engine and version from
    ``info()``)."""
    cluster = target if isinstance(target, Cluster) else Cluster.from_client(target)
    return dialect_for(cluster.engine, cluster.version)


__all__ = [
    "FIELD_TYPES",
    "HYBRID_METHODS",
    "Dialect",
    "ElasticsearchDialect",
    "FieldType",
    "Hybrid",
    "HybridMethod",
    "OpenSearchDialect",
    "QueryStyle",
    "SearchRequest",
    "dialect_for",
    "dialect_of",
    "load_template",
]
