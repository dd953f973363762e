"""The ASGI app of ``splade-es serve`` (Starlette): routes and wiring only.

    /_splade/health    200 when the model is loaded and the cluster answers, else 503
    /_splade/metrics   Prometheus text format
    /_splade/query     text -> the search body and URL params for an index or engine
    /_splade/encode    texts -> token/weight dicts and feature keys
    /embed_sparse      text-embeddings-inference's sparse-embedding API
    everything else    forwarded to the cluster unchanged, except ``_search``/``_msearch``
                       bodies with a ``splade`` clause, which is replaced (``rewrite``)

Errors look like the cluster's own (``{"error": {"type", "reason"}, "status"}``), so every
client raises its usual exception: 400 for a malformed clause, 413 for a body over the limit,
502 when the cluster cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..connect import ConnectionConfig
from ..encoder import SpladeEncoder
from ..engines import FieldType, Hybrid, dialect_for
from ..exceptions import ConfigurationError, InputError, SpladeEsError
from ..query import QueryBuilder, QueryPruning
from ..sparse import SparseBatch
from ..tokens import TokenCodec
from . import rewrite
from .batcher import MicroBatcher
from .facts import FactsCache, UpstreamAnswered, changes_mappings
from .metrics import CONTENT_TYPE, Metrics
from .upstream import Headers, Upstream, UpstreamResponse, UpstreamUnavailable, forwardable

log = logging.getLogger(__name__)
access_log = logging.getLogger("splade_es.serve.access")

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    connection: ConnectionConfig
    model: str = ""
    device: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 2.0
    cache_size: int = 10_000
    max_body_bytes: int = 100 * MIB  # Elasticsearch's own http.max_content_length default
    facts_ttl: float = 60.0
    max_connections: int = 256
    # torch intra-op threads; None leaves torch's default. Fewer threads than cores leaves
    # one for the event loop: on a busy CPU, intra-op threads that lose their core to
    # another process stall every op of a small batch (p90 of one query 3 ms -> 200+ ms).
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigurationError("--max-batch must be >= 1")
        if self.max_wait_ms < 0:
            raise ConfigurationError("--max-wait-ms must be >= 0")
        if self.cache_size < 0:
            raise ConfigurationError("--cache-size must be >= 0")
        if self.max_body_bytes < 1:
            raise ConfigurationError("--max-body-bytes must be >= 1")


class HttpError(Exception):
    """An error answered in the cluster's error shape."""

    def __init__(self, status: int, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error_type = error_type
        self.reason = reason


def error_body(status: int, error_type: str, reason: str) -> bytes:
    """Elasticsearch's error shape; clients turn it into their usual exceptions."""
    cause = {"type": error_type, "reason": reason}
    return json.dumps({"error": {"root_cause": [cause], **cause}, "status": status}).encode()


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status, media_type="application/json")


class RawResponse(Response):
    """A response with the upstream's headers as they came, in order with repeats (the
    server writes names in lower case, which HTTP treats as the same names)."""

    def __init__(self, upstream: UpstreamResponse, method: str = "GET") -> None:
        super().__init__(upstream.body, upstream.status)
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers]
        # A HEAD answer declares (or not) the length a GET would have; 204/304 have none.
        length = upstream.content_length if method == "HEAD" else str(len(upstream.body))
        if length is not None and upstream.status not in (204, 304):
            self.raw_headers.append((b"content-length", length.encode()))


class Service:
    """Everything one serve process holds: model, batcher, upstream, cached index facts."""

    def __init__(self, config: ServeConfig, encoder: SpladeEncoder | None = None) -> None:
        self.config = config
        self.encoder = encoder
        self.metrics = Metrics()
        self.upstream = Upstream(config.connection, max_connections=config.max_connections)
        self.facts = FactsCache(self.upstream, ttl=config.facts_ttl)
        self.batcher: MicroBatcher | None = None
        self._engine_builders: dict[tuple[Any, ...], QueryBuilder] = {}

    async def start(self) -> None:
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)
        if self.encoder is None:
            self.encoder = await asyncio.to_thread(
                SpladeEncoder.from_pretrained, self.config.model, device=self.config.device
            )
        encoder = self.encoder
        self.batcher = MicroBatcher(
            lambda texts: encoder.encode_queries(texts, batch_size=max(1, len(texts))),
            max_batch=self.config.max_batch,
            max_wait=self.config.max_wait_ms / 1000,
            cache_size=self.config.cache_size,
            metrics=self.metrics,
        )
        self.batcher.start()
        await self.upstream.start()
        log.info(
            "serving %s in front of %s (max batch %d, max wait %.1f ms)",
            encoder.name,
            self.upstream.description,
            self.config.max_batch,
            self.config.max_wait_ms,
        )

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        await self.upstream.close()

    def engine_builder(
        self, engine: str, version: str, field: str, field_type: FieldType, max_clauses: int | None
    ) -> QueryBuilder:
        """A builder for an engine named in a translation request, kept: building one makes
        a token codec over the whole vocabulary (milliseconds), using it does not."""
        key = (engine, version, field, field_type, max_clauses)
        builder = self._engine_builders.get(key)
        if builder is None:
            builder = QueryBuilder(
                dialect_for(engine, version),
                field=field,
                field_type=field_type,
                max_clauses=max_clauses,
            )
            if len(self._engine_builders) >= 64:
                self._engine_builders.pop(next(iter(self._engine_builders)))
            self._engine_builders[key] = builder
        return builder

    # ------------------------------------------------------------------ encoding
    async def query_vectors(self, texts: Sequence[str]) -> list[SparseBatch]:
        assert self.batcher is not None
        return await self.batcher.encode(texts)

    # ------------------------------------------------------------------ rewriting
    async def rewrite(
        self, sp: rewrite.SearchPath, body: bytes, authorization: str | None
    ) -> tuple[bytes, list[tuple[str | None, str]]] | None:
        """The rewritten body and the (index, field) facts it used; None if nothing to do."""
        if not rewrite.may_have_clause(body):
            return None
        jobs: list[tuple[int, str | None, Any, rewrite.Found]] = []
        if sp.api == "_search":
            parsed = rewrite.parse_json_body(body)
            found = rewrite.find_clauses(parsed)
            if found.clauses:
                jobs.append((0, sp.index, parsed, found))
            items: list[rewrite.MsearchItem] = []
        else:
            items = rewrite.split_msearch(body)
            for n, item in enumerate(items):
                if not rewrite.may_have_clause(item.body_line):
                    continue
                where = f"msearch item {n + 1}"
                try:
                    parsed = rewrite.parse_json_body(item.body_line, where)
                    found = rewrite.find_clauses(parsed)
                except rewrite.RewriteError as exc:
                    raise rewrite.RewriteError(
                        f"{where}: {exc}", error_type=exc.error_type
                    ) from None
                if found.clauses:
                    index = rewrite.msearch_index(item.header, sp.index)
                    jobs.append((n, index, parsed, found))
        if not jobs:
            return None
        new_bodies = await self._translate(jobs, authorization)
        used = [(index, c.clause.field) for _, index, _, found in jobs for c in found.clauses]
        if sp.api == "_search":
            return rewrite.dumps(new_bodies[0]), used
        replaced = dict(zip((n for n, *_ in jobs), new_bodies, strict=True))
        lines: list[bytes] = []
        for n, item in enumerate(items):
            lines.append(item.header_line)
            lines.append(rewrite.dumps(replaced[n]) if n in replaced else item.body_line)
        return rewrite.join_msearch(lines), used

    async def _translate(
        self, jobs: list[tuple[int, str | None, Any, rewrite.Found]], authorization: str | None
    ) -> list[Any]:
        texts = [c.clause.text for _, _, _, found in jobs for c in found.clauses]
        keys = list(
            dict.fromkeys((index, c.clause.field) for _, index, _, f in jobs for c in f.clauses)
        )
        vectors_task = asyncio.ensure_future(self.query_vectors(texts))
        try:
            builders = dict(
                zip(
                    keys,
                    await asyncio.gather(
                        *(self.facts.builder(i, f, authorization) for i, f in keys)
                    ),
                    strict=True,
                )
            )
        except BaseException:
            vectors_task.cancel()
            raise
        vectors = iter(await vectors_task)
        bodies = []
        for _, index, parsed, found in jobs:
            queries = []
            for located in found.clauses:
                builder = builders[(index, located.clause.field)]
                reserve = found.reserve(builder.max_clauses)
                queries.append(
                    rewrite.clause_query(builder, located.clause, next(vectors), reserve=reserve)
                )
            self.metrics.rewrites.inc(len(queries))
            bodies.append(rewrite.replace_clauses(parsed, found, queries))
        return bodies


# ---------------------------------------------------------------------- request helpers
async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, "content_too_long_exception", _too_long(int(declared), limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "content_too_long_exception", _too_long(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_long(size: int, limit: int) -> str:
    return f"request body of {size} bytes or more exceeds the proxy's limit of {limit} bytes"


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip/deflate request body, inflated (at most ``limit`` bytes)."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise HttpError(
            415, "illegal_argument_exception", f"unsupported Content-Encoding {encoding!r}"
        )
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpError(400, "parse_exception", f"request body: bad {encoding} data") from exc
    if len(out) > limit:
        raise HttpError(413, "content_too_long_exception", _too_long(len(out), limit))
    return out


def _header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _without(headers: Headers, name: str) -> Headers:
    return [(k, v) for k, v in headers if k.lower() != name]


# ---------------------------------------------------------------------- the app
def create_app(config: ServeConfig, *, encoder: SpladeEncoder | None = None) -> Starlette:
    """The ASGI app; ``encoder`` skips loading ``config.model`` (tests, embedding)."""
    service = Service(config, encoder)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    def answered(route: str, started: float, request: Request, response: Response) -> Response:
        elapsed = time.perf_counter() - started
        service.metrics.requests.labels(route, f"{response.status_code // 100}xx").inc()
        service.metrics.request_seconds.labels(route).observe(elapsed)
        # Method, path and status only: never headers (credentials) or query strings.
        access_log.info(
            "%s %s %s -> %d %.2fms",
            request.client.host if request.client else "-",
            request.method,
            request.url.path,
            response.status_code,
            elapsed * 1000,
        )
        return response

    def failure(exc: Exception) -> Response:
        if isinstance(exc, HttpError):
            return Response(
                error_body(exc.status, exc.error_type, exc.reason),
                exc.status,
                media_type="application/json",
            )
        if isinstance(exc, rewrite.RewriteError):
            return failure(HttpError(400, exc.error_type, str(exc)))
        if isinstance(exc, ConfigurationError | InputError | SpladeEsError):
            return failure(HttpError(400, "illegal_argument_exception", str(exc)))
        if isinstance(exc, UpstreamAnswered):
            return RawResponse(exc.response)
        if isinstance(exc, UpstreamUnavailable):
            service.metrics.upstream_errors.inc()
            return failure(HttpError(502, "upstream_unavailable_exception", str(exc)))
        log.exception("internal error")  # the details go to the log, not to the client
        return failure(HttpError(500, "internal_error", "internal error in splade-es serve"))

    async def proxy(request: Request) -> Response:
        started = time.perf_counter()
        route = "passthrough"
        try:
            body = await read_body(request, config.max_body_bytes)
            method = request.method
            path = request.url.path
            target = request.scope["raw_path"].decode("latin-1")
            if request.scope["query_string"]:
                target += "?" + request.scope["query_string"].decode("latin-1")
            headers = forwardable(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
            )
            sp = rewrite.search_path(path) if method in ("GET", "POST") and body else None
            if sp is not None:
                route = sp.api.lstrip("_")
                response = await search(sp, method, target, headers, body)
            else:
                response = await forward(method, target, headers, body)
            if changes_mappings(method, path):
                service.facts.forget()
            result: Response = RawResponse(response, method)
        except Exception as exc:
            result = failure(exc)
        return answered(route, started, request, result)

    async def forward(method: str, target: str, headers: Headers, body: bytes) -> UpstreamResponse:
        started = time.perf_counter()
        response = await service.upstream.request(method, target, headers, body)
        service.metrics.upstream_seconds.observe(time.perf_counter() - started)
        return response

    async def search(
        sp: rewrite.SearchPath, method: str, target: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        encoding = _header(headers, "content-encoding")
        plain = decompress(body, encoding, config.max_body_bytes) if encoding else body
        authorization = _header(headers, "authorization")
        rewritten = await service.rewrite(sp, plain, authorization)
        if rewritten is None:
            return await forward(method, target, headers, body)  # untouched, bytes as they came
        new_body, used = rewritten
        sent_headers = _without(headers, "content-encoding")
        response = await forward(method, target, sent_headers, new_body)
        if response.status == 400:
            # The mapping may have changed behind the proxy: re-read the facts this body
            # used, and try once more if they differ.
            before = [service.facts.forget_index(index, field) for index, field in used]
            rewritten = await service.rewrite(sp, plain, authorization)
            assert rewritten is not None
            after = [await service.facts.facts(i, f, authorization) for i, f in used]
            if any(
                b is None or b.signature != a.signature for b, a in zip(before, after, strict=True)
            ):
                response = await forward(method, target, sent_headers, rewritten[0])
        return response

    async def health(request: Request) -> Response:
        started = time.perf_counter()
        model_loaded = service.encoder is not None and service.batcher is not None
        cluster: dict[str, Any] = {"url": service.upstream.description}
        try:
            answer, _ = await service.upstream.get_json("/")
            cluster.update(reachable=answer.status < 500, status=answer.status)
        except UpstreamUnavailable as exc:
            cluster.update(reachable=False, reason=str(exc))
        ok = model_loaded and cluster["reachable"]
        body = {
            "status": "ok" if ok else "unavailable",
            "model": service.encoder.name if service.encoder else None,
            "model_loaded": model_loaded,
            "cluster": cluster,
        }
        return answered("health", started, request, _json(body, 200 if ok else 503))

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    async def query(request: Request) -> Response:
        started = time.perf_counter()
        try:
            spec = await _json_object(request, config.max_body_bytes)
            result = await translate(spec, _header_of(request, "authorization"))
            response = _json(result)
        except Exception as exc:
            response = failure(exc)
        return answered("query", started, request, response)

    async def translate(spec: dict[str, Any], authorization: str | None) -> dict[str, Any]:
        text = _get(spec, "text", str)
        if not text.strip():
            raise HttpError(400, "illegal_argument_exception", "[text] must not be empty")
        field = _get(spec, "field", str, "splade")
        pruning = QueryPruning(
            top_k=_get(spec, "top_k", int, None),
            min_weight=_get(spec, "min_weight", float, None),
            mass=_get(spec, "mass", float, None),
        )
        index = _get(spec, "index", str, None)
        if index is not None:
            builder = await service.facts.builder(index, field, authorization)
        else:
            engine = _get(spec, "engine", str, None)
            version = _get(spec, "version", str, None)
            if engine is None or version is None:
                raise HttpError(
                    400,
                    "illegal_argument_exception",
                    "give [index], or [engine] and [version] (and [field_type])",
                )
            field_type: FieldType = _get(spec, "field_type", str, "rank_features")  # type: ignore[assignment]
            builder = service.engine_builder(
                engine, version, field, field_type, _get(spec, "max_clauses", int, None)
            )
        hybrid_spec = _get(spec, "hybrid", dict, None)
        hybrid = None
        if hybrid_spec is not None:
            try:
                if "text_fields" in hybrid_spec:
                    hybrid_spec = {**hybrid_spec, "text_fields": tuple(hybrid_spec["text_fields"])}
                hybrid = Hybrid(**hybrid_spec)
            except TypeError as exc:
                raise HttpError(400, "illegal_argument_exception", f"[hybrid]: {exc}") from None
        filters = _get(spec, "filters", list, [])
        [vector] = await service.query_vectors([text])
        prepared = builder.search_request(
            vector,
            k=_get(spec, "k", int, 10),
            text=text,
            filters=filters,
            hybrid=hybrid,
            source=spec.get("source", True),
            pruning=pruning,
        )
        return {
            "body": prepared.request.body,
            "params": dict(prepared.request.params),
            "engine": builder.dialect.engine,
            "version": builder.dialect.version_text,
            "field_type": builder.field_type,
            "pruning": {
                "kept": prepared.prune.kept,
                "dropped": prepared.prune.dropped,
                "kept_weight": prepared.prune.kept_weight,
                "clause_limited": prepared.prune.clause_limited,
            },
        }

    async def encode(request: Request) -> Response:
        started = time.perf_counter()
        try:
            spec = await _json_object(request, config.max_body_bytes)
            texts = _texts(_get(spec, "texts", list))
            kind = _get(spec, "kind", str, "query")
            scheme = _get(spec, "key_scheme", str, "token")
            if kind not in ("query", "document"):
                raise HttpError(400, "illegal_argument_exception", "[kind] is query or document")
            if kind == "query":
                vectors = await service.query_vectors(texts)
                batch = SparseBatch.concat(vectors)
            else:
                assert service.batcher is not None and service.encoder is not None
                batch = await service.batcher.run(service.encoder.encode_documents, texts)
            codec = TokenCodec(batch.vocab, scheme=scheme)  # type: ignore[arg-type]
            vectors_out = [
                {"tokens": batch.to_dict(i), "features": codec.encode(batch, i)}
                for i in range(len(batch))
            ]
            response = _json({"model": service.encoder.name, "kind": kind, "vectors": vectors_out})
        except ValueError as exc:
            response = failure(HttpError(400, "illegal_argument_exception", str(exc)))
        except Exception as exc:
            response = failure(exc)
        return answered("encode", started, request, response)

    async def embed_sparse(request: Request) -> Response:
        """text-embeddings-inference's ``POST /embed_sparse``: ``{"inputs": str | [str]}`` ->
        ``[[{"index": id, "value": weight}]]``; errors as TEI gives them (422 + error_type)."""
        started = time.perf_counter()
        try:
            spec = await _json_object(request, config.max_body_bytes)
            inputs = spec.get("inputs")
            texts = _texts([inputs] if isinstance(inputs, str) else inputs, name="inputs")
            vectors = await service.query_vectors(texts)
            out = [
                [{"index": int(i), "value": float(w)} for i, w in zip(*v.row(0), strict=True)]
                for v in vectors
            ]
            response = _json(out)
        except HttpError as exc:
            response = _json({"error": exc.reason, "error_type": "Validation"}, 422)
        except Exception as exc:
            response = failure(exc)
        return answered("embed_sparse", started, request, response)

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]
    routes = [
        Route("/_splade/health", health, methods=["GET"]),
        Route("/_splade/metrics", metrics, methods=["GET"]),
        Route("/_splade/query", query, methods=["POST"]),
        Route("/_splade/encode", encode, methods=["POST"]),
        Route("/embed_sparse", embed_sparse, methods=["POST"]),
        Route("/{path:path}", proxy, methods=methods),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    return app


# ---------------------------------------------------------------------- JSON input helpers
async def _json_object(request: Request, limit: int) -> dict[str, Any]:
    body = rewrite.parse_json_body(await read_body(request, limit))
    if not isinstance(body, dict):
        raise HttpError(400, "parse_exception", "request body: expected a JSON object")
    return body


_MISSING = object()


def _get(spec: dict[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    value = spec.get(name, default)
    if value is _MISSING:
        raise HttpError(400, "illegal_argument_exception", f"[{name}] is required")
    if value is None or value is default:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HttpError(
            400,
            "illegal_argument_exception",
            f"[{name}] must be a {kind.__name__}, got {json.dumps(value)[:80]}",
        )
    return value


def _texts(value: Any, *, name: str = "texts") -> list[str]:
    if not isinstance(value, list) or not value:
        raise HttpError(400, "illegal_argument_exception", f"[{name}] must be a non-empty list")
    for i, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise HttpError(
                400, "illegal_argument_exception", f"[{name}][{i}] must be a non-empty string"
            )
    return value


def _header_of(request: Request, name: str) -> str | None:
    return request.headers.get(name)
