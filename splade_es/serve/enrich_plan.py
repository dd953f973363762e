"""The write path's decisions, without IO: which rule a write falls under, what the proxy
reads, what it writes, what it answers itself, how a partial update merges, which updates
are tried again after a version conflict, and which documents need their vector added after
an alias switch. ``enrich.Enricher`` does the IO (reads, encodes, sends, counts) around these.

One operation of a write request is an ``Op``; the functions here fill it in:

    plan_bulk / plan_single_write --> [mget_body --> apply_current] --> round_plan
        --> items_by_position --> conflicts_to_retry --> reset_for_retry --> (read again)
        --> stale_writes --> plan_correction --> correction_lines

Every document the proxy cannot encode goes through one decision, ``refuse``: answered with
a per-item 400 (``--on-encode-error reject``) or forwarded without a vector (``passthrough``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urlencode

from .. import defaults
from ..documents import read_document
from ..exceptions import ConfigurationError, InputError
from . import writes
from .facts import WriteTarget

OnEncodeError = Literal["reject", "passthrough"]
RefusalKind = Literal["encode", "script"]  # why a document cannot get its vector

NOT_STRICT_JSON = "not a strict JSON object (comments, NaN or an out-of-range number)"

# What the proxy writes into a document's sparse field: one vector (``{key: weight}``), or,
# for an index whose field holds passages, one object per window (``defaults.PASSAGE_*``:
# the vector keyed the same way, and the window's start and end in the text).
FieldValue = Mapping[str, float] | Sequence[Mapping[str, Any]]


# ---------------------------------------------------------------------- rules
@dataclass(frozen=True)
class EnrichRule:
    """Writes to names matching ``pattern`` (shell-style: ``docs*``) get ``sparse_field``
    computed from ``text_fields``."""

    pattern: str
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS
    sparse_field: str = defaults.VECTOR_FIELD

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    @property
    def watched_fields(self) -> tuple[str, ...]:
        """Fields whose change in a partial update changes the vector."""
        return (*self.text_fields, self.sparse_field)


def parse_rule(
    spec: str,
    *,
    text_fields: Sequence[str] = defaults.TEXT_FIELDS,
    sparse_field: str = defaults.VECTOR_FIELD,
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


def rule_for(rules: Sequence[EnrichRule], name: str) -> EnrichRule | None:
    """The first rule whose pattern matches ``name``."""
    return next((r for r in rules if r.matches(name)), None)


def rule_behind(rules: Sequence[EnrichRule], name: str, target: WriteTarget) -> EnrichRule | None:
    """The rule for writes to ``name`` (an alias no pattern matches) by the write index
    behind it; None when that index is the name itself or matches no pattern either."""
    if target.index is None or target.index == name:
        return None
    return rule_for(rules, target.index)


Resolved = tuple[EnrichRule, WriteTarget]
"""A name's rule and where its writes go."""


# ---------------------------------------------------------------------- one operation
@dataclass(frozen=True)
class Refusal:
    """A document that cannot get its vector, and what was done with it (for the metrics)."""

    kind: RefusalKind
    rejected: bool  # True: answered with a 400; False: forwarded without a vector


@dataclass
class Op:
    """What happens to one operation of a write request."""

    item: writes.BulkItem
    rule: EnrichRule | None = None
    target: WriteTarget | None = None
    doc: dict[str, Any] | None = None  # the document to send with a vector
    text: str | None = None
    send_as: str | None = None  # "index"/"create": an update sent as a conditional write
    meta: dict[str, Any] = field(default_factory=dict)  # the action metadata to send
    answer: dict[str, Any] | None = None  # answered by the proxy
    conditional_by_app: bool = False  # the app's own if_seq_no: never retried
    reads_current: bool = False  # a partial update: the current document is read first
    refusal: Refusal | None = None
    tries: int = 0

    @property
    def enriched(self) -> bool:
        return self.doc is not None and self.answer is None


def where(item: writes.BulkItem) -> str:
    """How messages name a bulk item."""
    return f"document [{item.doc_id or '(new)'}] (bulk item {item.number})"


def error_for(
    op: Op, reason: str, status: int = 400, error_type: str = "illegal_argument_exception"
) -> dict[str, Any]:
    """The response item for ``op`` answered by the proxy with an error."""
    index = op.target.index if op.target and op.target.index else op.item.meta.get("_index")
    return writes.error_item(op.item.action, index, op.item.doc_id, status, error_type, reason)


def refuse(
    op: Op,
    on_error: OnEncodeError,
    kind: RefusalKind,
    reason: str,
    error_type: str = "illegal_argument_exception",
) -> None:
    """The one reject-or-passthrough decision for a document that cannot get its vector:
    answered with a per-item 400 saying ``reason``, or (``passthrough``) forwarded as the
    app sent it, without a vector."""
    op.refusal = Refusal(kind, rejected=on_error == "reject")
    if on_error == "passthrough":
        op.doc = op.text = op.send_as = None
    else:
        op.answer = error_for(op, reason, 400, error_type)


def compose(op: Op, doc: Any, whereabouts: str, on_error: OnEncodeError) -> None:
    """Set the document and its text, or refuse the operation (a document ingest would
    refuse, by the same rule and in the same words)."""
    assert op.rule is not None
    if isinstance(doc, dict):  # the app's vector is replaced: never read as a field
        doc = without_field(doc, op.rule.sparse_field)
    try:
        # The id is the request's: id_field=None (a content hash, unused) skips the id
        # check, which is about documents that carry their id in a field.
        op.text = read_document(
            doc,
            id_field=None,
            text_fields=op.rule.text_fields,
            position=op.item.number,
            unit="bulk item",
            where=whereabouts,
        ).text
    except InputError as exc:
        reason = (
            f"{exc}; not indexed: splade-es serve cannot compute its {op.rule.sparse_field!r} "
            "vector (--on-encode-error passthrough indexes such documents without one)"
        )
        refuse(op, on_error, "encode", reason)
        return
    op.doc = doc


def without_field(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != name}


# ---------------------------------------------------------------------- planning a request
def with_url_routing(items: Iterable[writes.BulkItem], routing: str | None) -> None:
    """The URL's ``routing`` applies to the items without their own."""
    if routing is not None:
        for item in items:
            item.meta.setdefault("routing", routing)


def names_to_resolve(items: Iterable[writes.BulkItem], default_index: str | None) -> set[str]:
    """The index names the items write documents to (deletes need no vector)."""
    return {
        name
        for item in items
        if item.action != "delete" and (name := item.index(default_index)) is not None
    }


def plan_bulk(
    items: Sequence[writes.BulkItem],
    default_index: str | None,
    resolved: Mapping[str, Resolved | None],
    on_error: OnEncodeError,
) -> list[Op]:
    """One ``Op`` per item: documents of enriched indices composed (or refused), partial
    updates marked to read their current document; everything else forwarded as it came."""
    ops: list[Op] = []
    for item in items:
        name = item.index(default_index)
        found = resolved.get(name) if item.action != "delete" and name else None
        op = Op(item, *(found or (None, None)))
        ops.append(op)
        if found is None or not found[1].enriched:
            continue
        if item.action in ("index", "create"):
            doc = item.source()
            if doc is None:
                refuse_unreadable(op, on_error)
            else:
                compose(op, doc, where(item), on_error)
        elif item.action == "update":
            plan_update(op, on_error)
    return ops


def refuse_unreadable(op: Op, on_error: OnEncodeError) -> None:
    """A document of an enriched index that is not strict JSON: never sent without its
    vector by mistake (the engine may read what Python's parser refuses, comments say)."""
    reason = (
        f"{where(op.item)}: {NOT_STRICT_JSON}; splade-es serve cannot read its text to "
        "compute its vector"
    )
    refuse(op, on_error, "encode", reason, "parse_exception")


def plan_update(op: Op, on_error: OnEncodeError) -> None:
    """An update of an enriched index: a script is refused (the proxy cannot run it); a
    partial doc that sets a watched field reads the current document; others pass."""
    assert op.rule is not None
    body = op.item.source()
    if not isinstance(body, dict):
        refuse_unreadable(op, on_error)
        return
    if "script" in body:
        reason = (
            f"{where(op.item)}: a scripted update of an index that splade-es serve "
            f"enriches: the script may change {', '.join(op.rule.text_fields)} and the "
            "proxy cannot recompute the vector from it; send a partial doc or the whole "
            "document (or run serve with --on-encode-error passthrough)"
        )
        refuse(op, on_error, "script", reason)
        return
    partial = body.get("doc")
    if isinstance(partial, dict) and writes.touches(partial, op.rule.watched_fields):
        if "if_seq_no" in op.item.meta and "if_primary_term" not in op.item.meta:
            return  # forwarded: the engine refuses one without the other
        op.conditional_by_app = "if_seq_no" in op.item.meta
        op.reads_current = True


def worth_rewriting(ops: Iterable[Op]) -> bool:
    """Whether any operation falls under a rule (its index enriched or not: a write to an
    index without the field may need a correction after an alias switch)."""
    return any(op.target is not None for op in ops)


def plan_single_write(
    wp: writes.WritePath,
    routing: str | None,
    resolved: Resolved,
    doc: Any,
    on_error: OnEncodeError,
) -> Op | None:
    """``PUT|POST /{index}/_doc[/{id}]``, ``/{index}/_create/{id}``: the write as a
    one-item bulk operation; None to forward the request untouched (a body that is not
    strict JSON, to an index without the field or with ``passthrough``)."""
    action = "create" if wp.api == "_create" else "index"
    meta: dict[str, Any] = {"_index": wp.index, "_id": wp.doc_id}
    if routing is not None:
        meta["routing"] = routing
    op = Op(writes.BulkItem(1, action, meta, b""), *resolved)
    named = f"document [{wp.doc_id or '(new)'}]"
    if doc is None:
        if not op.target or not op.target.enriched or on_error == "passthrough":
            return None
        reason = f"{named}: {NOT_STRICT_JSON}; splade-es serve cannot read its text"
        refuse(op, on_error, "encode", reason, "parse_exception")
    elif op.target and op.target.enriched:
        compose(op, doc, named, on_error)
    return op


@dataclass(frozen=True)
class UpdateRequest:
    """``POST /{index}/_update/{id}`` as a one-operation bulk."""

    item: writes.BulkItem
    bulk_target: str  # ``/_bulk`` with the URL parameters that mean the same there
    unsupported: tuple[str, ...]  # URL parameters a bulk cannot carry


def update_request(wp: writes.WritePath, target: str, body: bytes) -> UpdateRequest:
    params = writes.query_params(target)
    meta: dict[str, Any] = {"_index": wp.index, "_id": wp.doc_id}
    for name in ("routing", "if_seq_no", "if_primary_term", "retry_on_conflict"):
        if name in params:
            value = params.pop(name)
            meta[name] = int(value) if name != "routing" and value.isdigit() else value
    item = writes.BulkItem(1, "update", meta, writes.action_line("update", meta), body.strip())
    passed = {k: v for k, v in params.items() if k in writes.BULK_PARAMS}
    unsupported = tuple(sorted(set(params) - set(passed)))
    return UpdateRequest(item, bulk_path(passed), unsupported)


def bulk_path(params: Mapping[str, str]) -> str:
    return "/_bulk" + ("?" + urlencode(params) if params else "")


def correction_path(target: str) -> str:
    """The ``_bulk`` of corrections, with the app's URL parameters that mean the same there."""
    params = writes.query_params(target)
    return bulk_path({k: v for k, v in params.items() if k in writes.BULK_PARAMS})


# ---------------------------------------------------------------------- partial updates
def mget_body(ops: Iterable[Op]) -> dict[str, list[dict[str, Any]]]:
    """The ``_mget`` of the current documents of ``ops``, in their concrete indices."""
    docs: list[dict[str, Any]] = []
    for op in ops:
        assert op.target is not None and op.target.index is not None
        spec: dict[str, Any] = {"_index": op.target.index, "_id": op.item.doc_id}
        if "routing" in op.item.meta:
            spec["routing"] = op.item.meta["routing"]
        docs.append(spec)
    return {"docs": docs}


def apply_current(ops: Sequence[Op], status: int, answer: Any, on_error: OnEncodeError) -> None:
    """Plan each update of ``ops`` from the ``_mget`` answer (``status``, ``answer``)."""
    found = answer.get("docs") if isinstance(answer, dict) else None
    if status != 200 or not isinstance(found, list) or len(found) != len(ops):
        reason = f"reading the current documents failed: the cluster answered {status}"
        for op in ops:
            op.answer = error_for(op, reason, status=status or 502)
        return
    for op, current in zip(ops, found, strict=True):
        merge_current(op, current, on_error)


def merge_current(op: Op, current: dict[str, Any], on_error: OnEncodeError) -> None:
    """An update planned from the current document (an ``_mget`` item): the merged document
    written conditionally, an upsert created, an error answered, or the update forwarded."""
    if "error" in current:
        # The engine's own reason and type (routing_missing_exception, ...); an _mget
        # item carries no status, and the update did not happen: 400.
        error = current["error"] if isinstance(current["error"], dict) else {}
        reason = f"reading the current document failed: {error.get('reason', current['error'])}"
        error_type = str(error.get("type", "illegal_argument_exception"))
        op.answer = error_for(op, reason, 400, error_type)
    elif not current.get("found"):
        plan_upsert(op, on_error)
    elif not isinstance(current.get("_source"), dict) or "_seq_no" not in current:
        # _source disabled: a merge would replace the document with the partial one.
        reason = f"{where(op.item)}: the current document has no _source to merge into"
        op.answer = error_for(op, reason, 400, "document_source_missing_exception")
    else:
        plan_merged_write(op, current, on_error)


def _update_body(op: Op) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """The update body, its partial doc without the sparse field, and whether the app set
    the sparse field (its vector is replaced)."""
    assert op.rule is not None
    body = op.item.source()
    partial = without_field(body["doc"], op.rule.sparse_field)
    return body, partial, op.rule.sparse_field in body["doc"]


def _write_meta(op: Op) -> dict[str, Any]:
    """The action metadata of an update sent as a write: to the concrete index the proxy
    read, not an alias (require_alias off)."""
    assert op.target is not None
    meta = {"_index": op.target.index, "_id": op.item.doc_id, "require_alias": False}
    if "routing" in op.item.meta:
        meta["routing"] = op.item.meta["routing"]
    return meta


def plan_upsert(op: Op, on_error: OnEncodeError) -> None:
    """A missing document: created from ``upsert`` or ``doc`` (``doc_as_upsert``), in the
    engines' order (UpdateHelper.prepareUpsert); without either, the update is forwarded
    and the cluster answers document_missing_exception."""
    assert op.rule is not None
    body, partial, _ = _update_body(op)
    if body.get("doc_as_upsert") is True:
        new: Any = partial
    else:
        new = body.get("upsert") if isinstance(body.get("upsert"), dict) else None
    if new is None:
        return
    op.send_as, op.meta = "create", _write_meta(op)
    compose(op, without_field(new, op.rule.sparse_field), where(op.item), on_error)


def plan_merged_write(op: Op, current: dict[str, Any], on_error: OnEncodeError) -> None:
    """The stored document with the partial one merged in, written as an ``index``
    conditional on the version read (or on the app's own ``if_seq_no``)."""
    assert op.rule is not None
    body, partial, sets_vector = _update_body(op)
    stored = without_field(current["_source"], op.rule.sparse_field)
    merged = writes.merge_partial(stored, partial)
    if merged == stored and not sets_vector and body.get("detect_noop", True) is not False:
        op.doc = None  # forwarded: the cluster answers "noop"
        return
    meta = _write_meta(op)
    if op.conditional_by_app:
        meta["if_seq_no"] = op.item.meta["if_seq_no"]
        meta["if_primary_term"] = op.item.meta["if_primary_term"]
    else:
        meta["if_seq_no"] = current["_seq_no"]
        meta["if_primary_term"] = current["_primary_term"]
    op.send_as, op.meta = "index", meta
    compose(op, merged, where(op.item), on_error)


# ---------------------------------------------------------------------- the bulk sent
def to_encode(ops: Sequence[Op], positions: Iterable[int]) -> list[int]:
    """The positions whose documents get a vector."""
    return [p for p in positions if ops[p].enriched]


def with_vector(op: Op, vector: FieldValue) -> dict[str, Any]:
    """``op``'s document with ``vector`` (one vector, or the passages) in its sparse field."""
    assert op.rule is not None and op.doc is not None
    return {**op.doc, op.rule.sparse_field: vector}


def round_plan(
    ops: Sequence[Op], positions: Iterable[int], vectors: Mapping[int, FieldValue]
) -> writes.BulkPlan:
    """The bulk to send for ``ops[p]``, p in ``positions``: answered here, sent with the
    vector or passages (``vectors[p]``), or sent as the app wrote it."""
    plan = writes.BulkPlan()
    for p in positions:
        op = ops[p]
        if op.answer is not None:
            plan.answer(p, op.answer)
        elif p in vectors:
            header = writes.action_line(op.send_as, op.meta) if op.send_as else op.item.header_line
            if op.send_as:
                plan.renamed[p] = op.item.action
            plan.send(p, header, writes.dumps(with_vector(op, vectors[p])))
        else:
            plan.send(p, op.item.header_line, op.item.source_line)
    return plan


def plain_json_target(target: str) -> str:
    """The bulk URL without what changes the answer's shape: the items are needed, in
    full, as plain JSON, whatever the app asked for."""
    return writes.without_param(writes.without_param(target, "filter_path"), "format")


@dataclass(frozen=True)
class RoundFailure:
    """A bulk round the cluster did not answer item by item."""

    reason: str
    status: int
    refused: bool  # refused as a whole (auth, size), as opposed to an unreadable answer


def round_items(status: int, answer: Any, expected: int) -> list[dict[str, Any]] | RoundFailure:
    """The cluster's items for a round of ``expected`` operations, or why there are none."""
    if status != 200 or not isinstance(answer, dict):
        return RoundFailure(f"the cluster answered {status}", status, refused=True)
    try:
        return writes.response_items(answer, expected)
    except writes.WriteBodyError as exc:  # the cluster's answer, not the app's bulk
        return RoundFailure(str(exc), 502, refused=False)


def items_by_position(
    plan: writes.BulkPlan, answered: Sequence[dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """The cluster's items keyed by bulk position, an update sent as a write answered
    under its own action."""
    items: dict[int, dict[str, Any]] = {}
    for p, item in zip(plan.sent, answered, strict=True):
        items[p] = writes.renamed(item, plan.renamed[p]) if p in plan.renamed else item
    return items


def enriched_count(ops: Sequence[Op], items: Mapping[int, dict[str, Any]]) -> int:
    """Documents indexed with their vector."""
    return sum(1 for p, item in items.items() if ops[p].enriched and writes.item_status(item) < 300)


def failed_items(
    ops: Sequence[Op], positions: Iterable[int], reason: str, status: int
) -> dict[int, dict[str, Any]]:
    return {p: error_for(ops[p], reason, status) for p in positions}


# ---------------------------------------------------------------------- version conflicts
def retries_allowed(op: Op, update_retries: int) -> int:
    """``update_retries``, or the app's ``retry_on_conflict`` when that is more."""
    asked = op.item.meta.get("retry_on_conflict", 0)
    return max(update_retries, asked if isinstance(asked, int) else 0)


def conflicts_to_retry(
    ops: Sequence[Op], sent: Iterable[int], items: Mapping[int, dict[str, Any]], update_retries: int
) -> list[int]:
    """The updates the proxy wrote conditionally that lost to a concurrent write (409) and
    may be read and merged again; never one conditional on the app's own version."""
    return [
        p
        for p in sent
        if ops[p].send_as
        and writes.item_status(items[p]) == 409
        and not ops[p].conditional_by_app
        and ops[p].tries < retries_allowed(ops[p], update_retries)
    ]


def reset_for_retry(ops: Sequence[Op], positions: Iterable[int]) -> None:
    """Forget what was planned for ``ops[p]``: they are read and merged again."""
    for p in positions:
        op = ops[p]
        op.tries += 1
        op.send_as = op.doc = op.text = None
        op.refusal = None


# ---------------------------------------------------------------------- corrections
class Written(NamedTuple):
    """A write the cluster accepted without a vector: its op, the item it answered, and
    the document sent."""

    op: Op
    answered: Any
    doc: Any


def stale_writes(ops: Sequence[Op], items: Mapping[int, dict[str, Any]]) -> list[Written]:
    """Documents written without a vector (their index had no sparse field when the proxy
    looked) that the cluster accepted: they may have reached another index."""
    return [
        Written(op, writes.item_body(items[p])[1], op.item.source())
        for p, op in enumerate(ops)
        if op.target is not None
        and not op.target.enriched
        and op.item.action in ("index", "create")
        and writes.item_status(items.get(p, {})) < 300
    ]


def moved_to(written: Written) -> str | None:
    """The index the cluster put the document in when it is not the one the proxy
    resolved (the alias switched since it looked); None when there is nothing to correct."""
    op, answered, doc = written
    if not isinstance(answered, dict) or not isinstance(doc, dict) or op.rule is None:
        return None
    index = answered.get("_index")
    if not isinstance(index, str) or op.target is None or index == op.target.index:
        return None
    return index


def plan_correction(written: Written, actual: WriteTarget, on_error: OnEncodeError) -> Op | None:
    """The document written again into ``actual`` with its vector, conditional on the
    ``_seq_no`` the cluster answered (a newer write is never overwritten); None when that
    index has no sparse field or the answer no version."""
    op, answered, doc = written
    if not actual.enriched or "_seq_no" not in answered or "_primary_term" not in answered:
        return None
    meta = {
        "_index": answered["_index"],
        "_id": answered.get("_id"),
        "if_seq_no": answered["_seq_no"],
        "if_primary_term": answered["_primary_term"],
    }
    if "routing" in op.item.meta:
        meta["routing"] = op.item.meta["routing"]
    fixed = Op(op.item, op.rule, actual, meta=meta)
    compose(fixed, doc, where(op.item), on_error)
    return fixed


def correction_lines(fixed: Sequence[Op], vectors: Sequence[FieldValue]) -> list[bytes]:
    lines: list[bytes] = []
    for op, vector in zip(fixed, vectors, strict=True):
        lines += [writes.action_line("index", op.meta), writes.dumps(with_vector(op, vector))]
    return lines


def succeeded(answer: Mapping[str, Any]) -> int:
    """Items of a bulk answer that were written."""
    return sum(1 for item in answer.get("items", []) if writes.item_status(item) < 300)
