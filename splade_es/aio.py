"""The async library path, for applications on ``AsyncElasticsearch`` / ``AsyncOpenSearch``.

The same bodies as the synchronous API (``QueryBuilder``, ``search``, ``explain``): only the
client calls are awaited, and encoding runs in a worker thread so the event loop never
blocks on the model::

    from opensearchpy import AsyncOpenSearch
    from splade_es import SpladeEncoder, aio

    client = AsyncOpenSearch("http://localhost:9200")
    builder = await aio.QueryBuilder.for_index(client, "docs")
    result = await aio.search(client, "docs", "tax depreciation", encoder=encoder,
                              builder=builder)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from . import defaults
from . import query as _query
from .connect import AsyncClient, call, engine_from_info
from .encoding.protocol import Encoder
from .engines import Dialect, FieldType, Hybrid, SearchRequest, dialect_for
from .engines.base import DEFAULT_CLAUSE_LIMIT
from .exceptions import ClusterError, EmptyQueryError
from .query import FieldLayout, QueryVector, field_layout_from_mapping
from .search import (
    Explanation,
    SearchResult,
    explain_body,
    explanation,
    hits_of,
    score_request,
    stored_vector,
)

T = TypeVar("T")


async def acall(make: Callable[[], Awaitable[T]], doing: str) -> T:
    """Await a client call, mapping the clients' errors onto ours exactly as ``call`` does."""
    try:
        return await make()
    except Exception as exc:
        error = exc

        def reraise() -> Any:
            raise error

        return call(reraise, doing)  # raises our error for a client error, else ``exc``


async def dialect_of(client: AsyncClient) -> Dialect:
    """The dialect of an async client (engine and version from ``info()``)."""
    engine, version = engine_from_info(await acall(client.info, "reading cluster info"))
    return dialect_for(engine, version)


async def field_layout_of(client: AsyncClient, index: str, field: str) -> FieldLayout:
    """The sparse field's type, and whether it is the passages layout (nested)."""
    mappings = await acall(
        lambda: client.indices.get_mapping(index=index), f"reading {index} mapping"
    )
    return field_layout_from_mapping(dict(mappings), index, field)


async def field_type_of(client: AsyncClient, index: str, field: str) -> FieldType:
    return (await field_layout_of(client, index, field)).field_type


async def clause_limit_of(client: AsyncClient, dialect: Dialect) -> int:
    """The cluster's bool clause limit (1024 when it cannot be read)."""
    try:
        settings = await acall(
            lambda: client.cluster.get_settings(include_defaults=True, flat_settings=True),
            "reading cluster settings",
        )
    except ClusterError:  # permission to read settings is not required to search
        return DEFAULT_CLAUSE_LIMIT
    return dialect.clause_limit(dict(settings))


class QueryBuilder(_query.QueryBuilder):
    """``splade_es.QueryBuilder`` whose ``for_index`` reads the cluster asynchronously."""

    @classmethod
    async def for_index(  # type: ignore[override]
        cls, client: AsyncClient, index: str, *, field: str = defaults.VECTOR_FIELD, **options: Any
    ) -> QueryBuilder:
        dialect = await dialect_of(client)
        if "field_type" not in options:
            layout = await field_layout_of(client, index, field)
            options["field_type"] = layout.field_type
            options.setdefault("passages", layout.passages)
        if "max_clauses" not in options:
            options["max_clauses"] = await clause_limit_of(client, dialect)
        return cls(dialect, field=field, **options)


# ``client: Any``: the request's URL params are a mapping of strings, which the clients'
# typed keyword arguments (bools, ints, ...) do not accept as ``**params``.
async def send(client: Any, index: str, request: SearchRequest) -> tuple[dict, float]:
    started = time.perf_counter()
    response = await acall(
        lambda: client.search(index=index, body=request.body, **dict(request.params)),
        f"searching {index}",
    )
    return dict(response), (time.perf_counter() - started) * 1000


async def search(
    client: AsyncClient,
    index: str,
    text: str,
    *,
    encoder: Encoder,
    k: int = defaults.TOP_K,
    filters: Sequence[dict] = (),
    hybrid: Hybrid | None = None,
    builder: _query.QueryBuilder | None = None,
    field: str = defaults.VECTOR_FIELD,
    source: Any = True,
) -> SearchResult:
    """``splade_es.search`` for an async client; the model runs in a worker thread."""
    if not text.strip():
        raise EmptyQueryError("nothing to search for: the query text is empty")
    builder = builder or await QueryBuilder.for_index(client, index, field=field)
    started = time.perf_counter()
    vector = await asyncio.to_thread(encoder.encode_queries, [text])
    encode_ms = (time.perf_counter() - started) * 1000
    return await search_vector(
        client,
        index,
        vector,
        builder=builder,
        text=text,
        k=k,
        filters=filters,
        hybrid=hybrid,
        source=source,
        encode_ms=encode_ms,
    )


async def search_vector(
    client: AsyncClient,
    index: str,
    vector: QueryVector,
    *,
    builder: _query.QueryBuilder,
    text: str | None = None,
    k: int = defaults.TOP_K,
    filters: Sequence[dict] = (),
    hybrid: Hybrid | None = None,
    source: Any = True,
    encode_ms: float = 0.0,
) -> SearchResult:
    prepared = builder.search_request(
        vector, k=k, text=text, filters=filters, hybrid=hybrid, source=source
    )
    response, search_ms = await send(client, index, prepared.request)
    return SearchResult(
        hits=hits_of(response),
        features=prepared.features,
        prune=prepared.prune,
        encode_ms=encode_ms,
        search_ms=search_ms,
        took_ms=response.get("took"),
        request=prepared.request,
    )


async def explain(
    client: AsyncClient,
    index: str,
    doc_id: str,
    vector: QueryVector,
    *,
    builder: _query.QueryBuilder,
) -> Explanation:
    """``splade_es.explain`` for an async client."""
    response = await acall(
        lambda: client.search(index=index, body=explain_body(builder, doc_id)),
        f"reading {doc_id}",
    )
    document = stored_vector(response, builder, doc_id, index)
    scored, _ = await send(client, index, score_request(builder, vector, doc_id))
    return explanation(builder, vector, doc_id, document, scored)


__all__ = [
    "QueryBuilder",
    "acall",
    "clause_limit_of",
    "dialect_of",
    "explain",
    "field_layout_of",
    "field_type_of",
    "search",
    "search_vector",
]
