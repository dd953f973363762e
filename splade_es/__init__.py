"""splade-es: SPLADE learned-sparse retrieval on Elasticsearch and OpenSearch.

The data flow, one module per stage::

    text -> encoder (SpladeEncoder) -> SparseBatch -> TokenCodec -> engine dialect
         -> QueryBuilder / search / evaluate -> cluster (connect)
"""

from .connect import Cluster, ConnectionConfig, connect
from .doctor import DoctorReport, doctor
from .encoder import SpladeEncoder
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
from .ingest import IngestConfig, IngestReport, RetryPolicy, ingest, ingest_file
from .query import PruneReport, QueryBuilder, QueryPruning
from .search import Explanation, SearchResult, create_hybrid_pipeline, create_index, explain, search
from .sparse import SparseBatch, Vocabulary, stored_precision
from .tokens import TokenCodec

__version__ = "0.1.0"

__all__ = [
    "Cluster",
    "ClusterError",
    "ConfigurationError",
    "ConnectionConfig",
    "Dialect",
    "DoctorReport",
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
