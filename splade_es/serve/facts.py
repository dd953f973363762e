"""What the proxy must know about an index to build its queries: engine and version, the
sparse field's type, the clause limit. Read once per (index, field) and cached; forgotten
when a request through the proxy changes mappings or aliases, when a rewritten search is
refused (the mapping may have changed behind the proxy), and after ``ttl`` seconds.

Reads go through ``Upstream.get_json`` and are parsed by the same pure functions the
library uses (``engine_from_info``, ``field_layout_from_mapping``, ``Dialect.clause_limit``),
into the same ``QueryBuilder``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from ..connect import engine_from_info
from ..engines import Dialect, FieldType, dialect_for
from ..engines.base import DEFAULT_CLAUSE_LIMIT
from ..exceptions import ConfigurationError
from ..query import FieldLayout, QueryBuilder, field_layout_from_mapping
from .upstream import Upstream, UpstreamResponse

T = TypeVar("T")

# Requests that can change what a search on some index means: mappings, index creation and
# deletion, aliases, templates, settings. Matched on method + path.
_CHANGES_MAPPINGS = re.compile(
    r"/_mapping|/_mappings|/_alias|/_aliases|/_index_template|/_template|/_settings"
    r"|/_rollover|/_data_stream|/_reindex|/_clone|/_split|/_shrink|^/[^_/][^/]*/?$"
)


class UpstreamAnswered(Exception):
    """The cluster refused a read the proxy needed (no such index, 401, 403): its answer is
    relayed to the app unchanged."""

    def __init__(self, response: UpstreamResponse) -> None:
        super().__init__(f"cluster answered {response.status}")
        self.response = response


@dataclass(frozen=True)
class IndexFacts:
    builder: QueryBuilder
    read_at: float

    @property
    def signature(self) -> tuple[Any, ...]:
        b = self.builder
        return (b.dialect.engine, b.dialect.version, b.field_type, b.max_clauses)


@dataclass(frozen=True)
class WriteTarget:
    """Where writes to a name (index or alias) go, and whether that index has a sparse field.

    ``index`` is the concrete index (an alias's write index); None when no index exists yet
    or the alias has no write index: the cluster answers those writes itself.
    ``field_type`` is the sparse field's type there, None when the index has none (a BM25
    index behind an alias before a migration switch): such writes are not enriched.
    ``passages``: the field has the passages layout (``nested``, one object per window of
    the text, ``field_type`` its ``vector``'s type): documents get their passages, not one
    vector. The index decides, whatever ``serve --long-documents`` says."""

    name: str
    index: str | None
    field_type: FieldType | None
    dialect: Dialect
    read_at: float
    passages: bool = False

    @property
    def enriched(self) -> bool:
        return self.index is not None and self.field_type is not None


def write_index_of(aliases: Any, alias: str) -> str | None:
    """The write index of ``alias`` from a ``GET /_alias/<alias>`` answer: the one marked
    ``is_write_index``, else the only index (the engines' rule for aliases of one index).

    >>> write_index_of({"a": {"aliases": {"x": {}}}}, "x")
    'a'
    >>> both = {"a": {"aliases": {"x": {}}}, "b": {"aliases": {"x": {"is_write_index": True}}}}
    >>> write_index_of(both, "x")
    'b'
    """
    if not isinstance(aliases, dict):
        return None
    marked = [
        index
        for index, body in aliases.items()
        if (body.get("aliases", {}).get(alias) or {}).get("is_write_index") is True
    ]
    if marked:
        return marked[0]
    return next(iter(aliases)) if len(aliases) == 1 else None


def write_index_of_stream(streams: Any, name: str) -> str | None:
    """The write index of data stream ``name`` from a ``GET /_data_stream/<name>`` answer: the
    last of its backing indices (both engines list them oldest first, the write index last).

    >>> answer = {"data_streams": [{"name": "logs", "indices": [
    ...     {"index_name": ".ds-logs-000001"}, {"index_name": ".ds-logs-000002"}]}]}
    >>> write_index_of_stream(answer, "logs"), write_index_of_stream({"data_streams": []}, "x")
    ('.ds-logs-000002', None)
    """
    if not isinstance(streams, dict):
        return None
    for stream in streams.get("data_streams") or []:
        if isinstance(stream, dict) and stream.get("name") == name:
            indices = [i for i in stream.get("indices") or [] if isinstance(i, dict)]
            if indices and isinstance(indices[-1].get("index_name"), str):
                return indices[-1]["index_name"]
    return None


def sparse_field_type(mapping: Any, index: str, field: str) -> FieldType | None:
    """The type of ``field`` in ``index`` when it is a sparse field (``GET /<index>/_mapping``);
    for a passages field, its ``vector``'s type.

    >>> mapping = {"d": {"mappings": {"properties": {"s": {"type": "rank_features"}}}}}
    >>> sparse_field_type(mapping, "d", "s")
    'rank_features'
    """
    layout = sparse_field_layout(mapping, index, field)
    return None if layout is None else layout.field_type


def sparse_field_layout(mapping: Any, index: str, field: str) -> FieldLayout | None:
    """How ``index`` stores ``field`` (``GET /<index>/_mapping``): its sparse type and whether
    it holds passages (``query.field_layout_from_mapping``, the query path's reading); None
    when it is no sparse field (absent, text, a nested field of something else).

    >>> nested = {"type": "nested", "properties": {"vector": {"type": "rank_features"}}}
    >>> sparse_field_layout({"d": {"mappings": {"properties": {"s": nested}}}}, "d", "s")
    FieldLayout(field_type='rank_features', passages=True)
    >>> print(sparse_field_layout({"d": {"mappings": {}}}, "d", "s"))
    None
    """
    body = mapping.get(index) if isinstance(mapping, dict) else None
    if not isinstance(body, dict) and isinstance(mapping, dict) and len(mapping) == 1:
        body = next(iter(mapping.values()))
    if not isinstance(body, dict) or not isinstance(body.get("mappings", {}), dict):
        return None
    try:
        return field_layout_from_mapping({index: body}, index, field)
    except (ConfigurationError, AttributeError):  # no sparse field there (or no mapping)
        return None


def changes_mappings(method: str, path: str) -> bool:
    """Whether a forwarded request may change index mappings or aliases.

    >>> changes_mappings("PUT", "/docs/_mapping"), changes_mappings("GET", "/docs/_mapping")
    (True, False)
    >>> changes_mappings("DELETE", "/docs"), changes_mappings("POST", "/docs/_doc")
    (True, False)
    """
    return method in ("PUT", "POST", "DELETE") and bool(_CHANGES_MAPPINGS.search(path))


# Indices and write targets remembered at most: apps name indices freely (one per day, per
# tenant...), and an entry is only ever replaced when read again, so without a bound the
# cache would grow for as long as the proxy runs. The oldest reads go first.
MAX_CACHED = 4096


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    cache.pop(key, None)
    while len(cache) >= MAX_CACHED:
        cache.pop(next(iter(cache)))
    cache[key] = value


class FactsCache:
    def __init__(self, upstream: Upstream, *, ttl: float = 60.0) -> None:
        self.upstream = upstream
        self.ttl = ttl
        self._dialect: tuple[Dialect, float] | None = None
        self._clause_limit: tuple[int, float] | None = None
        self._facts: dict[tuple[str | None, str], IndexFacts] = {}
        self._targets: dict[tuple[str, str], WriteTarget] = {}
        self._inflight: dict[Any, asyncio.Task] = {}
        self.reads = 0  # cluster reads made, for tests and metrics

    def forget(self) -> None:
        """Forget everything (a mapping or alias may have changed)."""
        self._facts.clear()
        self._targets.clear()
        self._dialect = None
        self._clause_limit = None

    def forget_index(self, index: str | None, field: str) -> IndexFacts | None:
        return self._facts.pop((index, field), None)

    async def builder(
        self, index: str | None, field: str, authorization: str | None = None
    ) -> QueryBuilder:
        """The QueryBuilder for ``field`` on ``index`` (None: every index)."""
        return (await self.facts(index, field, authorization)).builder

    async def facts(
        self, index: str | None, field: str, authorization: str | None = None
    ) -> IndexFacts:
        key = (index, field)
        cached = self._facts.get(key)
        if cached is not None and time.monotonic() - cached.read_at < self.ttl:
            return cached
        facts = await self._single_flight(key, lambda: self._read(index, field, authorization))
        _remember(self._facts, key, facts)
        return facts

    def forget_target(self, name: str, field: str) -> None:
        self._targets.pop((name, field), None)

    async def write_target(
        self, name: str, field: str, authorization: str | None = None
    ) -> WriteTarget:
        """Where writes to ``name`` go and the type of ``field`` there (cached, ``ttl``)."""
        key = (name, field)
        cached = self._targets.get(key)
        if cached is not None and time.monotonic() - cached.read_at < self.ttl:
            return cached
        target = await self._single_flight(
            ("write", key), lambda: self._read_target(name, field, authorization)
        )
        _remember(self._targets, key, target)
        return target

    async def _read_target(self, name: str, field: str, authorization: str | None) -> WriteTarget:
        dialect = await self.dialect(authorization)
        self.reads += 1
        response, aliases = await self.upstream.get_json(
            f"/_alias/{quote(name, safe='')}", authorization
        )
        if response.status == 200:
            index = write_index_of(aliases, name)
        elif response.status == 404:  # not an alias: a data stream, an index, or nothing yet
            index = await self._stream_write_index(name, authorization) or name
        else:
            raise UpstreamAnswered(response)
        layout = None
        if index is not None:
            self.reads += 1
            response, mapping = await self.upstream.get_json(
                f"/{quote(index, safe='')}/_mapping", authorization
            )
            if response.status == 200:
                layout = sparse_field_layout(mapping, index, field)
            elif response.status == 404:
                index = None  # created by the write itself (no sparse mapping yet)
            else:
                raise UpstreamAnswered(response)
        return WriteTarget(
            name,
            index,
            None if layout is None else layout.field_type,
            dialect,
            time.monotonic(),
            passages=layout is not None and layout.passages,
        )

    async def _stream_write_index(self, name: str, authorization: str | None) -> str | None:
        """The write index when ``name`` is a data stream (whose ``_mapping`` lists every
        backing index, so the field's type there would be ambiguous), else None."""
        self.reads += 1
        response, streams = await self.upstream.get_json(
            f"/_data_stream/{quote(name, safe='')}", authorization
        )
        if response.status == 200:
            return write_index_of_stream(streams, name)
        if response.status in (401, 403) or response.status >= 500:
            raise UpstreamAnswered(response)
        return None  # 404: no such data stream (or an engine without data streams)

    async def dialect(self, authorization: str | None = None) -> Dialect:
        if self._dialect is None or time.monotonic() - self._dialect[1] >= self.ttl:
            self._dialect = (
                await self._single_flight("info", lambda: self._read_dialect(authorization)),
                time.monotonic(),
            )
        return self._dialect[0]

    async def _read(self, index: str | None, field: str, authorization: str | None) -> IndexFacts:
        dialect = await self.dialect(authorization)
        target = "/" + (quote(index, safe=",*") if index else "_all") + "/_mapping"
        mapping = await self._get(target, authorization)
        layout = field_layout_from_mapping(mapping, index or "_all", field)
        limit = await self._limit(dialect, authorization)
        # A passages index (nested, long_documents="passages") gets the nested max query.
        builder = QueryBuilder(
            dialect,
            field=field,
            field_type=layout.field_type,
            max_clauses=limit,
            passages=layout.passages,
        )
        return IndexFacts(builder=builder, read_at=time.monotonic())

    async def _read_dialect(self, authorization: str | None) -> Dialect:
        info = await self._get("/", authorization)
        engine, version = engine_from_info(info)
        return dialect_for(engine, version)

    async def _limit(self, dialect: Dialect, authorization: str | None) -> int:
        if self._clause_limit is not None and time.monotonic() - self._clause_limit[1] < self.ttl:
            return self._clause_limit[0]
        try:
            settings = await self._get(
                "/_cluster/settings?include_defaults=true&flat_settings=true", authorization
            )
            limit = dialect.clause_limit(settings)
        except UpstreamAnswered:  # reading settings needs a privilege searching does not
            limit = DEFAULT_CLAUSE_LIMIT
        self._clause_limit = (limit, time.monotonic())
        return limit

    async def _get(self, target: str, authorization: str | None) -> Any:
        self.reads += 1
        response, body = await self.upstream.get_json(target, authorization)
        if response.status != 200 or not isinstance(body, dict):
            raise UpstreamAnswered(response)
        return body

    async def _single_flight(self, key: Any, make: Callable[[], Awaitable[T]]) -> T:
        """Concurrent requests for the same facts share one read."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)
