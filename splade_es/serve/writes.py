"""Pure functions of the write path: which requests write documents, the items of a bulk
body, partial-document merges, and the bulk response put back together item for item.

``enrich.py`` decides and encodes; everything here works on bytes and dicts only, so the
proxy and the tests share it.

Engine facts (Elasticsearch / OpenSearch source):
- bulk bodies are NDJSON: an action line (``index`` / ``create`` / ``update`` / ``delete``
  with its metadata), then the document (``index``, ``create``) or the update body
  (``update``); ``delete`` has no second line (``BulkRequestParser``).
- a bulk item's metadata may carry ``if_seq_no`` / ``if_primary_term``, so an ``index``
  action can be made conditional on the version the proxy read (optimistic concurrency).
- partial-document updates merge the changes into the stored source recursively: maps are
  merged key by key, every other value is replaced (``XContentHelper.update``, the same in
  Elasticsearch 7-9 and OpenSearch 1-3).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from ..exceptions import InputError
from .upstream import Headers

WRITE_ACTIONS = ("index", "create", "update", "delete")


class WriteBodyError(InputError):
    """A write request the proxy cannot read; answered 400 in the cluster's error shape."""

    def __init__(self, message: str, error_type: str = "illegal_argument_exception") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class WritePath:
    """A document write: ``api`` is ``_bulk``, ``_doc``, ``_create`` or ``_update``."""

    api: str
    index: str | None  # the index or alias in the path (percent-decoded)
    doc_id: str | None = None


def write_path(method: str, path: str) -> WritePath | None:
    """The write API a request calls, or None.

    >>> write_path("PUT", "/docs/_doc/7")
    WritePath(api='_doc', index='docs', doc_id='7')
    >>> write_path("POST", "/docs/_update/a%2Fb").doc_id, write_path("GET", "/docs/_doc/7")
    ('a/b', None)
    """
    parts = path.strip("/").split("/")
    if method not in ("PUT", "POST") or not parts or not parts[0]:
        return None
    if parts == ["_bulk"]:
        return WritePath("_bulk", None)
    if parts[0].startswith("_"):
        return None
    index = unquote(parts[0])
    if len(parts) == 2 and parts[1] == "_bulk":
        return WritePath("_bulk", index)
    if len(parts) == 2 and parts[1] == "_doc" and method == "POST":
        return WritePath("_doc", index)
    if len(parts) == 3 and parts[1] in ("_doc", "_create") and parts[2]:
        return WritePath(parts[1], index, unquote(parts[2]))
    if len(parts) == 3 and parts[1] == "_update" and parts[2] and method == "POST":
        return WritePath("_update", index, unquote(parts[2]))
    return None


# ---------------------------------------------------------------------- bulk bodies
@dataclass
class BulkItem:
    """One operation of a bulk body, with its lines as they came."""

    number: int  # 1-based position in the bulk
    action: str
    meta: dict[str, Any]
    header_line: bytes
    source_line: bytes | None = None  # None for ``delete``

    def index(self, default: str | None) -> str | None:
        value = self.meta.get("_index", default)
        return value if isinstance(value, str) else default

    @property
    def doc_id(self) -> str | None:
        value = self.meta.get("_id")
        return None if value is None else str(value)

    def source(self) -> Any:
        """The parsed second line (None when it is not strict JSON)."""
        return None if self.source_line is None else parse_document(self.source_line)


def parse_document(raw: bytes) -> Any:
    """A JSON document, or None when it is not strict JSON (comments, ``NaN``, ``1e400``):
    such a body is never forwarded to an enriched index without a vector.

    >>> parse_document(b'{"a": 1}'), parse_document(b'{"a": 1e400}'), parse_document(b"{/**/}")
    ({'a': 1}, None, None)
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def split_bulk(body: bytes) -> list[BulkItem]:
    """The operations of an NDJSON bulk body. Blank lines between operations are skipped.

    >>> items = split_bulk(b'{"index":{"_id":"1"}}\\n{"t":"a"}\\n{"delete":{"_id":"2"}}\\n')
    >>> [(i.action, i.doc_id, i.source_line) for i in items]
    [('index', '1', b'{"t":"a"}'), ('delete', '2', None)]
    """
    lines = body.split(b"\n")
    items: list[BulkItem] = []
    n = 0
    while n < len(lines):
        header = lines[n].strip()
        n += 1
        if not header:
            continue
        number = len(items) + 1
        try:
            parsed = json.loads(header)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise WriteBodyError(
                f"bulk item {number}: the action line is not JSON ({exc})", "parse_exception"
            ) from None
        if not isinstance(parsed, dict) or len(parsed) != 1:
            raise WriteBodyError(
                f"bulk item {number}: malformed action line, expected one of "
                f"{'/'.join(WRITE_ACTIONS)} with its metadata",
                "parse_exception",
            )
        [(action, meta)] = parsed.items()
        if action not in WRITE_ACTIONS or not isinstance(meta, dict):
            raise WriteBodyError(
                f"bulk item {number}: unknown action [{action}], expected one of "
                f"{'/'.join(WRITE_ACTIONS)}",
                "illegal_argument_exception",
            )
        source = None
        if action != "delete":
            if n >= len(lines) or not lines[n].strip():
                raise WriteBodyError(
                    f"bulk item {number}: the {action} action has no document line",
                    "parse_exception",
                )
            source = lines[n].strip()
            n += 1
        items.append(BulkItem(number, action, meta, header, source))
    return items


def action_line(action: str, meta: Mapping[str, Any]) -> bytes:
    return dumps({action: dict(meta)})


def join_lines(lines: list[bytes]) -> bytes:
    """An NDJSON body; the bulk API wants the last line ended too."""
    return b"\n".join(lines) + b"\n"


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------- partial updates
def merge_partial(source: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``source`` with a partial document merged in, as the engines merge it: maps key by
    key, anything else replaced. ``source`` is not modified.

    >>> merge_partial({"a": {"x": 1, "y": 2}, "b": [1]}, {"a": {"y": 3}, "b": [2], "c": None})
    {'a': {'x': 1, 'y': 3}, 'b': [2], 'c': None}
    """
    merged = copy.deepcopy(dict(source))
    _merge_into(merged, changes)
    return merged


def _merge_into(target: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        old = target.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            _merge_into(old, value)
        else:
            target[key] = copy.deepcopy(value)


def touches(changes: Mapping[str, Any], fields: tuple[str, ...]) -> bool:
    """Whether a partial document sets any of ``fields`` (top-level names, or dotted paths
    into objects).

    >>> touches({"title": "x"}, ("title",)), touches({"meta": {"t": 1}}, ("meta.t",))
    (True, True)
    >>> touches({"meta": None}, ("meta.t",))  # the object holding the field is replaced
    True
    >>> touches({"views": 3}, ("title", "text"))
    False
    """
    for name in fields:
        if name in changes:  # a literal dotted key, or a top-level field
            return True
        node: Any = changes
        for part in name.split("."):
            if part not in node:
                break
            node = node[part]
            if not isinstance(node, Mapping):
                return True  # the field, or an object on its path replaced by a value
        else:
            return True
    return False


# ---------------------------------------------------------------------- responses
def error_item(
    action: str, index: str | None, doc_id: str | None, status: int, error_type: str, reason: str
) -> dict[str, Any]:
    """A bulk response item for an operation the proxy answered itself."""
    return {
        action: {
            "_index": index,
            "_id": doc_id,
            "status": status,
            "error": {"type": error_type, "reason": reason},
        }
    }


@dataclass
class BulkPlan:
    """What goes to the cluster for each operation of a bulk, and what is answered here.

    ``sent[k]`` is the position (0-based) in the original bulk of the k-th operation sent;
    ``answered`` holds the items the proxy answers itself; ``renamed`` maps a position to the
    action its response item must carry (an update sent as a conditional ``index``)."""

    lines: list[bytes] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    answered: dict[int, dict[str, Any]] = field(default_factory=dict)
    renamed: dict[int, str] = field(default_factory=dict)

    def send(self, position: int, header: bytes, source: bytes | None) -> None:
        self.sent.append(position)
        self.lines.append(header)
        if source is not None:
            self.lines.append(source)

    def answer(self, position: int, item: dict[str, Any]) -> None:
        self.answered[position] = item

    @property
    def body(self) -> bytes:
        return join_lines(self.lines)


def response_items(response: Any, expected: int) -> list[dict[str, Any]]:
    """The items of a bulk response, checked to be one per operation sent."""
    items = response.get("items") if isinstance(response, dict) else None
    if not isinstance(items, list) or len(items) != expected:
        raise WriteBodyError(
            f"the cluster's bulk response has {len(items) if isinstance(items, list) else 'no'} "
            f"items for {expected} operations"
        )
    return items


def item_body(item: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"index": {...}}`` -> ``("index", {...})``."""
    [(action, body)] = item.items()
    return action, body


def renamed(item: Mapping[str, Any], action: str) -> dict[str, Any]:
    _, body = item_body(item)
    return {action: body}


def assemble(
    total: int,
    took: int,
    sent: list[int],
    cluster_items: list[dict[str, Any]],
    answered: Mapping[int, dict[str, Any]],
) -> dict[str, Any]:
    """The bulk response for all ``total`` operations, in order.

    >>> ok = {"index": {"_id": "1", "status": 201}}
    >>> bad = error_item("index", "d", "2", 400, "illegal_argument_exception", "no text")
    >>> r = assemble(2, 5, [0], [ok], {1: bad})
    >>> r["errors"], [next(iter(i.values()))["status"] for i in r["items"]]
    (True, [201, 400])
    """
    by_position = dict(zip(sent, cluster_items, strict=True))
    by_position.update(answered)
    items = [by_position[n] for n in range(total)]
    errors = any(not 200 <= item_body(item)[1].get("status", 500) < 300 for item in items)
    return {"took": took, "errors": errors, "items": items}


def single_response(item: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """A one-item bulk's item as the single-document API answers it (status, body)."""
    _, body = item_body(item)
    status = int(body.get("status", 500))
    if "error" in body:
        error = body["error"]
        cause = {k: v for k, v in error.items() if k != "caused_by"}
        return status, {"error": {"root_cause": [cause], **error}, "status": status}
    return status, {k: v for k, v in body.items() if k != "status"}


# ---------------------------------------------------------------------- requests the proxy makes
# URL parameters of a single-document call that mean the same on ``_bulk`` (carried over when
# the proxy sends an update or a correction as a bulk).
BULK_PARAMS = frozenset({"refresh", "timeout", "wait_for_active_shards", "require_alias", "pretty"})


def item_status(item: dict[str, Any]) -> int:
    """A bulk response item's status (500 for a missing or malformed item)."""
    if not item:
        return 500
    return int(item_body(item)[1].get("status", 500))


def json_headers(headers: Headers) -> Headers:
    """The cluster's response headers for a body the proxy rewrote."""
    return [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length")]


def as_ndjson(headers: Headers) -> Headers:
    """``headers`` for a ``_bulk`` the proxy makes of a JSON request: the NDJSON media type
    of the same family. Elasticsearch 8/9 refuse a request whose Content-Type and Accept do
    not ask for the same compatible-with version (RestCompatibleVersionHelper), so the
    versioned type stays versioned.

    >>> as_ndjson([("Content-Type", "application/vnd.elasticsearch+json; compatible-with=8")])
    [('Content-Type', 'application/vnd.elasticsearch+x-ndjson; compatible-with=8')]
    >>> as_ndjson([("Accept", "application/json")])
    [('Accept', 'application/json'), ('Content-Type', 'application/x-ndjson')]
    """
    out: Headers = []
    content_type = "application/x-ndjson"
    for name, value in headers:
        if name.lower() != "content-type":
            out.append((name, value))
        elif "x-ndjson" in value:
            content_type = value
        elif "vnd.elasticsearch+json" in value:
            content_type = value.replace("vnd.elasticsearch+json", "vnd.elasticsearch+x-ndjson")
    out.append(("Content-Type", content_type))
    return out


def json_accept(headers: Headers) -> Headers:
    """``headers`` asking for a JSON answer (YAML, SMILE, CBOR answers cannot be read and put
    back together), in the same media-type family: a versioned Elasticsearch type stays
    versioned, as its Content-Type is.

    >>> json_accept([("Accept", "application/yaml")])
    [('Accept', 'application/json')]
    >>> json_accept([("accept", "application/vnd.elasticsearch+smile; compatible-with=8")])
    [('accept', 'application/vnd.elasticsearch+json; compatible-with=8')]
    """
    out: Headers = []
    for name, value in headers:
        if name.lower() == "accept" and "json" not in value:
            for subtype in ("x-yaml", "yaml", "smile", "cbor"):
                value = value.replace(subtype, "json")
        out.append((name, value))
    return out


def query_params(target: str) -> dict[str, str]:
    return dict(parse_qsl(target.partition("?")[2], keep_blank_values=True))


def without_param(target: str, name: str) -> str:
    """``target`` (path and query string) without the URL parameter ``name``."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != name]
    return path + ("?" + urlencode(kept) if kept else "")
