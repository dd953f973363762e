"""Bulk requests: chunking, per-item results, bounded retries with jitter, dead letters.

A pipeline of small pieces, each testable alone:

* ``chunk_actions``  splits actions by document count and request bytes (pure);
* ``bulk_body``      the NDJSON-ready list for one chunk (pure);
* ``split_items``    sorts a bulk response into indexed / retryable / permanent (pure);
* ``send_bulk``      sends a chunk, re-sending only the items that failed with a retryable
                     status (429, 5xx) or all of them after a connection failure, with
                     exponential backoff and full jitter (tenacity), a bounded number of times.

Every action carries an explicit ``_id`` and uses the ``index`` op, so re-sending an item
that in fact succeeded overwrites it: retries never duplicate.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import elasticsearch
import opensearchpy
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)

from ..retry import RETRYABLE_STATUS, TRANSIENT_ERRORS, RetryPolicy, status_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    """One document to index."""

    position: int
    doc_id: str
    source: dict[str, Any]
    encoded: bytes = field(repr=False, default=b"")  # the source as JSON, for sizing


@dataclass(frozen=True)
class Failure:
    """An action that will not be indexed, and why."""

    action: Action
    status: int | None
    reason: str


@dataclass
class BulkOutcome:
    indexed: list[Action] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    retried_items: int = 0


def make_action(position: int, doc_id: str, source: dict[str, Any]) -> Action:
    encoded = json.dumps(source, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Action(position, doc_id, source, encoded)


class ActionChunker:
    """Groups actions into chunks of at most ``max_docs`` actions and about ``max_bytes``
    bytes; a single larger document still gets a chunk of its own.

    >>> chunker = ActionChunker(max_docs=2, max_bytes=10**6)
    >>> [len(c) for c in chunker.add(make_action(1, "a", {}))], len(chunker.flush())
    ([], 1)
    """

    def __init__(self, *, max_docs: int, max_bytes: int) -> None:
        if max_docs < 1 or max_bytes < 1:
            raise ValueError("max_docs and max_bytes must be >= 1")
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self._chunk: list[Action] = []
        self._size = 0

    def add(self, action: Action) -> list[list[Action]]:
        """Add one action; returns the chunks that became full (zero or one)."""
        cost = len(action.encoded) + len(action.doc_id) + 40  # + the action line
        full = []
        if self._chunk and (
            len(self._chunk) >= self.max_docs or self._size + cost > self.max_bytes
        ):
            full.append(self.flush())
        self._chunk.append(action)
        self._size += cost
        return full

    def flush(self) -> list[Action]:
        chunk, self._chunk, self._size = self._chunk, [], 0
        return chunk


def chunk_actions(
    actions: Iterable[Action], *, max_docs: int, max_bytes: int
) -> Iterator[list[Action]]:
    """``ActionChunker`` over an iterable."""
    chunker = ActionChunker(max_docs=max_docs, max_bytes=max_bytes)
    for action in actions:
        yield from chunker.add(action)
    last = chunker.flush()
    if last:
        yield last


def bulk_body(index: str, actions: Sequence[Action]) -> list[dict[str, Any]]:
    body: list[dict[str, Any]] = []
    for action in actions:
        body.append({"index": {"_index": index, "_id": action.doc_id}})
        body.append(action.source)
    return body


def split_items(
    actions: Sequence[Action], response: dict[str, Any]
) -> tuple[list[Action], list[Failure], list[Failure]]:
    """(indexed, retryable, permanent) from a bulk response, matched to ``actions`` by order."""
    items = response.get("items", [])
    if len(items) != len(actions):
        # Should never happen; treat the whole chunk as retryable rather than guess.
        return [], [Failure(a, None, "bulk response item count mismatch") for a in actions], []
    indexed, retryable, permanent = [], [], []
    for action, item in zip(actions, items, strict=True):
        result = next(iter(item.values()))
        status = int(result.get("status", 0))
        if 200 <= status < 300:
            indexed.append(action)
            continue
        failure = Failure(action, status, _reason(result.get("error")))
        (retryable if status in RETRYABLE_STATUS else permanent).append(failure)
    return indexed, retryable, permanent


def send_bulk(
    client: Any,
    index: str,
    actions: Sequence[Action],
    *,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] | None = None,
) -> BulkOutcome:
    """Index ``actions``; retry what the cluster pushes back on; give up after the policy's
    retries with the last reason. Never raises for per-item or connection failures."""
    outcome = BulkOutcome()
    pending: list[Action] = list(actions)
    last_reason: dict[str, tuple[int | None, str]] = {}

    def attempt_once() -> list[Action]:
        nonlocal pending
        try:
            response = client.bulk(body=bulk_body(index, pending))
        except TRANSIENT_ERRORS as exc:
            for action in pending:
                last_reason[action.doc_id] = (None, f"{type(exc).__name__}: {exc}")
            raise
        except (elasticsearch.ApiError, opensearchpy.TransportError) as exc:
            status = status_of(exc)
            if status not in RETRYABLE_STATUS:
                raise
            for action in pending:
                last_reason[action.doc_id] = (status, f"bulk request failed: {exc}")
            return pending
        indexed, retryable, permanent = split_items(pending, dict(response))
        outcome.indexed.extend(indexed)
        outcome.failed.extend(permanent)
        for failure in retryable:
            last_reason[failure.action.doc_id] = (failure.status, failure.reason)
        return [f.action for f in retryable]

    def give_up(state: RetryCallState) -> list[Action]:
        return pending

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_retries + 1),
        wait=wait_exponential_jitter(
            multiplier=policy.initial_backoff, max=policy.max_backoff, jitter=policy.jitter
        ),
        retry=retry_if_exception_type(TRANSIENT_ERRORS) | retry_if_result(bool),
        retry_error_callback=give_up,
        sleep=sleep or time.sleep,
        reraise=False,
    )
    first = True
    for attempt in retrying:
        if not first:
            outcome.retried_items += len(pending)
        first = False
        with attempt:
            still = attempt_once()
        if not attempt.retry_state.outcome.failed:  # type: ignore[union-attr]
            attempt.retry_state.set_result(still)
            pending = still
    for action in pending:
        status, reason = last_reason.get(action.doc_id, (None, "unknown failure"))
        outcome.failed.append(
            Failure(action, status, f"gave up after {policy.max_retries} retries: {reason}")
        )
    return outcome


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict):
            text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
        return text
    return str(error or "unknown error")
