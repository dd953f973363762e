"""A ``_search`` whose query is a ``splade`` clause with ``hybrid``, run by the proxy.

``fusion``:
* ``engine``: the body becomes the engine's hybrid request (``QueryBuilder.search_request``,
  as ``search()`` sends it: a retriever on Elasticsearch, the ``hybrid`` query with its
  ``search_pipeline`` on OpenSearch), sent as the app's ``_search``;
* ``client``: the BM25 and the SPLADE searches go to the cluster in one ``_msearch`` and are
  fused here (``search.client_fusion``, ``splade_es.fusion``); the app gets a search response
  of the fused hits, as the engine's would be;
* ``auto`` (the default): the engine's where the cluster can (version, plugin, license, and on
  OpenSearch the hybrid's search pipeline, which the proxy never creates), else the client's;
  read once per minute per hybrid.

Either way the answer carries ``X-Splade-Fusion: engine|client`` (``none`` for a ``sum``
hybrid: one ``bool`` query).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from ..engines import Dialect, Hybrid
from ..search import FusionChoice, client_fusion, msearch_body
from . import rewrite
from .exchange import Outgoing, header, without
from .service import Service
from .upstream import UpstreamResponse

FUSION_HEADER = "X-Splade-Fusion"
CHOICE_TTL = 60.0


class HybridRunner:
    """Runs hybrid ``splade`` searches for the proxy; remembers ``auto``'s answers."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._choices: dict[tuple[str, str], tuple[FusionChoice, float]] = {}

    async def search(
        self, sp: rewrite.SearchPath, out: Outgoing, plan: rewrite.HybridSearch
    ) -> UpstreamResponse:
        clause = plan.clause
        hybrid = clause.hybrid
        assert hybrid is not None
        authorization = header(out.headers, "authorization")
        builder = await self.service.facts.builder(sp.index, clause.field, authorization)
        choice = await self.choose(builder.dialect, hybrid, clause.fusion, authorization)
        [vector] = await self.service.query_vectors([clause.text])
        self.service.metrics.rewrites.inc()
        headers = without(without(out.headers, "content-encoding"), "content-length")
        if choice.fusion == "client":
            return await self._client(sp, out, plan, builder, vector, choice, headers)
        prepared = builder.search_request(
            vector,
            k=plan.k,
            text=clause.text,
            hybrid=hybrid,
            source=plan.source,
            pruning=clause.pruning,
        )
        target = _with_params(out.target, prepared.request.params)
        body = rewrite.dumps(prepared.request.body)
        response = await self.service.upstream.request("POST", target, headers, body)
        return _tagged(response, choice)

    async def _client(
        self,
        sp: rewrite.SearchPath,
        out: Outgoing,
        plan: rewrite.HybridSearch,
        builder: Any,
        vector: Any,
        choice: FusionChoice,
        headers: list[tuple[str, str]],
    ) -> UpstreamResponse:
        clause = plan.clause
        assert clause.hybrid is not None
        fused = client_fusion(
            builder,
            vector,
            text=clause.text,
            k=plan.k,
            hybrid=clause.hybrid,
            source=plan.source,
            pruning=clause.pruning,
        )
        index = sp.index or "_all"
        lines = [json.dumps(line).encode() for line in msearch_body(index, fused.requests)]
        target = "/_msearch" + _query_string(out.target, keep=("timeout",))
        # splade-es reads this answer, so it must come uncompressed whatever the app accepts
        # (the fused answer goes back to the app as plain JSON).
        plain = without(without(headers, "content-type"), "accept-encoding")
        sent = [*plain, ("Content-Type", "application/x-ndjson")]
        response = await self.service.upstream.request(
            "POST", target, sent, rewrite.join_msearch(lines)
        )
        answer = response.json()
        if response.status != 200:
            return response  # the cluster's own refusal, as it came
        if not isinstance(answer, dict):
            reason = "the cluster's _msearch answer to a client-fused hybrid is not JSON"
            return _json(502, {"error": {"type": "bad_gateway", "reason": reason}}, choice)
        items = answer.get("responses") or []
        for item in items:
            if isinstance(item, dict) and "error" in item:
                status = int(item.get("status") or 500)
                return _json(status, {"error": item["error"], "status": status}, choice)
        return _json(200, fused.response(items), choice)

    async def choose(
        self, dialect: Dialect, hybrid: Hybrid, fusion: str, authorization: str | None
    ) -> FusionChoice:
        """``choose_fusion`` over the proxy's upstream: ``auto`` reads the plugins, the
        license and the search pipeline (as ``engine_fusion_refusal`` does), cached."""
        if hybrid.method == "sum":
            return FusionChoice(None, "nothing to fuse (a sum hybrid is one bool query)")
        if fusion != "auto":
            return FusionChoice(fusion, f"{hybrid.method} fused by the {fusion} (fusion={fusion})")  # type: ignore[arg-type]
        key = (hybrid.method, hybrid.pipeline_name)
        cached = self._choices.get(key)
        if cached is not None and time.monotonic() - cached[1] < CHOICE_TTL:
            return cached[0]
        reason = await self._refusal(dialect, hybrid, authorization)
        if reason is None:
            note = f"{hybrid.method} fused by the engine (fusion=auto: the cluster has it)"
            choice = FusionChoice("engine", note)
        else:
            note = f"{hybrid.method} fused client-side (fusion=auto: {reason})"
            choice = FusionChoice("client", note)
        self._choices[key] = (choice, time.monotonic())
        return choice

    async def _refusal(
        self, dialect: Dialect, hybrid: Hybrid, authorization: str | None
    ) -> str | None:
        upstream = self.service.upstream
        capability = f"hybrid:{hybrid.method}"
        plugins: tuple[str, ...] | None = ()
        if dialect.required_plugin(capability):
            response, rows = await upstream.get_json("/_cat/plugins?format=json", authorization)
            plugins = (
                tuple(str(r.get("component")) for r in rows if isinstance(r, dict))
                if response.status == 200 and isinstance(rows, list)
                else None
            )
        license = None
        if dialect.required_license(capability):
            response, body = await upstream.get_json("/_license", authorization)
            found = body.get("license") if isinstance(body, dict) else None
            if response.status == 200 and isinstance(found, dict):
                license = f"{found.get('type')} ({found.get('status')})"
        reason = dialect.engine_fusion_refusal(hybrid, plugins=plugins, license=license)
        if reason is None and dialect.hybrid_pipeline_body(hybrid) is not None:
            name = hybrid.pipeline_name
            response, _ = await upstream.get_json(
                f"/_search/pipeline/{quote(name, safe='')}", authorization
            )
            if response.status != 200:
                return f"the search pipeline {name} does not exist (HTTP {response.status})"
        return reason


def _tagged(response: UpstreamResponse, choice: FusionChoice) -> UpstreamResponse:
    headers = [*response.headers, (FUSION_HEADER, choice.fusion or "none")]
    return UpstreamResponse(response.status, headers, response.body, response.content_length)


def _json(status: int, body: Any, choice: FusionChoice) -> UpstreamResponse:
    payload = json.dumps(body, ensure_ascii=False).encode()
    headers = [
        ("Content-Type", "application/json; charset=UTF-8"),
        (FUSION_HEADER, choice.fusion or "none"),
    ]
    return UpstreamResponse(status, headers, payload, str(len(payload)))


def _query_string(target: str, keep: tuple[str, ...]) -> str:
    """The ``keep`` parameters of ``target``'s query string, as ``?a=b`` (or "")."""
    _, _, query = target.partition("?")
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] in keep]
    return "?" + "&".join(kept) if kept else ""


def _with_params(target: str, params: Any) -> str:
    """``target`` with ``params`` (the engine's URL parameters) added to its query string."""
    if not params:
        return target
    extra = "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in dict(params).items())
    return target + ("&" if "?" in target else "?") + extra
