"""Every error splade-es raises, in one tree.

Client libraries' errors (elasticsearch, opensearch-py, transformers) are caught at the
boundary where we call them and re-raised as one of these, with the original attached as
``__cause__``, so applications need to catch only ``SpladeEsError``::

    SpladeEsError
    ├── ConfigurationError          bad options: conflicting flags, unknown engine, bad URL
    ├── ModelLoadError              checkpoint missing, unreadable or without an MLM head
    ├── InputError                  a bad document or text; names its position and field
    │   ├── InputStreamError        the input broke mid-way (truncated compressed file, read error)
    │   ├── EmptyTextError          an empty or whitespace-only text where one is required
    │   └── EmptyQueryError         a query with no tokens to search for (empty, or all pruned)
    └── ClusterError                anything that came back from (or failed to reach) a cluster
        ├── ConnectionFailedError   unreachable, TLS failure, timeout
        ├── AuthenticationError     401 / 403
        └── UnsupportedFeatureError the engine or version lacks a field type or query
"""

from __future__ import annotations


class SpladeEsError(Exception):
    """Base class of every error raised by splade-es."""


class ConfigurationError(SpladeEsError):
    """Options that cannot work together, or a value out of range."""


class ModelLoadError(SpladeEsError):
    """A checkpoint could not be found or does not look like a SPLADE/MLM model."""


class InputError(SpladeEsError, ValueError):
    """A bad input text or document.

    ``position`` is the index in the input sequence (or line number for files) and
    ``field`` the field name where one applies, so the message can name both; ``doc_id`` the
    document's id when it could be read (so a dead letter keeps it).
    """

    def __init__(
        self,
        message: str,
        *,
        position: int | None = None,
        field: str | None = None,
        doc_id: str | None = None,
    ):
        super().__init__(message)
        self.position = position
        self.field = field
        self.doc_id = doc_id


class InputStreamError(InputError):
    """The input itself broke mid-way (a truncated or corrupt compressed file, a read error).

    Raised after the records read before the break have been processed (indexed or
    dead-lettered, and checkpointed), so the message can say how far the run got.
    """


class EmptyTextError(InputError):
    """An empty or whitespace-only text where the policy forbids one."""


class EmptyQueryError(InputError):
    """A query with no tokens left to search for: an empty text, or pruning removed them all.

    Its dot product with every document is 0, so it matches nothing; searching with it would
    run an empty ``bool`` query, which engines answer with every document at score 1.0.
    """


class ClusterError(SpladeEsError):
    """An error reported by, or on the way to, an Elasticsearch/OpenSearch cluster."""


class ConnectionFailedError(ClusterError):
    """The cluster could not be reached (refused, DNS, TLS, timeout)."""


class AuthenticationError(ClusterError):
    """The cluster rejected our credentials (HTTP 401) or permissions (HTTP 403)."""


class UnsupportedFeatureError(ClusterError):
    """The engine or its version lacks what was asked for (a field type, a query)."""
