"""The API of ``splade-es serve`` itself (everything else is the proxy's, ``proxy.py``):

    /_splade/health           200 when the model is loaded and the cluster answers, else 503
    /_splade/metrics          Prometheus text format
    /_splade/query            text -> the search body and URL params for an index or engine
    /_splade/encode           texts -> token/weight dicts and feature keys
    /_splade/embed/document   texts -> the feature vectors ``splade-es ingest`` writes, for
    /_splade/embed/query      ... and those a ``splade`` clause searches with: the encoder the
                              engines call (OpenSearch ml-commons connectors, Elasticsearch
                              inference endpoints; ``embed.py`` has the request and answers)
    /embed_sparse             text-embeddings-inference's sparse-embedding API
    /_splade/ui               the relevance workbench page and its JSON endpoints
                              (``splade_es.workbench.ui``; they encode: API keys apply)

Each route is a method of ``ApiRoutes`` that reads its request, hands the work to the
``Service`` and writes the answer; ``answer`` gives them one deadline, error answer and record.
With API keys (``serve --api-key-file``, ``auth.py``), ``answer`` first refuses a request to
an endpoint that encodes without one of them (401, or 403 for a wrong key); health and
metrics stay open.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..sparse import SparseBatch
from ..tokens import KeyScheme, TokenCodec
from ..workbench.ui import Workbench
from .batcher import QueueFull, Row
from .embed import KINDS, EmbedRequestError, Kind, answer_body, parse_embed_request
from .errors import error_body, error_response
from .exchange import deadline_after, json_object, json_response, recorded, within
from .metrics import CONTENT_TYPE
from .middleware import THROTTLED
from .service import HttpError, Service, check_texts, field_of, model_name, texts_of
from .upstream import UpstreamUnavailable

ErrorAnswer = Callable[[Exception], Response]


class ApiRoutes:
    """The ``/_splade/*`` and ``/embed_sparse`` endpoints over one ``Service``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = service.config
        self.keys = service.config.api_keys
        # One codec per (kind, key scheme): building one walks the whole vocabulary.
        self._codecs: dict[tuple[Kind, KeyScheme], TokenCodec] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/_splade/health", self.health, methods=["GET"]),
            Route("/_splade/metrics", self.metrics, methods=["GET"]),
            Route("/_splade/query", self.query, methods=["POST"]),
            Route("/_splade/encode", self.encode, methods=["POST"]),
            Route("/_splade/embed/{kind}", self.embed, methods=["POST"]),
            Route("/embed_sparse", self.embed_sparse, methods=["POST"]),
            *Workbench(self).routes(),
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
        ``errors`` (the cluster's error shape by default); recorded under ``route``. Every
        route that answers through here encodes: without an API key it is refused first."""
        started = time.perf_counter()
        refusal = self.refusal(request)
        if refusal is not None:
            return recorded(self.service.metrics, route, started, request, refusal)
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

    def refusal(self, request: Request) -> Response | None:
        """The answer to a request without one of the API keys (None: let it through): 401
        with ``WWW-Authenticate: Bearer`` when it carries no bearer key, 403 when its key is
        not one of them; in the cluster's error shape, naming no key."""
        if self.keys is None:
            return None
        verdict = self.keys.check(request.headers.get("authorization"))
        if verdict == "ok":
            return None
        self.service.metrics.auth_refused.labels(verdict).inc()
        if verdict == "missing":
            reason = (
                "missing authentication credentials: send Authorization: Bearer <key> with a "
                "key of splade-es serve's --api-key-file"
            )
            body = error_body(401, "security_exception", reason)
            headers = {"WWW-Authenticate": "Bearer"}
            return Response(body, 401, headers=headers, media_type="application/json")
        reason = "the bearer key is not one of splade-es serve's (--api-key-file)"
        body = error_body(403, "security_exception", reason)
        return Response(body, 403, media_type="application/json")

    def throttled(self, exc: Exception) -> Response:
        """The error answer, with the header ml-commons retries on when it is a 429."""
        response = self.error(exc)
        if response.status_code == 429:
            response.headers.update(THROTTLED)
        return response

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

    async def embed(self, request: Request) -> Response:
        """``POST /_splade/embed/document`` and ``/_splade/embed/query`` (``embed.py``)."""
        kind = KINDS.get(request.path_params["kind"])
        route = f"embed_{kind}" if kind else "embed"  # a bounded set of metric labels

        async def work(request: Request) -> Any:
            if kind is None:
                raise EmbedRequestError(
                    f"unknown embedding kind [{request.path_params['kind']}]: "
                    "POST /_splade/embed/document or /_splade/embed/query"
                )
            return await self.embeddings(kind, request)

        return await self.answer(route, request, work, errors=self.throttled)

    async def embed_sparse(self, request: Request) -> Response:
        """text-embeddings-inference's ``POST /embed_sparse``: ``{"inputs": str | [str]}`` ->
        ``[[{"index": id, "value": weight}]]``; errors as TEI gives them (422 + error_type)."""
        return await self.answer("embed_sparse", request, self.sparse_embeddings, errors=self.tei)

    # ------------------------------------------------------------------ their work
    async def translation(self, request: Request) -> dict[str, Any]:
        spec = await json_object(request, self.config)
        # With API keys, Authorization holds serve's own key: never the cluster's business
        # (the index facts are then read with serve's cluster credentials).
        authorization = None if self.keys else request.headers.get("authorization")
        return await self.service.translation(spec, authorization)

    async def embeddings(self, kind: Kind, request: Request) -> Any:
        """The answer to an embed request: one vector per input, keyed as asked."""
        spec = await json_object(request, self.config)
        asked = parse_embed_request(spec, request.query_params.multi_items())
        check_texts(asked.texts, self.config, "inputs")
        metrics = self.service.metrics
        metrics.embed_texts.labels(kind).inc(len(asked.texts))
        metrics.embed_blank_texts.labels(kind).inc(len(asked.texts) - len(asked.to_encode))
        if asked.passages:  # "passages": true, per input its passages (embed.py)
            return await self.service.embed_passages(kind, asked)
        texts = [asked.texts[i] for i in asked.to_encode]
        encoded = await self.features(kind, texts, asked.key_scheme) if texts else []
        return answer_body(asked.vectors(encoded), asked.format)

    async def features(
        self, kind: Kind, texts: list[str], scheme: KeyScheme
    ) -> list[dict[str, float]]:
        """``texts``' vectors as ``{feature key: weight}``, keyed by ``TokenCodec`` as ingest
        and the ``splade`` clause key them."""
        if kind == "document":
            rows, vocab = await self.document_rows(texts)
        else:
            rows, vocab = await self.query_rows(texts)
        codec = self.codec(kind, scheme, vocab)
        return [codec.encode_row(*row) for row in rows]

    async def document_rows(self, texts: list[str]) -> tuple[list[Row], Any]:
        """Document vectors through the document queue (batched with other requests' and
        ``--enrich``'s documents; ``QueueFull`` when it is full), and their vocabulary."""
        queue = await self.service.document_queue()
        vocab = (await self.service.document_encoder()).vocab
        try:
            return await queue.encode(texts), vocab
        except QueueFull:
            self.service.metrics.embed_rejected.labels("document").inc()
            raise

    async def query_rows(self, texts: list[str]) -> tuple[list[Row], Any]:
        """Query vectors through the query batcher and its cache, as a ``splade`` clause's
        text is encoded, and their vocabulary."""
        vectors = await self.service.query_vectors(texts)
        return [vector.row(0) for vector in vectors], self.service.loaded_encoder.vocab

    def codec(self, kind: Kind, scheme: KeyScheme, vocab: Any) -> TokenCodec:
        codec = self._codecs.get((kind, scheme))
        if codec is None:
            codec = self._codecs[(kind, scheme)] = TokenCodec(vocab, scheme=scheme)
        return codec

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
