"""The write path of ``splade-es serve --enrich``: documents that apps index themselves get
their sparse vector on the way into the cluster.

    app --_bulk / _doc / _create / _update--> serve --same request, vectors added--> cluster

Which writes are enriched: those to an index or alias matching an ``--enrich`` pattern whose
write index maps the rule's sparse field as ``rank_features`` or ``sparse_vector``. Writes to
an index without that field (a BM25 index behind an alias before a migration switch) pass
through; if such a write reaches an index that has the field after all (the alias switched
since the proxy looked), the proxy writes it again with its vector, conditional on the
sequence number the cluster answered (``splade_es_enrich_corrections``).

The vector is the one ``splade-es ingest`` writes: the same rule for the text and for what
is refused (``documents.read_document``: the rule's text fields, stripped, joined by a
space), the same encoder, the same key codec for the field type. The id is the app's (the
request's), not read from the document; a vector the app sent in the sparse field is
replaced.

The index's layout decides the shape (issue 24): where the sparse field holds passages
(``nested``, ``create-index --passages``, ``ingest --long-documents passages``), a document
gets one object per window of its text, ``{"vector": {...}, "start": s, "end": e}``, as
``ingest --long-documents passages`` writes them (``encode_passages`` with serve's
``--window``, ``--overlap``, ``--max-windows``); elsewhere one vector, its text truncated or
max-pooled as ``serve --long-documents`` says. Everything below holds for both.

- ``index`` / ``create`` (bulk items, ``PUT|POST /{index}/_doc[/{id}]``,
  ``/{index}/_create/{id}``): the document gets the vector and is forwarded. A document that
  ingest would refuse (not an object, a text field that is not text, no text at all) is
  answered with a per-item 400 naming the document and the field, and not sent; ``--on-encode-error
  passthrough`` forwards it without a vector instead.
- ``update`` with a partial ``doc`` that sets a text field (or the sparse field): the proxy
  reads the current document, merges the change as the engine would, encodes the result and
  writes it as an ``index`` conditional on the ``_seq_no``/``_primary_term`` it read; on a
  version conflict it reads and tries again (``retry_on_conflict``, at least
  ``update_retries`` times). The response item still says ``update``. A missing document is
  created from ``upsert`` or, with ``doc_as_upsert``, from ``doc``; without either the update
  is forwarded and the cluster answers its usual 404. Partial updates of other fields are
  forwarded untouched (the vector stays right).
- scripted updates of an enriched index: a script may rewrite the text, and the proxy cannot
  run it, so they are answered with a per-item 400 (``passthrough`` forwards them).
- ``delete`` and writes to other indices: forwarded untouched.

Backpressure: documents wait for the model in a bounded queue (``DocumentBatcher``); a
request that does not fit is answered 429, which every official client retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import defaults
from ..exceptions import ConfigurationError, OverloadedError
from ..retry import RetryPolicy
from ..tokens import TokenCodec
from . import enrich_plan, writes
from .batcher import DocumentBatcher, PassageRow, QueueFull, Row
from .enrich_plan import (
    EnrichRule,
    FieldValue,
    OnEncodeError,
    Op,
    Resolved,
    Written,
    parse_rule,
)
from .facts import FactsCache, WriteTarget
from .metrics import Metrics
from .upstream import Headers, Upstream, UpstreamResponse, UpstreamUnavailable

__all__ = [
    "EnrichConfig",
    "EnrichRule",
    "Enricher",
    "OnEncodeError",
    "TooManyRequests",
    "parse_rule",
]

log = logging.getLogger(__name__)

# The write path's defaults (names kept for callers of this module).
MAX_QUEUED_DOCUMENTS = defaults.ENRICH_QUEUE_DOCS
MAX_BATCH_DOCUMENTS = defaults.ENRICH_BATCH_DOCS
UPDATE_RETRIES = defaults.UPDATE_RETRIES

# Waits before an update that lost a version conflict is read and merged again. Two writers of
# one document that retry in step collide again, so the wait is random; it stays short (the
# app's request waits): 10 ms doubled per retry plus up to 10 ms of jitter. On average that is
# 5 ms more than the full jitter used before (uniform up to 0.01 * 2**retry s), and never 0 s
# (a re-read at once may still miss the concurrent write). Capped at 1 s for an app that asks
# for many retries (retry_on_conflict).
CONFLICT_BACKOFF = 0.01
CONFLICT_JITTER = 0.01
CONFLICT_MAX_BACKOFF = 1.0

# enrich_plan.Refusal.kind -> the splade_es_enrich_passthrough label.
PASSTHROUGH_LABELS = {"encode": "encode_error", "script": "script"}


@dataclass(frozen=True, kw_only=True)
class EnrichConfig:
    rules: tuple[EnrichRule, ...]
    on_encode_error: OnEncodeError = "reject"
    max_queued_documents: int = MAX_QUEUED_DOCUMENTS
    max_batch_documents: int = MAX_BATCH_DOCUMENTS
    update_retries: int = UPDATE_RETRIES

    def __post_init__(self) -> None:
        if not self.rules:
            raise ConfigurationError("--enrich needs at least one index pattern")
        if self.on_encode_error not in ("reject", "passthrough"):
            raise ConfigurationError("--on-encode-error is reject or passthrough")
        if self.max_queued_documents < 1 or self.max_batch_documents < 1:
            raise ConfigurationError("the enrich queue and batch sizes must be >= 1")

    @property
    def conflict_policy(self) -> RetryPolicy:
        """How long a conflicting update waits before it is read again. How often it is
        retried is decided per update (``enrich_plan.retries_allowed``: the app's
        ``retry_on_conflict`` when more than ``update_retries``).

        >>> policy = EnrichConfig(rules=(EnrichRule("docs*"),)).conflict_policy
        >>> 0.01 <= policy.backoff(1) <= 0.02, 0.04 <= policy.backoff(3) <= 0.05
        (True, True)
        >>> policy.backoff(30)  # an app's retry_on_conflict=30 waits 1 s, not hours
        1.0
        """
        return RetryPolicy(
            max_retries=max(self.update_retries, 0),
            initial_backoff=CONFLICT_BACKOFF,
            max_backoff=CONFLICT_MAX_BACKOFF,
            jitter=CONFLICT_JITTER,
        )


def passages_value(codec: TokenCodec, passages: Sequence[PassageRow]) -> list[dict[str, Any]]:
    """A document's passages as its index stores them (``defaults.PASSAGE_*``, in the order
    ``ingest``'s ``passage_actions`` writes them): each window's vector keyed by ``codec``,
    its start and end in the text.

    >>> import numpy as np
    >>> codec = TokenCodec(["[PAD]", "tax", "law"], scheme="token")
    >>> passages_value(codec, [(np.array([1]), np.array([1.5], np.float32), 0, 7)])
    [{'vector': {'tax': 1.5}, 'start': 0, 'end': 7}]
    """
    return [
        {
            defaults.PASSAGE_VECTOR: codec.encode_row(ids, weights),
            defaults.PASSAGE_START: int(start),
            defaults.PASSAGE_END: int(end),
        }
        for ids, weights, start, end in passages
    ]


class TooManyRequests(OverloadedError):
    """The encode queue is full: answered 429 (``es_rejected_execution_exception``)."""


@dataclass
class _Results:
    """The bulk response being put together over the rounds of one request."""

    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    took: int = 0
    response: UpstreamResponse | None = None  # the cluster's latest answer


def _without(headers: Headers, *names: str) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in names]


class Enricher:
    """The IO of the write path, one per serve process: resolves where writes go, reads
    current documents, encodes, sends, counts. What to do is ``enrich_plan``'s decision."""

    def __init__(
        self,
        config: EnrichConfig,
        *,
        facts: FactsCache,
        upstream: Upstream,
        documents: DocumentBatcher,
        vocab: Sequence[str],
        metrics: Metrics,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.facts = facts
        self.upstream = upstream
        self.documents = documents
        self.vocab = vocab
        self.metrics = metrics
        self.conflict_policy = config.conflict_policy
        self._sleep = sleep
        self._codecs: dict[str, TokenCodec] = {}

    # ------------------------------------------------------------------ rules and targets
    def codec(self, target: WriteTarget) -> TokenCodec:
        assert target.field_type is not None
        scheme = target.dialect.key_scheme(target.field_type)
        codec = self._codecs.get(scheme)
        if codec is None:  # one per scheme: building one walks the whole vocabulary
            codec = self._codecs[scheme] = TokenCodec(self.vocab, scheme=scheme)
        return codec

    async def target_for(self, name: str, authorization: str | None) -> Resolved | None:
        """The rule for writes to ``name`` (matched on the name, or on the write index behind
        it) and where they go; None when no pattern matches."""
        rules = self.config.rules
        rule = enrich_plan.rule_for(rules, name)
        if rule is not None:
            return rule, await self.facts.write_target(name, rule.sparse_field, authorization)
        target = await self.facts.write_target(name, rules[0].sparse_field, authorization)
        rule = enrich_plan.rule_behind(rules, name, target)
        if rule is None:
            return None
        if rule.sparse_field != rules[0].sparse_field:
            target = await self.facts.write_target(name, rule.sparse_field, authorization)
        return rule, target

    # ------------------------------------------------------------------ the three write APIs
    async def index_document(
        self,
        wp: writes.WritePath,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        auth: str | None,
    ) -> UpstreamResponse | None:
        """``PUT|POST /{index}/_doc[/{id}]`` and ``/{index}/_create/{id}``: the request with
        the vector added, sent; None to forward it unchanged."""
        assert wp.index is not None
        resolved = await self.target_for(wp.index, auth)
        if resolved is None:
            return None
        doc = writes.parse_document(body)
        routing = writes.query_params(target).get("routing")
        op = enrich_plan.plan_single_write(wp, routing, resolved, doc, self.config.on_encode_error)
        if op is None:
            return None
        self._count_refusals([op])
        if op.answer is not None:
            error = writes.item_body(op.answer)[1]["error"]
            raise writes.WriteBodyError(error["reason"], error["type"])
        if op.enriched:
            [vector] = await self._vectors([op])
            body = writes.dumps(enrich_plan.with_vector(op, vector))
        headers = _without(headers, "accept-encoding")  # to read the answer
        response = await self.upstream.request(method, target, headers, body)
        if op.enriched and 200 <= response.status < 300:
            self.metrics.documents_enriched.inc()
        elif not op.enriched and 200 <= response.status < 300:
            await self._correct_safely([Written(op, response.json(), doc)], target, headers, auth)
        return response

    async def bulk(
        self,
        wp: writes.WritePath,
        target: str,
        headers: Headers,
        body: bytes,
        auth: str | None,
    ) -> UpstreamResponse | None:
        """A ``_bulk`` with vectors added to the documents of enriched indices (None: nothing
        to enrich, forward unchanged)."""
        if not body.endswith(b"\n"):
            # Both engines refuse a bulk body without a final newline (400, "The bulk request
            # must be terminated by a newline"; BulkRequestParser, checked on OpenSearch 2.19
            # and 3.3): forwarded as it came, it gets the engine's own answer, and nothing is
            # indexed, with or without a vector. Rewritten, it would have been accepted.
            return None
        items = writes.split_bulk(body)
        enrich_plan.with_url_routing(items, writes.query_params(target).get("routing"))
        ops = await self._plan(items, wp.index, auth)
        if ops is None:
            return None
        return await self._run(ops, len(items), target, headers, auth)

    async def update_document(
        self, wp: writes.WritePath, target: str, headers: Headers, body: bytes, auth: str | None
    ) -> UpstreamResponse | None:
        """``POST /{index}/_update/{id}``: sent as a one-operation bulk when the partial
        document sets a text field; None to forward it unchanged."""
        request = enrich_plan.update_request(wp, target, body)
        ops = await self._plan([request.item], wp.index, auth)
        if ops is None or (ops[0].answer is None and ops[0].send_as is None):
            return None  # neither answered here nor rewritten: the cluster runs the update
        if request.unsupported:
            raise writes.WriteBodyError(
                f"parameter(s) {', '.join(request.unsupported)} are not supported for an "
                "update of a text field through splade-es serve --enrich"
            )
        response = await self._run(ops, 1, request.bulk_target, writes.as_ndjson(headers), auth)
        answer = response.json()
        if response.status != 200 or not isinstance(answer, dict):
            return response
        status, single = writes.single_response(answer["items"][0])
        return UpstreamResponse(status, writes.json_headers(response.headers), writes.dumps(single))

    # ------------------------------------------------------------------ planning (reads)
    async def _plan(
        self, items: list[writes.BulkItem], default_index: str | None, auth: str | None
    ) -> list[Op] | None:
        """The operations of a write request, partial updates merged with their current
        documents; None when no item falls under a rule."""
        names = list(enrich_plan.names_to_resolve(items, default_index))
        found = await asyncio.gather(*(self.target_for(n, auth) for n in names))
        resolved = dict(zip(names, found, strict=True))
        ops = enrich_plan.plan_bulk(items, default_index, resolved, self.config.on_encode_error)
        self._count_refusals(ops)
        await self._read_current([op for op in ops if op.reads_current], auth)
        return ops if enrich_plan.worth_rewriting(ops) else None

    async def _read_current(self, updates: list[Op], auth: str | None) -> None:
        """Read the current documents of ``updates`` (one ``_mget``) and plan each write."""
        if not updates:
            return
        headers = [("Content-Type", "application/json"), ("Accept", "application/json")]
        if auth:  # the app's own right to read: never the proxy's credentials
            headers.append(("Authorization", auth))
        body = writes.dumps(enrich_plan.mget_body(updates))
        response = await self.upstream.request("POST", "/_mget", headers, body)
        enrich_plan.apply_current(
            updates, response.status, response.json(), self.config.on_encode_error
        )
        self._count_refusals(updates)

    def _count_refusals(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if op.refusal is None:
                continue
            if op.refusal.rejected:
                self.metrics.enrich_item_errors.labels(op.refusal.kind).inc()
            else:
                self.metrics.enrich_passthrough.labels(PASSTHROUGH_LABELS[op.refusal.kind]).inc()

    # ------------------------------------------------------------------ encoding
    async def _encode(self, texts: list[str]) -> list[Row]:
        if not texts:
            return []
        try:
            return await self.documents.encode(texts)
        except QueueFull as exc:
            self.metrics.enrich_rejected.inc()
            raise TooManyRequests(str(exc)) from None

    async def _encode_passages(self, texts: list[str]) -> list[list[PassageRow]]:
        if not texts:
            return []
        try:
            return await self.documents.encode_passages(texts)
        except QueueFull as exc:
            self.metrics.enrich_rejected.inc()
            raise TooManyRequests(str(exc)) from None

    async def _vectors(self, ops: Sequence[Op]) -> list[FieldValue]:
        """The sparse field's value for each op's text, keyed as its index wants: one vector,
        or the text's passages where the index's field holds passages (its layout decides).
        Each kind is one queue request, one after the other: admitted together, a bulk of
        both kinds larger than the queue would be refused (429) for ever."""
        kinds = [op.target is not None and op.target.passages for op in ops]
        texts = [op.text or "" for op in ops]
        rows = await self._encode([t for t, p in zip(texts, kinds, strict=True) if not p])
        passages = await self._encode_passages([t for t, p in zip(texts, kinds, strict=True) if p])
        one, many = iter(rows), iter(passages)
        values: list[FieldValue] = []
        for op, kind in zip(ops, kinds, strict=True):
            assert op.target is not None
            codec = self.codec(op.target)
            if kind:
                values.append(passages_value(codec, next(many)))
            else:
                values.append(codec.encode_row(*next(one)))
        return values

    async def _round_plan(self, ops: list[Op], positions: Sequence[int]) -> writes.BulkPlan:
        """The bulk to send for ``ops[p]``, p in ``positions``; vectors encoded in one call."""
        todo = enrich_plan.to_encode(ops, positions)
        vectors = await self._vectors([ops[p] for p in todo])
        return enrich_plan.round_plan(ops, positions, dict(zip(todo, vectors, strict=True)))

    # ------------------------------------------------------------------ sending a bulk
    async def _run(
        self, ops: list[Op], total: int, target: str, headers: Headers, auth: str | None
    ) -> UpstreamResponse:
        """Send the bulk; send again the updates that lost a version conflict; correct what
        an alias switch put elsewhere. The app gets one answer, item for item."""
        target = enrich_plan.plain_json_target(target)
        sent_headers = writes.json_accept(_without(headers, "accept-encoding"))
        results = _Results()
        plan: writes.BulkPlan | None = await self._round_plan(ops, range(total))
        first_round = True
        while plan is not None:
            failure = await self._send_round(ops, plan, target, sent_headers, results)
            if failure is not None and first_round:
                if failure.refused:  # refused as a whole (auth, size): nothing indexed
                    assert results.response is not None
                    return results.response
                raise UpstreamUnavailable(failure.reason)
            if failure is not None:  # a retry failed: those operations failed
                failed = enrich_plan.failed_items(ops, plan.sent, failure.reason, failure.status)
                results.items.update(failed)
                break
            retry = enrich_plan.conflicts_to_retry(
                ops, plan.sent, results.items, self.config.update_retries
            )
            plan = await self._retry_round(ops, retry, auth, results) if retry else None
            first_round = False
        stale = enrich_plan.stale_writes(ops, results.items)
        if stale:
            await self._correct_safely(stale, target, sent_headers, auth)
        return self._response(total, results)

    async def _send_round(
        self,
        ops: list[Op],
        plan: writes.BulkPlan,
        target: str,
        headers: Headers,
        results: _Results,
    ) -> enrich_plan.RoundFailure | None:
        """Send one round and put its items into ``results``; the failure when the cluster
        did not answer item by item."""
        results.items.update(plan.answered)
        if not plan.sent:
            return None
        response = await self.upstream.request("POST", target, headers, plan.body)
        results.response = response
        answer = response.json()
        answered = enrich_plan.round_items(response.status, answer, len(plan.sent))
        if isinstance(answered, enrich_plan.RoundFailure):
            return answered
        results.took += int(answer.get("took", 0))
        items = enrich_plan.items_by_position(plan, answered)
        results.items.update(items)
        self.metrics.documents_enriched.inc(enrich_plan.enriched_count(ops, items))
        return None

    async def _retry_round(
        self, ops: list[Op], retry: list[int], auth: str | None, results: _Results
    ) -> writes.BulkPlan | None:
        """After a backoff, read, merge and encode again the updates that lost a version
        conflict. The first round is indexed, so a failure here is answered (503 for those
        updates, None returned), never raised."""
        enrich_plan.reset_for_retry(ops, retry)
        self.metrics.enrich_retries.inc(len(retry))
        await self._sleep(self.conflict_policy.backoff(max(ops[p].tries for p in retry)))
        try:
            await self._read_current([ops[p] for p in retry], auth)
            return await self._round_plan(ops, retry)
        except Exception as exc:
            log.warning("retrying %d conflicting updates failed: %s", len(retry), exc)
            reason = f"retrying after a version conflict: {exc}"
            results.items.update(enrich_plan.failed_items(ops, retry, reason, 503))
            return None

    @staticmethod
    def _response(total: int, results: _Results) -> UpstreamResponse:
        items = results.items
        body = writes.assemble(total, results.took, list(items), list(items.values()), {})
        headers = (
            writes.json_headers(results.response.headers)
            if results.response
            else [("content-type", "application/json; charset=UTF-8")]
        )
        return UpstreamResponse(200, headers, writes.dumps(body))

    # ------------------------------------------------------------------ corrections
    async def _correct_safely(
        self, written: list[Written], target: str, headers: Headers, auth: str | None
    ) -> None:
        """``_correct`` after the app's write was indexed: a failure is logged and counted,
        never answered (the app would retry a write that happened)."""
        try:
            await self._correct(written, target, headers, auth)
        except Exception as exc:
            ids = [w.answered.get("_id") for w in written if isinstance(w.answered, dict)]
            log.warning("could not add vectors after an alias switch to %s: %s", ids[:20], exc)
            self.metrics.enrich_corrections_failed.inc(len(written))

    async def _correct(
        self, written: list[Written], target: str, headers: Headers, auth: str | None
    ) -> None:
        """Documents forwarded without a vector because their index had no sparse field, that
        the cluster put in another index (the alias switched since the proxy looked): written
        again there with the vector, if that index has the field."""
        fixed: list[Op] = []
        for write in written:
            index = enrich_plan.moved_to(write)
            if index is None:
                continue
            rule, resolved = write.op.rule, write.op.target
            assert rule is not None and resolved is not None
            self.facts.forget_target(resolved.name, rule.sparse_field)
            actual = await self.facts.write_target(index, rule.sparse_field, auth)
            again = enrich_plan.plan_correction(write, actual, self.config.on_encode_error)
            if again is not None:
                self._count_refusals([again])
                if again.enriched:
                    fixed.append(again)
        if fixed:
            await self._send_corrections(fixed, target, headers)

    async def _send_corrections(self, fixed: list[Op], target: str, headers: Headers) -> None:
        vectors = await self._vectors(fixed)
        body = writes.join_lines(enrich_plan.correction_lines(fixed, vectors))
        bulk_headers = writes.as_ndjson(_without(headers, "accept-encoding", "content-encoding"))
        path = enrich_plan.correction_path(target)
        response = await self.upstream.request("POST", path, bulk_headers, body)
        answer = response.json()
        if response.status == 200 and isinstance(answer, dict):
            done = enrich_plan.succeeded(answer)
            self.metrics.enrich_corrections.inc(done)
            self.metrics.documents_enriched.inc(done)
