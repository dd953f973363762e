"""The API of ``splade-es serve`` itself (everything else is the proxy's, ``proxy.py``):

    /_splade/health    200 when the model is loaded and the cluster answers, else 503
    /_splade/metrics   Prometheus text format
    /_splade/query     text -> the search body and URL params for an index or engine
    /_splade/encode    texts -> token/weight dicts and feature keys
    /embed_sparse      text-embeddings-inference's sparse-embedding API

Each route is a method of ``ApiRoutes`` that reads its request, hands the work to the
``Service`` and writes the answer; ``answer`` gives them one deadline, error answer and record.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..sparse import SparseBatch
from ..tokens import TokenCodec
from .errors import error_response
from .exchange import deadline_after, json_object, json_response, recorded, within
from .metrics import CONTENT_TYPE
from .service import HttpError, Service, check_texts, field_of, model_name, texts_of
from .upstream import UpstreamUnavailable

ErrorAnswer = Callable[[Exception], Response]


class ApiRoutes:
    """The ``/_splade/*`` and ``/embed_sparse`` endpoints over one ``Service``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = service.config

    def routes(self) -> list[Route]:
        return [
            Route("/_splade/health", self.health, methods=["GET"]),
            Route("/_splade/metrics", self.metrics, methods=["GET"]),
            Route("/_splade/query", self.query, methods=["POST"]),
            Route("/_splade/encode", self.encode, methods=["POST"]),
            Route("/embed_sparse", self.embed_sparse, methods=["POST"]),
        ]

    async def answer(
        self,
        route: str,
        request: Request,
        work: Callable[[Request], Awaitable[Any]],
        *,
        errors: ErrorAnswer | None = None,
    ) -> Response:
        """``work``'s result as JSON, within the request's time limit; a failure answered by
        ``errors`` (the cluster's error shape by default); recorded under ``route``."""
        started = time.perf_counter()
        try:
            async with within(deadline_after(self.config.max_request_seconds), self.seconds):
                result = await work(request)
            response = json_response(result)
        except Exception as exc:
            response = (errors or self.error)(exc)
        return recorded(self.service.metrics, route, started, request, response)

    @property
    def seconds(self) -> float:
        return self.config.max_request_seconds

    def error(self, exc: Exception) -> Response:
        return error_response(exc, self.service.metrics)

    # ------------------------------------------------------------------ the routes
    async def health(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await health_report(self.service)
        status = 200 if body["status"] == "ok" else 503
        return recorded(
            self.service.metrics, "health", started, request, json_response(body, status)
        )

    async def metrics(self, request: Request) -> Response:
        return Response(self.service.metrics.exposition(), media_type=CONTENT_TYPE)

    async def query(self, request: Request) -> Response:
        return await self.answer("query", request, self.translation)

    async def encode(self, request: Request) -> Response:
        return await self.answer("encode", request, self.encoded)

    async def embed_sparse(self, request: Request) -> Response:
        """text-embeddings-inference's ``POST /embed_sparse``: ``{"inputs": str | [str]}`` ->
        ``[[{"index": id, "value": weight}]]``; errors as TEI gives them (422 + error_type)."""
        return await self.answer("embed_sparse", request, self.sparse_embeddings, errors=self.tei)

    # ------------------------------------------------------------------ their work
    async def translation(self, request: Request) -> dict[str, Any]:
        spec = await json_object(request, self.config)
        return await self.service.translation(spec, request.headers.get("authorization"))

    async def encoded(self, request: Request) -> dict[str, Any]:
        spec = await json_object(request, self.config)
        texts = texts_of(field_of(spec, "texts", list))
        check_texts(texts, self.config)
        kind = field_of(spec, "kind", str, "query")
        scheme = field_of(spec, "key_scheme", str, "token")
        if kind not in ("query", "document"):
            raise HttpError(400, "illegal_argument_exception", "[kind] is query or document")
        batch = await (self.query_batch(texts) if kind == "query" else self.document_batch(texts))
        codec = TokenCodec(batch.vocab, scheme=scheme)
        vectors = [
            {"tokens": batch.to_dict(i), "features": codec.encode(batch, i)}
            for i in range(len(batch))
        ]
        name = model_name(self.service.loaded_encoder.name)
        return {"model": name, "kind": kind, "vectors": vectors}

    async def query_batch(self, texts: list[str]) -> SparseBatch:
        return SparseBatch.concat(await self.service.query_vectors(texts))

    async def document_batch(self, texts: list[str]) -> SparseBatch:
        service = self.service
        assert service.batcher is not None and service.encoder is not None
        document_encoder = await service.document_encoder()
        return await service.batcher.run_pieces(
            lambda piece: service.encode_documents(document_encoder, piece), texts
        )

    async def sparse_embeddings(self, request: Request) -> list[list[dict[str, Any]]]:
        spec = await json_object(request, self.config)
        inputs = spec.get("inputs")
        texts = texts_of([inputs] if isinstance(inputs, str) else inputs, name="inputs")
        check_texts(texts, self.config, "inputs")
        vectors = await self.service.query_vectors(texts)
        return [
            [{"index": int(i), "value": float(w)} for i, w in zip(*v.row(0), strict=True)]
            for v in vectors
        ]

    def tei(self, exc: Exception) -> Response:
        """A request error as text-embeddings-inference answers it: 422, "Validation"."""
        if isinstance(exc, HttpError):
            return json_response({"error": exc.reason, "error_type": "Validation"}, 422)
        return self.error(exc)


async def health_report(service: Service) -> dict[str, Any]:
    """``/_splade/health``'s body: whether the model is loaded and the cluster answers."""
    model_loaded = service.encoder is not None and service.batcher is not None
    cluster: dict[str, Any] = {}  # no address: health is open to every client
    try:
        answer, _ = await service.upstream.get_json("/")
        cluster.update(reachable=answer.status < 500, status=answer.status)
    except UpstreamUnavailable as exc:
        cluster.update(reachable=False, reason=str(exc))
    ok = model_loaded and cluster["reachable"]
    return {
        "status": "ok" if ok else "unavailable",
        "model": model_name(service.encoder.name) if service.encoder else None,
        "model_loaded": model_loaded,
        "cluster": cluster,
    }
