"""The one retry policy: bounded, exponential, jittered, and only for what is retryable.

Bulk sending, migration passes (the write block) and serve's enrichment (version conflicts)
all wait by ``RetryPolicy``; what counts as retryable is decided here once:

* a whole request that failed on the connection (``TRANSIENT_ERRORS``), or
* an answer (or bulk item) with a status in ``RETRYABLE_STATUS`` (429 and the 5xx a busy or
  restarting node gives). Everything else (a mapping error, a 400) fails at once: sending it
  again cannot change the answer.

>>> policy = RetryPolicy(max_retries=3, initial_backoff=0.5, max_backoff=2.0, jitter=0.0)
>>> [policy.backoff(n) for n in (1, 2, 3, 4)]
[0.5, 1.0, 2.0, 2.0]
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import elasticsearch
import opensearchpy
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_base,
    stop_after_attempt,
    wait_exponential_jitter,
)

from . import defaults

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
"""Statuses worth another try: too many requests, and a node that is busy or restarting."""

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    elasticsearch.ConnectionError,
    elasticsearch.ConnectionTimeout,
    opensearchpy.ConnectionError,
    opensearchpy.ConnectionTimeout,
)
"""Failures of a whole request, before any answer, that are worth another try."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """``max_retries`` re-sends after the first try; before re-send ``n`` (1-based) wait
    ``initial_backoff * 2^(n-1)`` seconds, capped at ``max_backoff``, plus up to ``jitter``
    random seconds."""

    max_retries: int = defaults.MAX_RETRIES
    initial_backoff: float = defaults.INITIAL_BACKOFF
    max_backoff: float = defaults.MAX_BACKOFF
    jitter: float = defaults.JITTER

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if min(self.initial_backoff, self.max_backoff, self.jitter) < 0:
            raise ValueError("backoff and jitter must be >= 0")

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before re-send ``retry_number`` (1-based), jitter included: for
        loops that are not one call tenacity can wrap (rounds of a bulk, say)."""
        exponential = self.initial_backoff * 2 ** max(retry_number - 1, 0)
        return float(min(exponential + random.uniform(0, self.jitter), self.max_backoff))

    def retrying(
        self,
        *,
        retry: retry_base,
        sleep: Callable[[float], None] | None = None,
        **options: Any,
    ) -> Retrying:
        """A tenacity ``Retrying`` that waits and stops by this policy and retries what
        ``retry`` says (build it from ``retry_if_retryable`` and friends)."""
        if sleep is not None:
            options["sleep"] = sleep
        return Retrying(stop=self.stop(), wait=self.wait(), retry=retry, **options)

    def async_retrying(self, *, retry: retry_base, **options: Any) -> AsyncRetrying:
        """The same policy for coroutines."""
        return AsyncRetrying(stop=self.stop(), wait=self.wait(), retry=retry, **options)

    def stop(self) -> stop_after_attempt:
        return stop_after_attempt(self.max_retries + 1)

    def wait(self) -> wait_exponential_jitter:
        return wait_exponential_jitter(
            multiplier=self.initial_backoff, max=self.max_backoff, jitter=self.jitter
        )


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an error of either client carries, if any."""
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    meta = getattr(exc, "meta", None)
    status = getattr(meta, "status", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Whether sending the same request again may succeed."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return status_of(exc) in RETRYABLE_STATUS
