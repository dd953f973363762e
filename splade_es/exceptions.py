"""Every error splade-es raises, in one tree.

Client libraries' errors (elasticsearch, opensearch-py, aiohttp, transformers, torch) are
caught at the boundary where we call them and re-raised as one of these, with the original
attached as ``__cause__``, so applications need to catch only ``SpladeEsError``::

    SpladeEsError
    ├── ConfigurationError          bad options: a value out of range, conflicting flags,
    │                               unknown engine, bad URL (also a ValueError)
    ├── ModelLoadError              checkpoint missing, unreadable or without an MLM head
    ├── InputError                  a bad document, text or request; names its position and
    │   │                           field (also a ValueError)
    │   ├── InputStreamError        the input broke mid-way (truncated compressed file, read error)
    │   ├── EmptyTextError          an empty or whitespace-only text where one is required
    │   └── EmptyQueryError         a query with no tokens to search for (empty, or all pruned)
    ├── ClusterError                anything that came back from (or failed to reach) a cluster
    │   ├── ConnectionFailedError   unreachable, TLS failure
    │   │   └── ClusterTimeoutError no answer in time
    │   ├── AuthenticationError     401 / 403
    │   └── UnsupportedFeatureError the engine or version lacks a field type or query
    └── ServiceUnavailableError     ``serve`` cannot take the work now
        ├── OverloadedError         more work queued than allowed: retry later
        └── ShuttingDownError       the process is stopping (also a RuntimeError)

The CLI prints any of them as one line and exits with status 2; ``splade-es serve`` answers
each branch with its own HTTP status (``splade_es.serve.errors.HTTP_ERRORS``).
"""

from __future__ import annotations

from typing import Any


class SpladeEsError(Exception):
    """Base class of every error raised by splade-es.

    ``option``: the setting (keyword argument) the error is about, where it is about one;
    front ends name it their own way (the CLI as the option of that name).
    """

    option: str | None = None


class ConfigurationError(SpladeEsError, ValueError):
    """Options that cannot work together, or a value out of range.

    A ValueError too, as the bare ``ValueError`` it replaces was. Where the error is about
    one value: ``option`` is the keyword argument (or setting) it was given for, ``value``
    the value and ``rule`` what a good one is, so that a front end can name the option its
    own way (the CLI reports ``option="max_length"`` as its ``--max-length``).
    """

    def __init__(
        self,
        message: str,
        *,
        option: str | None = None,
        value: Any = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message)
        self.option = option
        self.value = value
        self.rule = rule

    @classmethod
    def bad_value(cls, option: str, value: Any, rule: str) -> ConfigurationError:
        """``option`` got ``value``; ``rule`` says what it must be.

        >>> str(ConfigurationError.bad_value("top_k", 0, "must be >= 1"))
        'top_k must be >= 1, got 0'
        """
        return cls(f"{option} {rule}, got {value!r}", option=option, value=value, rule=rule)


class ModelLoadError(SpladeEsError):
    """A checkpoint could not be found or does not look like a SPLADE/MLM model."""

    option = "model"


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
    """The cluster could not be reached (refused, DNS, TLS)."""


class ClusterTimeoutError(ConnectionFailedError):
    """The cluster did not answer in time."""


class AuthenticationError(ClusterError):
    """The cluster rejected our credentials (HTTP 401) or permissions (HTTP 403)."""


class UnsupportedFeatureError(ClusterError):
    """The engine or its version lacks what was asked for (a field type, a query)."""


class ServiceUnavailableError(SpladeEsError):
    """``splade-es serve`` cannot take this work now; the same request may succeed later."""


class OverloadedError(ServiceUnavailableError):
    """More work is queued than the service accepts (``serve --enrich-queue``): retry later."""


class ShuttingDownError(ServiceUnavailableError, RuntimeError):
    """The service is stopping and takes no new work (a RuntimeError, as it was)."""
