"""splade-es: SPLADE learned-sparse retrieval on Elasticsearch and OpenSearch.

The data flow, one module per stage::

    text -> encoder (SpladeEncoder) -> SparseBatch -> engine dialect -> cluster (connect)
"""

from .connect import Cluster, ConnectionConfig, connect
from .encoder import SpladeEncoder
from .exceptions import (
    ClusterError,
    ConfigurationError,
    InputError,
    ModelLoadError,
    SpladeEsError,
)
from .sparse import SparseBatch

__version__ = "0.1.0"

__all__ = [
    "Cluster",
    "ClusterError",
    "ConfigurationError",
    "ConnectionConfig",
    "InputError",
    "ModelLoadError",
    "SparseBatch",
    "SpladeEncoder",
    "SpladeEsError",
    "__version__",
    "connect",
]
