"""splade-es: SPLADE learned-sparse retrieval on Elasticsearch and OpenSearch.

The data flow, one module per stage::

    text -> encoder (SpladeEncoder) -> SparseBatch -> TokenCodec -> engine dialect
         -> QueryBuilder / search / evaluate -> cluster (connect)
"""

from typing import TYPE_CHECKING, Any

from . import _moved
from .connect import Cluster, ConnectionConfig, connect
from .doctor import DoctorReport, doctor
from .encoding.protocol import DocumentEncoder, Encoder
from .engines import Dialect, Hybrid, dialect_for
from .evaluate import EvaluationReport, evaluate
from .exceptions import (
    ClusterError,
    ConfigurationError,
    InputError,
    ModelLoadError,
    SpladeEsError,
    UnsupportedFeatureError,
)
from .ingest import IngestConfig, IngestReport, ingest, ingest_file
from .query import PruneReport, QueryBuilder, QueryPruning
from .retry import RetryPolicy
from .search import Explanation, SearchResult, create_hybrid_pipeline, create_index, explain, search
from .sparse import SparseBatch, Vocabulary, stored_precision
from .tokens import TokenCodec

_moved.install()  # old module names (splade_es.encoder, splade_es.migrate_sync, ...) keep working

if TYPE_CHECKING:
    from .encoding.encoder import SpladeEncoder
    from .encoding.static_query import StaticQueryEncoder

__version__ = "0.1.0"

# Names whose module imports torch are loaded on first use (PEP 562), so a process that only
# builds queries (QueryBuilder, documented as needing no cluster) does not pay for torch. The
# other names stay eager on purpose: several share their submodule's name (connect, doctor,
# evaluate, ingest, search), and a lazy one would be shadowed by the submodule as soon as any
# module imported it (the import system binds ``splade_es.connect`` to the module).
_LAZY = {"SpladeEncoder": ".encoding.encoder", "StaticQueryEncoder": ".encoding.static_query"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Cluster",
    "ClusterError",
    "ConfigurationError",
    "ConnectionConfig",
    "Dialect",
    "DoctorReport",
    "DocumentEncoder",
    "Encoder",
    "EvaluationReport",
    "Explanation",
    "Hybrid",
    "IngestConfig",
    "IngestReport",
    "InputError",
    "ModelLoadError",
    "PruneReport",
    "QueryBuilder",
    "QueryPruning",
    "RetryPolicy",
    "SearchResult",
    "SparseBatch",
    "SpladeEncoder",
    "SpladeEsError",
    "StaticQueryEncoder",
    "TokenCodec",
    "UnsupportedFeatureError",
    "Vocabulary",
    "__version__",
    "connect",
    "create_hybrid_pipeline",
    "create_index",
    "dialect_for",
    "doctor",
    "evaluate",
    "explain",
    "ingest",
    "ingest_file",
    "search",
    "stored_precision",
]
