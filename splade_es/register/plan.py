"""What ``splade-es register`` asks of a cluster, as plain values: no IO here.

A ``Plan`` holds read-only ``Check``s (plugins, cluster settings, the license) and the
``PlannedObject``s to create, in the order they depend on each other. Each object knows:

* its deterministic name and how to find it again (``find`` + ``existing``);
* the request that creates it and the definition an existing one must match;
* the requests that delete it, and (ml-commons models) how to deploy and undeploy it.

Ids not known yet (a model's ``connector_id`` before its connector exists) are ``Ref``s, which
the executor (``run.py``) fills in as it goes; the serve API key is a ``Secret``: sent as its
value, printed as ``"<redacted>"``.

>>> request = Request("PUT", "/x", body={"key": Secret("k-1"), "model": Ref("model:document")})
>>> request.printable()
{'method': 'PUT', 'path': '/x', 'body': {'key': '<redacted>', 'model': '<id of model:document>'}}
>>> reveal(request.body, {"model:document": "m-7"})
{'key': 'k-1', 'model': 'm-7'}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from .. import defaults
from ..connect import Engine, redact_url
from ..engines import FIELD_TYPES, FieldType
from ..exceptions import ConfigurationError

Kind = Literal["document", "query"]
KINDS: tuple[Kind, ...] = ("document", "query")
REDACTED = "<redacted>"
MARKER = "created by splade-es register"
"""Starts the description of everything register creates: unregister deletes nothing without it."""

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Secret:
    """A secret inside a request body: its value goes on the wire, never into output or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __str__(self) -> str:
        return REDACTED


@dataclass(frozen=True)
class Ref:
    """The id of the planned object ``key``, known once that object exists."""

    key: str

    def __str__(self) -> str:
        return f"<id of {self.key}>"


@dataclass(frozen=True)
class Request:
    """One HTTP request to the cluster. ``path`` may hold ``{id}`` / ``{task_id}`` placeholders
    (``bind``); ``missing_ok``: a 404 answer means "there is none" (None), not an error."""

    method: str
    path: str
    body: Any = None
    params: Mapping[str, str] = field(default_factory=dict)
    missing_ok: bool = False

    def bind(self, **ids: str) -> Request:
        """This request with its path placeholders filled in."""
        return replace(self, path=self.path.format(**ids))

    def printable(self, ids: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Method, path and body for output: secrets redacted, known refs filled in."""
        path = self.path + (f"?{urlencode(dict(self.params))}" if self.params else "")
        shown: dict[str, Any] = {"method": self.method, "path": path}
        if self.body is not None:
            shown["body"] = redact(self.body, ids or {})
        return shown


def redact(value: Any, ids: Mapping[str, str] | None = None) -> Any:
    """``value`` with every ``Secret`` as ``"<redacted>"`` and every ``Ref`` as its id (when in
    ``ids``) or a placeholder naming it."""
    known = ids or {}
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, Ref):
        return known.get(value.key, str(value))
    if isinstance(value, Mapping):
        return {k: redact(v, known) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, known) for v in value]
    return value


def reveal(value: Any, ids: Mapping[str, str]) -> Any:
    """``value`` as it goes on the wire: secrets as their value, refs as their ids. A ref to
    an object that does not exist yet stays a placeholder (only a dry run sends nothing)."""
    if isinstance(value, Secret):
        return value.value
    if isinstance(value, Ref):
        return ids.get(value.key, str(value))
    if isinstance(value, Mapping):
        return {k: reveal(v, ids) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [reveal(v, ids) for v in value]
    return value


@dataclass(frozen=True)
class Existing:
    """An object found by name: its id, the part of its definition register compares, and
    whether it carries register's marker (``MARKER``)."""

    id: str
    definition: Any
    ours: bool


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """How an ml-commons model is deployed and undeployed (paths take ``{id}`` / ``{task_id}``)."""

    state: Request
    is_deployed: Callable[[Any], bool]
    is_loaded: Callable[[Any], bool]  # deployed, partly deployed or deploying: undeploy first
    deploy: Request
    undeploy: Request
    task: Request
    task_outcome: Callable[[Any], tuple[bool, str | None]]  # (finished, error)


@dataclass(frozen=True, kw_only=True)
class PlannedObject:
    """One object register creates (or, in a removal plan, deletes)."""

    key: str  # what Refs name it by: "connector:document"
    what: str  # for messages: "connector"
    name: str
    find: Request
    existing: Callable[[Any], list[Existing]]  # the ``find`` answer (None: 404) -> matches
    delete: tuple[Request, ...]  # in order, paths with {id}
    create: Request | None = None  # None in a removal plan
    created_id: Callable[[Any], str] = str
    definition: Any = None  # compared with Existing.definition (refs revealed)
    updatable: bool = False  # a differing definition is sent again (``create``) or refused
    deployment: Deployment | None = None
    output: str | None = None  # the --json key this object's id fills


@dataclass(frozen=True)
class Problem:
    """Something on the cluster that stops register. ``settings``: the persistent cluster
    settings that fix it; None when no setting can (a version, a license, a plugin)."""

    message: str
    settings: Mapping[str, Any] | None = None
    section: Literal["persistent", "transient"] = "persistent"


@dataclass(frozen=True)
class Check:
    """A read-only request and what its answer means."""

    request: Request
    judge: Callable[[Any], list[Problem]]


@dataclass(frozen=True, kw_only=True)
class Plan:
    engine: Engine
    checks: tuple[Check, ...]
    objects: tuple[PlannedObject, ...]
    notes: tuple[str, ...] = ()
    usage: Callable[[Mapping[str, str | None]], dict[str, Any]] = lambda outputs: {}


@dataclass(frozen=True, kw_only=True)
class RegisterConfig:
    """What to register.

    ``serve_url``: where the cluster's nodes reach ``splade-es serve`` (not always the address
    this machine uses: a container network, a load balancer); ``api_key``: the key the cluster
    sends serve as ``Authorization: Bearer`` (the first of serve's ``--api-key-file``). Both are
    needed to register, neither to unregister. ``name`` prefixes everything created (and finds
    it again). ``text_fields`` are joined into the one text a document is encoded from, as
    ``splade-es ingest`` joins them; the vector goes to ``sparse_field`` of ``field_type``.
    """

    serve_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    name: str = defaults.REGISTER_NAME
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS
    sparse_field: str = defaults.VECTOR_FIELD
    field_type: FieldType = defaults.FIELD_TYPE
    two_phase: bool = False
    apply_settings: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ConfigurationError.bad_value(
                "name", self.name, "must be 1-64 of a-z, 0-9, '-' and '_', starting a-z or 0-9"
            )
        if not self.text_fields or any(not f.strip() for f in self.text_fields):
            raise ConfigurationError.bad_value(
                "text_fields", self.text_fields, "must name at least one field"
            )
        if not self.sparse_field or "." in self.sparse_field:
            raise ConfigurationError.bad_value(
                "sparse_field", self.sparse_field, "must be a field name without '.'"
            )
        if self.field_type not in FIELD_TYPES:
            raise ConfigurationError.bad_value(
                "field_type", self.field_type, f"must be one of {FIELD_TYPES}"
            )
        if self.api_key is not None and (
            not self.api_key or any(c.isspace() for c in self.api_key)
        ):
            raise ConfigurationError("the serve API key is empty or holds whitespace")
        if self.serve_url is not None:
            object.__setattr__(self, "serve_url", normalized_serve_url(self.serve_url))

    def named(self, suffix: str) -> str:
        """The name of one of register's objects: ``<name>-<suffix>``."""
        return f"{self.name}-{suffix}"

    def require_serve(self) -> tuple[str, str]:
        """``(serve_url, api_key)``, which registering needs."""
        if not self.serve_url:
            raise ConfigurationError(
                "register needs serve's URL as the cluster reaches it (serve_url / --serve-url)",
                option="serve_url",
            )
        if not self.api_key:
            raise ConfigurationError(
                "register needs the key the cluster sends serve (api_key / --serve-api-key-file)",
                option="serve_api_key_file",
            )
        return self.serve_url, self.api_key


def normalized_serve_url(url: str) -> str:
    """``url`` without a trailing ``/``; ``ConfigurationError`` unless it is
    ``http(s)://HOST[:PORT][/PATH]`` with no credentials, query or fragment.

    >>> normalized_serve_url("http://10.0.0.5:9280/")
    'http://10.0.0.5:9280'
    """
    parts = urlsplit(url.strip())
    try:
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        parts = parts._replace(scheme="")
    ok = (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not parts.query
        and not parts.fragment
    )
    if not ok:
        raise ConfigurationError.bad_value(
            "serve_url",
            redact_url(url),
            "must be http(s)://HOST[:PORT] (a path is kept; no credentials, query or fragment)",
        )
    return url.strip().rstrip("/")


def serve_host(serve_url: str) -> str:
    """The host part of serve's URL (no brackets around an IPv6 address)."""
    return urlsplit(serve_url).hostname or ""


def embed_url(serve_url: str, kind: Kind, query: Mapping[str, str] | None = None) -> str:
    """serve's embed endpoint for ``kind`` (the contract's ``/_splade/embed/<kind>``).

    >>> embed_url("http://h:9280", "query", {"key_scheme": "id"})
    'http://h:9280/_splade/embed/query?key_scheme=id'
    """
    url = f"{serve_url}/_splade/embed/{kind}"
    return f"{url}?{urlencode(dict(query))}" if query else url


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where ``theirs`` differs from ``ours`` (dotted paths; "" for the whole value).

    >>> differences({"a": 1, "b": [1, {"c": 2}]}, {"a": 1, "b": [1, {"c": 3}], "d": 0})
    ['b[1].c', 'd']
    """
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        found: list[str] = []
        for key in sorted(set(ours) | set(theirs), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in ours or key not in theirs:
                found.append(where)
            else:
                found += differences(ours[key], theirs[key], where)
        return found
    if _is_list(ours) and _is_list(theirs):
        if len(ours) != len(theirs):
            return [path or "(length)"]
        return [
            d
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    return [] if ours == theirs else [path or "(value)"]


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))
