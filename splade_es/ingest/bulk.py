"""Bulk requests: chunking, per-item results, bounded retries with jitter, dead letters.

A pipeline of small pieces, each testable alone:

* ``make_action``    one document, serialized once: those bytes size its chunk and are the
                     bytes sent, on the first try and on every retry;
* ``chunk_actions``  splits actions by document count and request bytes (pure);
* ``ndjson_body``    the request body of one chunk, joined from those bytes (pure);
* ``split_items``    sorts a bulk response into indexed / retryable / permanent (pure);
* ``send_bulk``      sends a chunk, re-sending only the items that failed with a retryable
                     status (429, 5xx) or all of them after a connection failure, waiting as
                     ``splade_es.retry.RetryPolicy`` says, a bounded number of times.

Every action carries an explicit ``_id`` and uses the ``index`` op, so re-sending an item
that in fact succeeded overwrites it: retries never duplicate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import elasticsearch
import opensearchpy
from tenacity import RetryCallState, retry_if_result

from ..retry import RETRYABLE_STATUS, TRANSIENT_ERRORS, RetryPolicy, is_retryable, status_of

__all__ = [
    "Action",
    "ActionChunker",
    "BulkOutcome",
    "Failure",
    "RetryPolicy",
    "bulk_body",
    "chunk_actions",
    "make_action",
    "ndjson_body",
    "request_body",
    "send_bulk",
    "split_items",
    "vector_action",
]

log = logging.getLogger(__name__)

# The clients that send a bytes body as it is (elasticsearch-py's NdjsonSerializer passes
# bytes through; opensearch-py's _bulk_body only adds a missing final newline).
NDJSON_CLIENTS: tuple[type, ...] = (elasticsearch.Elasticsearch, opensearchpy.OpenSearch)
# A bulk request's fixed cost per action beyond its source and id: the action line's JSON.
ACTION_LINE_BYTES = 40
# What a whole bulk request can fail with, retryable or not (``is_retryable`` decides).
REQUEST_ERRORS: tuple[type[Exception], ...] = (
    *TRANSIENT_ERRORS,
    elasticsearch.ApiError,
    opensearchpy.TransportError,
)


@dataclass(frozen=True)
class Action:
    """One document to index, with its JSON as it will be sent (``make_action``,
    ``vector_action``)."""

    position: int
    doc_id: str
    fields: dict[str, Any] = field(repr=False)  # the document (with ``vector``: all but it)
    encoded: bytes = field(repr=False)  # the source as JSON: sized for chunks, sent as is
    encoded_id: bytes = field(repr=False)  # the id as a JSON string, for the action line
    # (field, a function making its value): the vector, left out of ``fields``; a dict of
    # ~300 weights is made only if something reads ``source`` (``encoded`` already holds it)
    vector: tuple[str, Callable[[], Any]] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def source(self) -> dict[str, Any]:
        """The document as a dict, its vector included: what ``encoded`` is the JSON of."""
        if self.vector is None:
            return self.fields
        name, make = self.vector
        return {**self.fields, name: make()}


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


# json.dumps with these options builds an encoder per call: one, built once, writes the same.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def to_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, as the clients' own serializers write it."""
    return _JSON.encode(value).encode("utf-8")


def make_action(position: int, doc_id: str, source: dict[str, Any]) -> Action:
    """The action for one document; its source is serialized here, once."""
    return Action(position, doc_id, source, to_json(source), to_json(doc_id))


def vector_action(
    position: int,
    doc_id: str,
    fields: dict[str, Any],
    vector_field: str,
    vector: tuple[bytes, Callable[[], Any]],
) -> Action:
    """``make_action(position, doc_id, {**fields, vector_field: value})`` from the value's JSON
    (``vector[0]``, as ``to_json`` writes it) and a function that makes the value (``vector[1]``,
    called only if the action's ``source`` is read): the same bytes, and no dict made.

    >>> action = vector_action(1, "a", {"t": "x"}, "v", (b'{"k":1.5}', lambda: {"k": 1.5}))
    >>> action.encoded == make_action(1, "a", {"t": "x", "v": {"k": 1.5}}).encoded, action.source
    (True, {'t': 'x', 'v': {'k': 1.5}})
    """
    json_text, make = vector
    if vector_field in fields:  # the field keeps its place: serialized as a whole
        return make_action(position, doc_id, {**fields, vector_field: make()})
    comma = b"," if fields else b""
    parts = (json_object_head(fields), comma, to_json(vector_field), b":", json_text, b"}")
    encoded = b"".join(parts)
    return Action(position, doc_id, fields, encoded, to_json(doc_id), (vector_field, make))


_ESCAPED = bytes(range(0x20)) + b'"\\'  # what JSON writes escaped (ensure_ascii=False)


def json_object_head(fields: dict[str, Any]) -> bytes:
    """``to_json(fields)`` without its closing "}", writing a string that needs no escape
    as its UTF-8 bytes in quotes (what ``json.dumps`` writes, without its per-character
    escaping pass over a document's text).

    >>> json_object_head({"t": "tax", "n": [1, 2.5]}) + b"}" == to_json({"t": "tax", "n": [1, 2.5]})
    True
    """
    parts = []
    for key, value in fields.items():
        if type(key) is not str:  # json.dumps turns other keys into strings its own way
            return to_json(fields)[:-1]
        text = _json_string(value) if type(value) is str else to_json(value)
        parts.append(b"%s:%s" % (_json_string(key), text))
    return b"{" + b",".join(parts)


def _json_string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data.translate(None, _ESCAPED)) == len(data):
        return b'"%s"' % data
    return to_json(text)


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
        cost = len(action.encoded) + len(action.doc_id) + ACTION_LINE_BYTES
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
) -> Generator[list[Action], None, None]:
    """``ActionChunker`` over an iterable."""
    chunker = ActionChunker(max_docs=max_docs, max_bytes=max_bytes)
    for action in actions:
        yield from chunker.add(action)
    last = chunker.flush()
    if last:
        yield last


def bulk_body(index: str, actions: Sequence[Action]) -> list[dict[str, Any]]:
    """The request body as the bulk API's Python form: an action line, then the source."""
    body: list[dict[str, Any]] = []
    for action in actions:
        body.append({"index": {"_index": index, "_id": action.doc_id}})
        body.append(action.source)
    return body


def ndjson_body(index: str, actions: Sequence[Action]) -> bytes:
    """The request body as NDJSON, joined from each action's bytes (no source serialized
    again): the lines ``bulk_body`` would be serialized to.

    >>> ndjson_body("ix", [make_action(1, "a", {"t": 1})])
    b'{"index":{"_index":"ix","_id":"a"}}\\n{"t":1}\\n'
    """
    head = b'{"index":{"_index":' + to_json(index) + b',"_id":'
    parts: list[bytes] = []
    for a in actions:  # joined once: each document's bytes are copied once
        parts += (head, a.encoded_id, b"}}\n", a.encoded, b"\n")
    return b"".join(parts)


def request_body(client: Any, index: str, actions: Sequence[Action]) -> bytes | list[Any]:
    """What ``client.bulk`` is given: the NDJSON bytes for elasticsearch-py and opensearch-py
    clients, which send them as they are; the ``bulk_body`` dicts for any other object that
    has a ``bulk`` (a test double, a wrapper), which may not take bytes."""
    if isinstance(client, NDJSON_CLIENTS):
        return ndjson_body(index, actions)
    return bulk_body(index, actions)


def split_items(
    actions: Sequence[Action], response: dict[str, Any]
) -> tuple[list[Action], list[Failure], list[Failure]]:
    """(indexed, retryable, permanent) from a bulk response, matched to ``actions`` by order."""
    items = response.get("items", [])
    if len(items) != len(actions):
        # Should never happen; treat the whole chunk as retryable rather than guess.
        return [], [Failure(a, None, "bulk response item count mismatch") for a in actions], []
    indexed: list[Action] = []
    retryable: list[Failure] = []
    permanent: list[Failure] = []
    for action, item in zip(actions, items, strict=True):
        result = next(iter(item.values()))
        status = int(result.get("status", 0))
        if 200 <= status < 300:
            indexed.append(action)
            continue
        failure = Failure(action, status, _reason(result.get("error")))
        (retryable if status in RETRYABLE_STATUS else permanent).append(failure)
    return indexed, retryable, permanent


class BulkAttempts:
    """One chunk's tries: each sends what is still pending, sorts the answer into the
    outcome, and keeps the last reason of each item it will try again."""

    def __init__(self, client: Any, index: str, actions: Sequence[Action]) -> None:
        self.client = client
        self.index = index
        self.pending: list[Action] = list(actions)
        self.outcome = BulkOutcome()
        self.last_reason: dict[str, tuple[int | None, str]] = {}
        self.tries = 0

    def send_pending(self) -> list[Action]:
        """Send the pending actions once; what is still pending after (empty: done).
        Raises what no retry can fix (a 400 or 401 to the whole request, say)."""
        if self.tries:
            self.outcome.retried_items += len(self.pending)
        self.tries += 1
        try:
            response = self.client.bulk(body=request_body(self.client, self.index, self.pending))
        except REQUEST_ERRORS as exc:
            if not is_retryable(exc):
                raise
            self._note_whole_request_failed(exc)
            return self.pending
        indexed, retryable, permanent = split_items(self.pending, dict(response))
        self.outcome.indexed.extend(indexed)
        self.outcome.failed.extend(permanent)
        for failure in retryable:
            self.last_reason[failure.action.doc_id] = (failure.status, failure.reason)
        self.pending = [f.action for f in retryable]
        return self.pending

    def give_up(self, retries: int) -> BulkOutcome:
        """The outcome, with what is still pending failed for its last reason."""
        for action in self.pending:
            status, reason = self.last_reason.get(action.doc_id, (None, "unknown failure"))
            self.outcome.failed.append(
                Failure(action, status, f"gave up after {retries} retries: {reason}")
            )
        self.pending = []
        return self.outcome

    def _note_whole_request_failed(self, exc: Exception) -> None:
        status = status_of(exc) if not isinstance(exc, TRANSIENT_ERRORS) else None
        reason = f"{type(exc).__name__}: {exc}" if status is None else f"bulk request failed: {exc}"
        for action in self.pending:
            self.last_reason[action.doc_id] = (status, reason)


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
    attempts = BulkAttempts(client, index, actions)

    def keep_pending(state: RetryCallState) -> None:
        """Out of retries: what is pending stays pending (``give_up`` fails it)."""

    retrying = policy.retrying(
        retry=retry_if_result(bool), sleep=sleep, retry_error_callback=keep_pending
    )
    retrying(attempts.send_pending)
    return attempts.give_up(policy.max_retries)


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict):
            text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
        return text
    return str(error or "unknown error")
