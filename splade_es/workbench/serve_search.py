"""Columns inside ``splade-es serve``: the same plans as ``compare`` (``columns``), the query
encoded by serve's batcher, the builder from serve's cached index facts, the requests sent
through serve's connection to the cluster."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from ..engines import SearchRequest
from ..exceptions import ClusterError, ConfigurationError, InputError
from ..search import FusionChoice
from .columns import (
    Column,
    column_of,
    failed_column,
    fused_response,
    plan_column,
    vectors_request,
)
from .configurations import Configuration

if TYPE_CHECKING:
    from ..engines import Dialect
    from ..serve.hybrid import HybridRunner
    from ..serve.service import Service

COLUMN_ERRORS = (InputError, ClusterError, ConfigurationError)


class ClusterAnswered(ClusterError):
    """The cluster refused a column's search: its reason, for the column's message."""


class ServeSearcher:
    """Runs configurations with one ``Service``; ``authorization`` is the calling page's
    (None when serve uses API keys: serve's key is not the cluster's business).

    The searches read documents: like the proxy, they carry the caller's credentials only,
    never serve's own cluster credentials (which would let anyone who reaches the page read
    what serve may read), unless ``own_credentials`` (``compare --ui``: the user's own process
    on loopback, started with the user's credentials). Index facts are read as serve reads
    them for every request (``FactsCache``)."""

    def __init__(
        self, service: Service, hybrids: HybridRunner, *, shown: int, own_credentials: bool
    ) -> None:
        self.service = service
        self.hybrids = hybrids  # its fusion choices, cached a minute
        self.shown = shown
        self.own_credentials = own_credentials

    async def column(
        self, configuration: Configuration, index: str, text: str, authorization: str | None
    ) -> Column:
        """The configuration's column; an error becomes the column's message."""
        try:
            return await self._column(configuration, index, text, authorization)
        except COLUMN_ERRORS as exc:
            return failed_column(configuration, index, exc)
        except Exception as exc:  # the cluster's own refusal (UpstreamAnswered)
            response = getattr(exc, "response", None)
            if response is None:
                raise
            return failed_column(configuration, index, ClusterAnswered(reason_of(response)))

    async def _column(
        self, configuration: Configuration, index: str, text: str, authorization: str | None
    ) -> Column:
        if configuration.model is not None:
            raise ConfigurationError(
                "serve runs one model: model=... columns need splade-es compare --ui"
            )
        facts = self.service.facts
        dialect = await facts.dialect(authorization)
        builder = vector = None
        if configuration.encodes:
            builder = await facts.builder(index, configuration.sparse_field, authorization)
            [vector] = await self.service.query_vectors([text])
        plan = plan_column(
            configuration,
            index,
            text,
            dialect=dialect,
            builder=builder,
            vector=vector,
            k=self.shown,
            fusion=await self.fusion_of(configuration, dialect, authorization),
        )
        if plan.fused is not None:
            answers = [self.search(index, r, authorization) for r in plan.fused.requests]
            response = fused_response(plan, await asyncio.gather(*answers))
        else:
            response = await self.search(index, plan.request, authorization)
        ids = [str(h["_id"]) for h in response.get("hits", {}).get("hits", [])]
        fetch = vectors_request(plan, ids)
        stored = await self.search(index, fetch, authorization) if fetch is not None else None
        return column_of(plan, response, stored, shown=self.shown)

    async def fusion_of(
        self, configuration: Configuration, dialect: Dialect, authorization: str | None
    ) -> FusionChoice | None:
        """Who fuses a linear / rrf hybrid: as serve's ``splade`` clause decides
        (``HybridRunner.choose``: ``auto``, the default, reads the plugins, the license and
        the search pipeline, which serve never creates; the engine's where all are there)."""
        hybrid = configuration.hybrid()
        if hybrid is None:
            return None
        return await self.hybrids.choose(
            dialect, hybrid, configuration.fusion or "auto", authorization
        )

    async def search(
        self, index: str, request: SearchRequest, authorization: str | None
    ) -> dict[str, Any]:
        """``POST /<index>/_search`` through serve's connection, with the caller's credentials
        (``own_credentials``: serve's own, else the caller's); the cluster's refusal raises
        with its reason."""
        target = f"/{quote(index, safe=',*')}/_search"
        if request.params:
            target += "?" + urlencode(dict(request.params))
        upstream = self.service.upstream
        headers = [("Content-Type", "application/json"), ("Accept", "application/json")]
        auth = (upstream.own_auth if self.own_credentials else None) or authorization
        if auth:
            headers.append(("Authorization", auth))
        answer = await upstream.request("POST", target, headers, json.dumps(request.body).encode())
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict):
            raise ClusterAnswered(reason_of(answer))
        return body


def reason_of(response: Any) -> str:
    """The cluster's reason for refusing a request, from its error body."""
    try:
        body = response.json()
    except Exception:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        reason = error.get("reason") or error.get("type")
        return f"the cluster answered {response.status}: {reason}"
    return f"the cluster answered {response.status}"
