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
import fnmatch
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from ..documents import read_document
from ..exceptions import ConfigurationError, InputError, OverloadedError
from ..tokens import TokenCodec
from . import writes
from .batcher import DocumentBatcher, QueueFull, Row
from .facts import FactsCache, WriteTarget
from .metrics import Metrics
from .upstream import Headers, Upstream, UpstreamResponse, UpstreamUnavailable

log = logging.getLogger(__name__)

OnEncodeError = Literal["reject", "passthrough"]


@dataclass(frozen=True)
class EnrichRule:
    """Writes to names matching ``pattern`` (shell-style: ``docs*``) get ``sparse_field``
    computed from ``text_fields``."""

    pattern: str
    text_fields: tuple[str, ...] = ("title", "text")
    sparse_field: str = "splade"

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    @property
    def watched_fields(self) -> tuple[str, ...]:
        """Fields whose change in a partial update changes the vector."""
        return (*self.text_fields, self.sparse_field)


def parse_rule(
    spec: str, *, text_fields: Sequence[str] = ("title", "text"), sparse_field: str = "splade"
) -> EnrichRule:
    """``PATTERN[:FIELDS[:SPARSE_FIELD]]`` (index names cannot hold ``:``).

    >>> parse_rule("docs*")
    EnrichRule(pattern='docs*', text_fields=('title', 'text'), sparse_field='splade')
    >>> parse_rule("news-*:headline,body:vec")
    EnrichRule(pattern='news-*', text_fields=('headline', 'body'), sparse_field='vec')
    """
    parts = spec.split(":")
    if len(parts) > 3 or not parts[0].strip():
        raise ConfigurationError(
            f"--enrich expects PATTERN[:TEXT_FIELDS[:SPARSE_FIELD]], got {spec!r}"
        )
    fields = tuple(text_fields)
    if len(parts) > 1 and parts[1].strip():
        fields = tuple(f.strip() for f in parts[1].split(",") if f.strip())
    sparse = parts[2].strip() if len(parts) > 2 and parts[2].strip() else sparse_field
    if not fields:
        raise ConfigurationError(f"--enrich {spec!r}: no text fields")
    if "." in sparse:
        raise ConfigurationError(
            f"--enrich {spec!r}: the sparse field must be a top-level field, not {sparse!r}"
        )
    if sparse in fields:
        raise ConfigurationError(
            f"--enrich {spec!r}: {sparse!r} is both a text and the sparse field"
        )
    return EnrichRule(parts[0].strip(), fields, sparse)


@dataclass(frozen=True, kw_only=True)
class EnrichConfig:
    rules: tuple[EnrichRule, ...]
    on_encode_error: OnEncodeError = "reject"
    max_queued_documents: int = 4096  # more waiting documents -> 429
    max_batch_documents: int = 256  # documents of concurrent requests encoded together
    update_retries: int = 3  # version conflicts retried at least this often

    def __post_init__(self) -> None:
        if not self.rules:
            raise ConfigurationError("--enrich needs at least one index pattern")
        if self.on_encode_error not in ("reject", "passthrough"):
            raise ConfigurationError("--on-encode-error is reject or passthrough")
        if self.max_queued_documents < 1 or self.max_batch_documents < 1:
            raise ConfigurationError("the enrich queue and batch sizes must be >= 1")


class TooManyRequests(OverloadedError):
    """The encode queue is full: answered 429 (``es_rejected_execution_exception``)."""


# ---------------------------------------------------------------------- one operation
@dataclass
class _Op:
    """What happens to one operation of a bulk."""

    item: writes.BulkItem
    rule: EnrichRule | None = None
    target: WriteTarget | None = None
    doc: dict[str, Any] | None = None  # the document to send with a vector
    text: str | None = None
    send_as: str | None = None  # "index"/"create": an update sent as a conditional write
    meta: dict[str, Any] = field(default_factory=dict)  # the action metadata to send
    answer: dict[str, Any] | None = None  # answered by the proxy
    conditional_by_app: bool = False  # the app's own if_seq_no: never retried
    tries: int = 0

    @property
    def enriched(self) -> bool:
        return self.doc is not None and self.answer is None


class Enricher:
    """Everything the write path does per request; one per serve process."""

    def __init__(
        self,
        config: EnrichConfig,
        *,
        facts: FactsCache,
        upstream: Upstream,
        documents: DocumentBatcher,
        vocab: Sequence[str],
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.facts = facts
        self.upstream = upstream
        self.documents = documents
        self.vocab = vocab
        self.metrics = metrics
        self._codecs: dict[str, TokenCodec] = {}

    # ------------------------------------------------------------------ rules and targets
    def codec(self, target: WriteTarget) -> TokenCodec:
        assert target.field_type is not None
        scheme = target.dialect.key_scheme(target.field_type)
        codec = self._codecs.get(scheme)
        if codec is None:  # one per scheme: building one walks the whole vocabulary
            codec = self._codecs[scheme] = TokenCodec(self.vocab, scheme=scheme)
        return codec

    async def target_for(
        self, name: str, authorization: str | None
    ) -> tuple[EnrichRule, WriteTarget] | None:
        """The rule for writes to ``name`` (matched on the name, or on the write index behind
        it) and where they go; None when no pattern matches."""
        rule = next((r for r in self.config.rules if r.matches(name)), None)
        if rule is not None:
            return rule, await self.facts.write_target(name, rule.sparse_field, authorization)
        first = self.config.rules[0]
        target = await self.facts.write_target(name, first.sparse_field, authorization)
        if target.index is None or target.index == name:
            return None
        rule = next((r for r in self.config.rules if r.matches(target.index)), None)
        if rule is None:
            return None
        if rule.sparse_field != first.sparse_field:
            target = await self.facts.write_target(name, rule.sparse_field, authorization)
        return rule, target

    # ------------------------------------------------------------------ single documents
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
        rule, write_target = resolved
        doc = writes.parse_document(body)
        if doc is None:
            if write_target.enriched and self.config.on_encode_error == "reject":
                self.metrics.enrich_item_errors.labels("encode").inc()
                raise writes.WriteBodyError(
                    f"document [{wp.doc_id or '(new)'}]: not a strict JSON object (comments, "
                    "NaN or an out-of-range number); splade-es serve cannot read its text",
                    "parse_exception",
                )
            return None
        action = "create" if wp.api == "_create" else "index"
        meta: dict[str, Any] = {"_index": wp.index, "_id": wp.doc_id}
        routing = writes.query_params(target).get("routing")
        if routing is not None:
            meta["routing"] = routing
        item = writes.BulkItem(1, action, meta, b"")
        op = _Op(item, rule, write_target)
        if write_target.enriched:
            self._compose(op, doc, f"document [{wp.doc_id or '(new)'}]")
            if op.answer is not None:
                _, error = writes.item_body(op.answer)
                raise writes.WriteBodyError(error["error"]["reason"])
            if op.doc is not None:
                [row] = await self._encode([op.text or ""])
                body = writes.dumps(self._with_vector(op, row))
        headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]  # to read it
        response = await self.upstream.request(method, target, headers, body)
        if op.enriched and 200 <= response.status < 300:
            self.metrics.documents_enriched.inc()
        elif not op.enriched and 200 <= response.status < 300:
            await self._correct_safely([(op, response.json(), doc)], target, headers, auth)
        return response

    # ------------------------------------------------------------------ bulk
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
        routing = writes.query_params(target).get("routing")
        if routing is not None:  # the URL's routing applies to items without their own
            for item in items:
                item.meta.setdefault("routing", routing)
        ops = await self._plan(items, wp.index, auth)
        if ops is None:
            return None
        return await self._run(ops, len(items), target, headers, auth)

    async def update_document(
        self, wp: writes.WritePath, target: str, headers: Headers, body: bytes, auth: str | None
    ) -> UpstreamResponse | None:
        """``POST /{index}/_update/{id}``: sent as a one-operation bulk when the partial
        document sets a text field; None to forward it unchanged."""
        params = writes.query_params(target)
        meta: dict[str, Any] = {"_index": wp.index, "_id": wp.doc_id}
        for name in ("routing", "if_seq_no", "if_primary_term", "retry_on_conflict"):
            if name in params:
                value = params.pop(name)
                meta[name] = int(value) if name != "routing" and value.isdigit() else value
        passed = {k: v for k, v in params.items() if k in writes.BULK_PARAMS}
        item = writes.BulkItem(1, "update", meta, writes.action_line("update", meta), body.strip())
        ops = await self._plan([item], wp.index, auth)
        if ops is None or (ops[0].answer is None and ops[0].send_as is None):
            return None
        if set(params) - set(passed):
            unsupported = ", ".join(sorted(set(params) - set(passed)))
            raise writes.WriteBodyError(
                f"parameter(s) {unsupported} are not supported for an update of a text field "
                "through splade-es serve --enrich"
            )
        bulk_target = "/_bulk" + ("?" + urlencode(passed) if passed else "")
        response = await self._run(ops, 1, bulk_target, writes.as_ndjson(headers), auth)
        answer = response.json()
        if response.status != 200 or not isinstance(answer, dict):
            return response
        status, single = writes.single_response(answer["items"][0])
        return UpstreamResponse(status, writes.json_headers(response.headers), writes.dumps(single))

    # ------------------------------------------------------------------ planning
    async def _plan(
        self, items: list[writes.BulkItem], default_index: str | None, auth: str | None
    ) -> list[_Op] | None:
        names = {
            name
            for item in items
            if item.action != "delete" and (name := item.index(default_index)) is not None
        }
        if not names:
            return None
        resolved_list = await asyncio.gather(*(self.target_for(n, auth) for n in names))
        resolved = dict(zip(names, resolved_list, strict=True))
        if not any(resolved_list):
            return None
        ops: list[_Op] = []
        updates: list[_Op] = []
        for item in items:
            name = item.index(default_index)
            found = resolved.get(name) if item.action != "delete" and name else None
            op = _Op(item, *(found or (None, None)))
            ops.append(op)
            if found is None or not found[1].enriched:
                continue
            if item.action in ("index", "create"):
                doc = item.source()
                if doc is None:
                    self._unreadable(op)
                    continue
                self._compose(op, doc, self._where(item))
            elif item.action == "update":
                self._plan_update(op, updates)
        if updates:
            await self._read_current(updates, auth)
        if not any(op.doc is not None or op.answer is not None or op.target for op in ops):
            return None
        return ops

    def _plan_update(self, op: _Op, updates: list[_Op]) -> None:
        assert op.rule is not None
        body = op.item.source()
        if not isinstance(body, dict):
            self._unreadable(op)
            return
        if "script" in body:
            if self.config.on_encode_error == "passthrough":
                self.metrics.enrich_passthrough.labels("script").inc()
                return
            self.metrics.enrich_item_errors.labels("script").inc()
            op.answer = self._error(
                op,
                f"{self._where(op.item)}: a scripted update of an index that splade-es serve "
                f"enriches: the script may change {', '.join(op.rule.text_fields)} and the "
                "proxy cannot recompute the vector from it; send a partial doc or the whole "
                "document (or run serve with --on-encode-error passthrough)",
            )
            return
        partial = body.get("doc")
        if isinstance(partial, dict) and writes.touches(partial, op.rule.watched_fields):
            if "if_seq_no" in op.item.meta and "if_primary_term" not in op.item.meta:
                return  # forwarded: the engine refuses one without the other
            op.conditional_by_app = "if_seq_no" in op.item.meta
            updates.append(op)

    async def _read_current(self, updates: list[_Op], auth: str | None) -> None:
        """Read the current documents of ``updates`` (one ``_mget``) and plan each write."""
        docs = []
        for op in updates:
            assert op.target is not None and op.target.index is not None
            spec = {"_index": op.target.index, "_id": op.item.doc_id}
            if "routing" in op.item.meta:
                spec["routing"] = op.item.meta["routing"]
            docs.append(spec)
        headers = [("Content-Type", "application/json"), ("Accept", "application/json")]
        if auth:  # the app's own right to read: never the proxy's credentials
            headers.append(("Authorization", auth))
        response = await self.upstream.request(
            "POST", "/_mget", headers, writes.dumps({"docs": docs})
        )
        answer = response.json()
        found = answer.get("docs") if isinstance(answer, dict) else None
        if response.status != 200 or not isinstance(found, list) or len(found) != len(docs):
            reason = f"reading the current documents failed: the cluster answered {response.status}"
            for op in updates:
                op.answer = self._error(op, reason, status=response.status or 502)
            return
        for op, current in zip(updates, found, strict=True):
            self._merge(op, current)

    def _merge(self, op: _Op, current: dict[str, Any]) -> None:
        assert op.rule is not None and op.target is not None
        body = op.item.source()
        sets_vector = op.rule.sparse_field in body["doc"]  # the app's vector is replaced
        partial = {k: v for k, v in body["doc"].items() if k != op.rule.sparse_field}
        # The write goes to the concrete index the proxy read: not an alias (require_alias).
        meta = {"_index": op.target.index, "_id": op.item.doc_id, "require_alias": False}
        if "routing" in op.item.meta:
            meta["routing"] = op.item.meta["routing"]
        if "error" in current:
            # The engine's own reason and type (routing_missing_exception, ...); an _mget
            # item carries no status, and the update did not happen: 400.
            error = current["error"] if isinstance(current["error"], dict) else {}
            op.answer = self._error(
                op,
                f"reading the current document failed: {error.get('reason', current['error'])}",
                400,
                str(error.get("type", "illegal_argument_exception")),
            )
            return
        if not current.get("found"):
            # The engines' order (UpdateHelper.prepareUpsert): doc_as_upsert, then upsert.
            if body.get("doc_as_upsert") is True:
                new = partial
            else:
                new = body.get("upsert") if isinstance(body.get("upsert"), dict) else None
            if new is None:
                return  # forwarded: the cluster answers document_missing_exception
            op.send_as, op.meta = "create", meta
            self._compose(
                op,
                {k: v for k, v in new.items() if k != op.rule.sparse_field},
                self._where(op.item),
            )
            return
        if not isinstance(current.get("_source"), dict) or "_seq_no" not in current:
            # _source disabled: a merge would replace the document with the partial one.
            op.answer = self._error(
                op,
                f"{self._where(op.item)}: the current document has no _source to merge into",
                400,
                "document_source_missing_exception",
            )
            return
        stored = {k: v for k, v in current["_source"].items() if k != op.rule.sparse_field}
        merged = writes.merge_partial(stored, partial)
        if merged == stored and not sets_vector and body.get("detect_noop", True) is not False:
            op.doc = None  # forwarded: the cluster answers "noop"
            return
        if op.conditional_by_app:
            meta["if_seq_no"] = op.item.meta["if_seq_no"]
            meta["if_primary_term"] = op.item.meta["if_primary_term"]
        else:
            meta["if_seq_no"] = current["_seq_no"]
            meta["if_primary_term"] = current["_primary_term"]
        op.send_as, op.meta = "index", meta
        self._compose(op, merged, self._where(op.item))

    def _compose(self, op: _Op, doc: Any, where: str) -> None:
        """Set the document and its text, or answer the operation (a document ingest would
        refuse, by the same rule and in the same words)."""
        assert op.rule is not None
        if isinstance(doc, dict):  # the app's vector is replaced: never read as a field
            doc = {k: v for k, v in doc.items() if k != op.rule.sparse_field}
        try:
            # The id is the request's: id_field=None (a content hash, unused) skips the id
            # check, which is about documents that carry their id in a field.
            op.text = read_document(
                doc,
                id_field=None,
                text_fields=op.rule.text_fields,
                position=op.item.number,
                unit="bulk item",
                where=where,
            ).text
        except InputError as exc:
            if self.config.on_encode_error == "passthrough":
                self.metrics.enrich_passthrough.labels("encode_error").inc()
                op.doc = op.text = None
                op.send_as = None
                return
            self.metrics.enrich_item_errors.labels("encode").inc()
            op.answer = self._error(
                op,
                f"{exc}; not indexed: splade-es serve cannot compute its "
                f"{op.rule.sparse_field!r} vector (--on-encode-error passthrough indexes such "
                "documents without one)",
            )
            return
        op.doc = doc

    def _unreadable(self, op: _Op) -> None:
        """A document of an enriched index that is not strict JSON: never sent without its
        vector (the engine may read what Python's parser refuses, comments for instance)."""
        if self.config.on_encode_error == "passthrough":
            self.metrics.enrich_passthrough.labels("encode_error").inc()
            return
        self.metrics.enrich_item_errors.labels("encode").inc()
        op.answer = self._error(
            op,
            f"{self._where(op.item)}: not a strict JSON object (comments, NaN or an "
            "out-of-range number); splade-es serve cannot read its text to compute its vector",
            400,
            "parse_exception",
        )

    @staticmethod
    def _where(item: writes.BulkItem) -> str:
        return f"document [{item.doc_id or '(new)'}] (bulk item {item.number})"

    def _error(
        self,
        op: _Op,
        reason: str,
        status: int = 400,
        error_type: str = "illegal_argument_exception",
    ) -> dict[str, Any]:
        index = op.target.index if op.target and op.target.index else op.item.meta.get("_index")
        return writes.error_item(op.item.action, index, op.item.doc_id, status, error_type, reason)

    # ------------------------------------------------------------------ encoding and sending
    async def _encode(self, texts: list[str]) -> list[Row]:
        if not texts:
            return []
        try:
            return await self.documents.encode(texts)
        except QueueFull as exc:
            self.metrics.enrich_rejected.inc()
            raise TooManyRequests(str(exc)) from None

    def _with_vector(self, op: _Op, row: Row) -> dict[str, Any]:
        assert op.rule is not None and op.target is not None and op.doc is not None
        return {**op.doc, op.rule.sparse_field: self.codec(op.target).encode_row(*row)}

    async def _lines(self, ops: list[_Op], positions: list[int]) -> writes.BulkPlan:
        """The bulk to send for ``ops[p]``, p in ``positions``; vectors encoded in one call."""
        todo = [p for p in positions if ops[p].enriched]
        rows = dict(zip(todo, await self._encode([ops[p].text or "" for p in todo]), strict=True))
        plan = writes.BulkPlan()
        for p in positions:
            op = ops[p]
            if op.answer is not None:
                plan.answer(p, op.answer)
            elif p in rows:
                action = op.send_as or op.item.action
                header = writes.action_line(action, op.meta) if op.send_as else op.item.header_line
                if op.send_as:
                    plan.renamed[p] = op.item.action
                plan.send(p, header, writes.dumps(self._with_vector(op, rows[p])))
            else:
                plan.send(p, op.item.header_line, op.item.source_line)
        return plan

    async def _run(
        self, ops: list[_Op], total: int, target: str, headers: Headers, auth: str | None
    ) -> UpstreamResponse:
        # The items are needed, in full, as plain JSON, whatever the app asked for.
        target = writes.without_param(writes.without_param(target, "filter_path"), "format")
        sent_headers = writes.json_accept(
            [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
        )
        plan = await self._lines(ops, list(range(total)))
        took = 0
        items: dict[int, dict[str, Any]] = {}
        response: UpstreamResponse | None = None
        while True:
            items.update(plan.answered)
            if plan.sent:
                response = await self.upstream.request("POST", target, sent_headers, plan.body)
                answer = response.json()
                if response.status != 200 or not isinstance(answer, dict):
                    if len(items) == len(plan.answered):  # the first round
                        return response  # refused as a whole (auth, size): nothing indexed
                    for p in plan.sent:  # a retry refused: those operations failed
                        items[p] = self._error(
                            ops[p], f"the cluster answered {response.status}", response.status
                        )
                    break
                took += int(answer.get("took", 0))
                try:
                    answered = writes.response_items(answer, len(plan.sent))
                except writes.WriteBodyError as exc:  # the cluster's answer, not the app's bulk
                    if len(items) == len(plan.answered):
                        raise UpstreamUnavailable(str(exc)) from None
                    for p in plan.sent:
                        items[p] = self._error(ops[p], str(exc), 502)
                    break
                for p, item in zip(plan.sent, answered, strict=True):
                    if p in plan.renamed:
                        item = writes.renamed(item, plan.renamed[p])
                    items[p] = item
                    if ops[p].enriched and writes.item_status(item) < 300:
                        self.metrics.documents_enriched.inc()
            retry = [
                p
                for p in plan.sent
                if ops[p].send_as
                and writes.item_status(items[p]) == 409
                and not ops[p].conditional_by_app
                and ops[p].tries < self._retries(ops[p])
            ]
            if not retry:
                break
            for p in retry:
                ops[p].tries += 1
                ops[p].send_as = ops[p].doc = ops[p].text = None
                self.metrics.enrich_retries.inc()
            # Exponential backoff with full jitter: concurrent writers of one document
            # should not collide again on the next round.
            await asyncio.sleep(random.uniform(0, 0.01 * 2 ** max(ops[p].tries for p in retry)))
            try:
                await self._read_current([ops[p] for p in retry], auth)
                plan = await self._lines(ops, retry)
            except Exception as exc:  # the first round is indexed: answer, never raise
                log.warning("retrying %d conflicting updates failed: %s", len(retry), exc)
                for p in retry:
                    items[p] = self._error(ops[p], f"retrying after a version conflict: {exc}", 503)
                break
        stale = [
            (ops[p], writes.item_body(items[p])[1], ops[p].item.source())
            for p in range(total)
            if ops[p].target is not None
            and not ops[p].target.enriched
            and ops[p].item.action in ("index", "create")
            and writes.item_status(items.get(p, {})) < 300
        ]
        if stale:
            await self._correct_safely(stale, target, sent_headers, auth)
        body = writes.dumps(writes.assemble(total, took, list(items), list(items.values()), {}))
        headers_out = (
            writes.json_headers(response.headers)
            if response
            else [("content-type", "application/json; charset=UTF-8")]
        )
        return UpstreamResponse(200, headers_out, body)

    def _retries(self, op: _Op) -> int:
        asked = op.item.meta.get("retry_on_conflict", 0)
        return max(self.config.update_retries, asked if isinstance(asked, int) else 0)

    async def _correct_safely(
        self, written: list[tuple[_Op, Any, Any]], target: str, headers: Headers, auth: str | None
    ) -> None:
        """``_correct`` after the app's write was indexed: a failure is logged and counted,
        never answered (the app would retry a write that happened)."""
        try:
            await self._correct(written, target, headers, auth)
        except Exception as exc:
            ids = [answered.get("_id") for _, answered, _ in written if isinstance(answered, dict)]
            log.warning("could not add vectors after an alias switch to %s: %s", ids[:20], exc)
            self.metrics.enrich_corrections_failed.inc(len(written))

    async def _correct(
        self,
        written: list[tuple[_Op, Any, Any]],
        target: str,
        headers: Headers,
        auth: str | None,
    ) -> None:
        """Documents forwarded without a vector because their index had no sparse field, that
        the cluster put in another index (the alias switched since the proxy looked): written
        again there with the vector, if that index has the field. Conditional on the
        ``_seq_no`` the cluster answered, so a newer write is never overwritten."""
        again: list[tuple[_Op, dict[str, Any]]] = []
        for op, answered, doc in written:
            if not isinstance(answered, dict) or not isinstance(doc, dict) or op.rule is None:
                continue
            index = answered.get("_index")
            if not isinstance(index, str) or op.target is None or index == op.target.index:
                continue
            self.facts.forget_target(op.target.name, op.rule.sparse_field)
            actual = await self.facts.write_target(index, op.rule.sparse_field, auth)
            if not actual.enriched or "_seq_no" not in answered or "_primary_term" not in answered:
                continue
            fixed = _Op(op.item, op.rule, actual)
            self._compose(fixed, doc, self._where(op.item))
            if fixed.doc is None or fixed.answer is not None:
                continue
            meta = {
                "_index": index,
                "_id": answered.get("_id"),
                "if_seq_no": answered["_seq_no"],
                "if_primary_term": answered["_primary_term"],
            }
            if "routing" in op.item.meta:
                meta["routing"] = op.item.meta["routing"]
            fixed.meta = meta
            again.append((fixed, meta))
        if not again:
            return
        rows = await self._encode([op.text or "" for op, _ in again])
        lines: list[bytes] = []
        for (op, meta), row in zip(again, rows, strict=True):
            lines += [writes.action_line("index", meta), writes.dumps(self._with_vector(op, row))]
        passed = {k: v for k, v in writes.query_params(target).items() if k in writes.BULK_PARAMS}
        path = "/_bulk" + ("?" + urlencode(passed) if passed else "")
        bulk_headers = writes.as_ndjson(
            [(k, v) for k, v in headers if k.lower() not in ("accept-encoding", "content-encoding")]
        )
        response = await self.upstream.request("POST", path, bulk_headers, writes.join_lines(lines))
        answer = response.json()
        if response.status == 200 and isinstance(answer, dict):
            done = sum(1 for item in answer.get("items", []) if writes.item_status(item) < 300)
            self.metrics.enrich_corrections.inc(done)
            self.metrics.documents_enriched.inc(done)
