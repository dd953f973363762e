"""What one ``splade-es serve`` process holds and does, apart from HTTP: the model behind
its micro-batcher, the upstream, cached index facts; rewriting search bodies and translating
texts into search requests (with ``rewrite`` and ``QueryBuilder``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from .. import defaults
from ..api_keys import ApiKeys, require_access_control
from ..connect import ConnectionConfig
from ..encoding.encoder import SpladeEncoder, parse_device
from ..encoding.model_files import CheckpointLayout, read_layout, resolve_checkpoint
from ..encoding.protocol import DocumentEncoder, Encoder
from ..encoding.static_query import StaticQueryEncoder
from ..encoding.windows import WindowPolicy
from ..engines import FieldType, Hybrid, dialect_for
from ..exceptions import ConfigurationError, InputError, ServiceUnavailableError
from ..query import PreparedSearch, QueryBuilder, QueryPruning
from ..sparse import PassageBatch, SparseBatch
from ..tokens import KeyScheme, TokenCodec
from . import rewrite
from .batcher import DocumentBatcher, MicroBatcher, QueueFull
from .embed import EmbedRequest, EmbedRequestError, Kind, passages_answer
from .enrich import EnrichConfig, Enricher, passages_value
from .facts import FactsCache
from .metrics import Metrics
from .upstream import Upstream

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    connection: ConnectionConfig
    model: str = ""
    device: str = defaults.DEVICE
    # How documents longer than one window are encoded (enrich, /_splade/embed/document):
    # truncate or maxpool, one vector per text (encoding/windows.py). None: truncate.
    # Passages follow the index's layout, not this mode: a write to an index whose sparse
    # field holds passages, and an embed request with "passages": true, get one vector per
    # window, cut by this policy's window, overlap and max_windows (``passages_policy``).
    long_documents: WindowPolicy | None = None
    # Run the Python code the checkpoint ships (``SpladeEncoder.from_pretrained``'s option).
    trust_remote_code: bool = False
    max_batch: int = defaults.BATCH_SIZE
    max_wait_ms: float = defaults.MAX_WAIT_MS
    cache_size: int = defaults.QUERY_CACHE_SIZE
    max_body_bytes: int = 100 * MIB  # Elasticsearch's own http.max_content_length default
    facts_ttl: float = 60.0
    max_connections: int = defaults.MAX_CONNECTIONS
    # torch intra-op threads for one text; None leaves torch's default. Fewer threads than
    # cores leaves one for the event loop: on a busy CPU, intra-op threads that lose their
    # core to another process stall every op of a small batch (p90 of one query 3 ms ->
    # 200+ ms), and a lone query gains little from a second thread.
    threads: int | None = None
    # ... and for several texts at once (a micro-batch of queries, documents): their products
    # are large enough to split, and the event loop is waiting for them anyway (32 queries:
    # 31 ms with one thread, 23 ms with two; benchmarks/query_latency.py --batch-sizes 32).
    # None: ``threads``.
    batch_threads: int | None = None
    enrich: EnrichConfig | None = None  # the write path (``serve --enrich``); None: off
    document_batch_size: int = defaults.BATCH_SIZE  # as ``ingest --batch-size``: same batches
    # Texts per model call for documents and long query texts (the bulk lane of batcher.py):
    # a query waits for at most one such call. None: 2 on a CPU (a text of 512 tokens takes
    # ~0.2 s there: benchmarks/serve.py --only hol), 32 on an accelerator, where larger
    # calls raise document throughput and still take milliseconds.
    bulk_batch: int | None = None
    # Per-request limits, each answered in the engines' error shape (README "Limits").
    # Texts one request has encoded: the splade clauses of a search or msearch body, the
    # texts of /_splade/encode, the inputs of /embed_sparse (ES's clause limit is 1024+).
    max_texts: int = 1024
    # ... and their characters together. The model reads a bounded prefix of each text
    # (``SpladeEncoder._token_ids``) except where a text has few tokens per character
    # (whitespace runs, one long word), which this bounds.
    max_text_chars: int = 1_000_000
    max_json_depth: int = rewrite.MAX_DEPTH
    # The proxy's own time for a request: reading its body, waiting for and running the
    # encoder, the cluster's answer (a write's cluster exchange is not cut: see proxy.py).
    max_request_seconds: float = 60.0
    # Per-client limit: requests of one client address in flight at once (middleware.py
    # ``ClientConcurrency``), so one client's flood cannot fill the encoder's queues and the
    # connection pool for everyone. Every app host behind one NAT or load balancer shares an
    # address: raise it there. None: no limit.
    max_client_requests: int | None = defaults.MAX_CLIENT_REQUESTS
    # The document encode queue (batcher.py ``DocumentBatcher``) that /_splade/embed/document
    # requests wait in: documents waiting at most (past that, 429), documents per model call.
    # With ``enrich``, its own sizes apply: writes and embed requests share one queue.
    max_queued_documents: int = defaults.ENRICH_QUEUE_DOCS
    max_batch_documents: int = defaults.ENRICH_BATCH_DOCS
    # Who may call the endpoints that encode (/_splade/embed/*, /_splade/encode,
    # /_splade/query, /embed_sparse): holders of one of these keys (``Authorization: Bearer``);
    # None: anyone who reaches the port (auth.py).
    api_keys: ApiKeys | None = None
    # Where the app listens, when the caller knows (``splade-es serve --listen``): a host
    # other than loopback is refused without ``api_keys``, unless ``allow_unauthenticated``.
    listen_host: str | None = None
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        parse_device(self.device)  # a device this machine lacks is refused before start
        if self.listen_host is not None:
            require_access_control(self.listen_host, self.api_keys, self.allow_unauthenticated)
        if self.max_batch < 1:
            raise ConfigurationError.bad_value("max_batch", self.max_batch, "must be >= 1")
        if self.long_documents is not None and self.long_documents.mode == "passages":
            raise ConfigurationError.bad_value(
                "long_documents",
                "passages",
                "passages follow each index's layout: writes to an index whose sparse field "
                "holds passages (create-index --passages) get them, cut by --window, --overlap "
                "and --max-windows, whatever this says; it says how the documents of the other "
                "indices (and of /_splade/embed/document without passages) are encoded, one "
                "vector per text: truncate or maxpool",
            )
        if self.max_wait_ms < 0:
            raise ConfigurationError.bad_value("max_wait_ms", self.max_wait_ms, "must be >= 0")
        if self.cache_size < 0:
            raise ConfigurationError.bad_value("cache_size", self.cache_size, "must be >= 0")
        for name in (
            "max_body_bytes",
            "max_texts",
            "max_text_chars",
            "max_json_depth",
            "bulk_batch",
            "max_client_requests",
            "max_queued_documents",
            "max_batch_documents",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigurationError.bad_value(name, getattr(self, name), "must be >= 1")
        if not self.max_request_seconds > 0:
            raise ConfigurationError.bad_value(
                "max_request_seconds", self.max_request_seconds, "must be > 0"
            )


class HttpError(InputError):
    """A request the proxy refuses (a missing field, a body too large), answered with
    ``status`` in the cluster's error shape."""

    def __init__(self, status: int, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error_type = error_type
        self.reason = reason


class RequestTimeout(ServiceUnavailableError):
    """The proxy did not finish a request within ``max_request_seconds``: answered 504."""


def check_texts(texts: Sequence[str], config: ServeConfig, what: str = "texts") -> None:
    """``HttpError`` 400 when one request asks for more texts, or more characters, than the
    proxy encodes for one request (``max_texts``, ``max_text_chars``)."""
    if len(texts) > config.max_texts:
        raise HttpError(
            400,
            "illegal_argument_exception",
            f"{len(texts)} {what} to encode in one request, more than the proxy's limit of "
            f"{config.max_texts} (--max-texts)",
        )
    chars = sum(map(len, texts))
    if chars > config.max_text_chars:
        raise HttpError(
            400,
            "illegal_argument_exception",
            f"{what} of {chars} characters in one request, more than the proxy's limit of "
            f"{config.max_text_chars} (--max-text-chars)",
        )


def default_bulk_batch(encoder: object) -> int:
    """``ServeConfig.bulk_batch`` when none is given: 2 texts a call on a CPU, 32 elsewhere."""
    device = getattr(encoder, "device", None)
    return 2 if device is None or device.type == "cpu" else 32


def model_name(name: str) -> str:
    """The model as answers name it: a Hub id as given, a local folder by its base name (its
    path on the serve host is nobody else's business; the log has it).

    >>> model_name("naver/splade-v3"), model_name("/")
    ('naver/splade-v3', '/')
    """
    path = Path(name).expanduser()
    if not path.is_dir():
        return name
    return path.resolve().name or name


def read_checkpoint(model: str) -> CheckpointLayout:
    """``model``'s layout (a Hub id resolved first): read once per serve process."""
    return read_layout(resolve_checkpoint(model))


def load_query_encoder(
    model: str,
    device: str = defaults.DEVICE,
    trust_remote_code: bool = False,
    *,
    layout: CheckpointLayout | None = None,
) -> SpladeEncoder | StaticQueryEncoder:
    """What the query path needs: an inference-free model's token weight table alone (no torch
    model, microseconds a query), or the whole model for a siamese one. ``layout``: the
    model's, when the caller has read it (``read_checkpoint``)."""
    if layout is None:
        layout = read_checkpoint(model)
    if layout.query_files is not None:
        return StaticQueryEncoder.from_files(
            layout.query_files, name=model, trust_remote_code=trust_remote_code
        )
    return SpladeEncoder.from_pretrained(
        model, device=device, trust_remote_code=trust_remote_code, layout=layout
    )


class Service:
    """Everything one serve process holds: model, batcher, upstream, cached index facts."""

    def __init__(
        self,
        config: ServeConfig,
        encoder: Encoder | None = None,
        *,
        layout: CheckpointLayout | None = None,
    ) -> None:
        """``encoder``: the query side, given (``config.model`` is then loaded only for a
        document request, if it is not a ``DocumentEncoder``); ``layout``: ``config.model``'s,
        when the caller has read it (``create_app`` does, to check the model before start)."""
        self.config = config
        self.encoder = encoder
        self.layout = layout
        self._document_encoder: DocumentEncoder | None = None
        # The inference-free query table this service loaded itself: the document side
        # reuses it instead of reading it again.
        self._loaded_query_table: StaticQueryEncoder | None = None
        self.metrics = Metrics()
        self.upstream = Upstream(config.connection, max_connections=config.max_connections)
        self.facts = FactsCache(self.upstream, ttl=config.facts_ttl)
        self.batcher: MicroBatcher | None = None
        self.documents: DocumentBatcher | None = None
        self.enricher: Enricher | None = None
        self._document_lock = asyncio.Lock()
        self._engine_builders: dict[tuple[Any, ...], QueryBuilder] = {}
        self._codecs: dict[KeyScheme, TokenCodec] = {}  # the document side's, embed passages

    def checkpoint_layout(self) -> CheckpointLayout:
        """``config.model``'s layout, read on first use only."""
        if self.layout is None:
            self.layout = read_checkpoint(self.config.model)
        return self.layout

    def _load_query_encoder(self) -> Encoder:
        encoder = load_query_encoder(
            self.config.model,
            self.config.device,
            self.config.trust_remote_code,
            layout=self.checkpoint_layout(),
        )
        if isinstance(encoder, StaticQueryEncoder):
            self._loaded_query_table = encoder
        elif self.config.long_documents is not None:
            # A siamese model is the document side too: documents follow long_documents,
            # queries are truncated whatever it says (encode_queries).
            encoder.long_documents = self.config.long_documents
            encoder.window_policy()  # a bad window is reported at start
        return encoder

    def _load_document_encoder(self) -> SpladeEncoder:
        policy = self.config.long_documents or WindowPolicy()
        return SpladeEncoder.from_pretrained(
            self.config.model,
            device=self.config.device,
            trust_remote_code=self.config.trust_remote_code,
            layout=self.checkpoint_layout(),
            query_encoder=self._loaded_query_table,
            long_documents=policy.mode,
            window=policy.window,
            overlap=policy.overlap,
            max_windows=policy.max_windows,
        )

    @property
    def loaded_encoder(self) -> Encoder:
        """The query-side encoder, once ``start`` has loaded it."""
        assert self.encoder is not None, "Service.start loads the encoder"
        return self.encoder

    async def start(self) -> None:
        if self.encoder is None:
            self.encoder = await asyncio.to_thread(self._load_query_encoder)
        encoder = self.encoder

        def encode_queries(texts: list[str]) -> SparseBatch:
            self.use_threads(encoder, len(texts))
            return encoder.encode_queries(texts, batch_size=max(1, len(texts)))

        self.batcher = MicroBatcher(
            encode_queries,
            max_batch=self.config.max_batch,
            max_wait=self.config.max_wait_ms / 1000,
            cache_size=self.config.cache_size,
            bulk_batch=self.config.bulk_batch or default_bulk_batch(encoder),
            metrics=self.metrics,
        )
        self.batcher.start()
        await self.upstream.start()
        if self.config.enrich is not None:
            await self._start_enrichment(self.config.enrich)
        log.info(
            "serving %s in front of %s (max batch %d, max wait %.1f ms)",
            encoder.name,
            self.upstream.description,
            self.config.max_batch,
            self.config.max_wait_ms,
        )

    def use_threads(self, encoder: object, texts: int) -> None:
        """Set torch's intra-op threads for ``encoder`` to encode ``texts`` texts, on the model
        thread (OpenMP keeps the count per calling thread; setting it costs under a microsecond)."""
        threads = self.config.threads if texts <= 1 else self.config.batch_threads
        threads = threads or self.config.threads
        if threads and isinstance(encoder, SpladeEncoder):
            import torch

            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def encode_documents(
        self, encoder: DocumentEncoder, texts: list[str], **options: Any
    ) -> SparseBatch:
        """Documents on the model thread, with the thread count for their number; those whose
        text was cut counted (``splade_es_documents_truncated``, by the encoder's mode)."""
        self.use_threads(encoder, len(texts))
        batch = encoder.encode_documents(texts, **options)
        if batch.truncated is not None:
            policy = getattr(encoder, "long_documents", None)
            mode = policy.mode if isinstance(policy, WindowPolicy) else "truncate"
            self.metrics.documents_truncated.labels(mode).inc(int(batch.truncated.sum()))
        return batch

    def passages_policy(self, encoder: DocumentEncoder) -> WindowPolicy:
        """How documents of passages indices are cut into windows: ``config.long_documents``'s
        window, overlap and max_windows (the encoder's own when it is None), as passages,
        checked against the model (``ConfigurationError`` naming the option)."""
        if not isinstance(encoder, SpladeEncoder):
            raise ConfigurationError(
                f"the document encoder {type(encoder).__name__} makes no passages"
            )
        base = self.config.long_documents or encoder.long_documents
        return encoder.window_policy(replace(base, mode="passages"))

    def encode_passages(
        self, encoder: DocumentEncoder, texts: list[str], *, batch_size: int
    ) -> PassageBatch:
        """``texts``' passages on the model thread (``passages_policy``; an empty text has
        none), as ``ingest --long-documents passages`` makes them; the documents cut at
        max_windows counted, and the passages."""
        policy = self.passages_policy(encoder)
        assert isinstance(encoder, SpladeEncoder)
        self.use_threads(encoder, len(texts))
        batches = encoder.iter_passages(
            texts, batch_size=batch_size, window=len(texts), empty="empty_vector", policy=policy
        )
        batch = PassageBatch.concat(list(batches))
        self.metrics.documents_truncated.labels("passages").inc(int(batch.truncated.sum()))
        self.metrics.document_passages.inc(len(batch.document))
        return batch

    async def _start_enrichment(self, enrich: EnrichConfig) -> None:
        document_encoder = await self.document_encoder()  # loaded now, not on the first write
        self.documents = self._new_document_queue(
            document_encoder, enrich.max_batch_documents, enrich.max_queued_documents
        )
        self.enricher = Enricher(
            enrich,
            facts=self.facts,
            upstream=self.upstream,
            documents=self.documents,
            vocab=document_encoder.vocab,
            metrics=self.metrics,
        )
        log.info(
            "enriching writes to %s",
            ", ".join(
                f"{r.pattern} ({'+'.join(r.text_fields)} -> {r.sparse_field})" for r in enrich.rules
            ),
        )

    def _new_document_queue(
        self, document_encoder: DocumentEncoder, max_batch: int, max_queued: int
    ) -> DocumentBatcher:
        """The document encode queue, started: documents as ``ingest`` encodes them (its batch
        size, an empty vector for an empty text) on the model thread's bulk lane."""
        assert self.batcher is not None, "Service.start makes the query batcher first"
        batch_size = self.config.document_batch_size
        passages = None
        if isinstance(document_encoder, SpladeEncoder):
            self.passages_policy(document_encoder)  # a window the model cannot read: now
            passages = partial(self.encode_passages, document_encoder, batch_size=batch_size)
        documents = DocumentBatcher(
            lambda texts: self.encode_documents(
                document_encoder, texts, batch_size=batch_size, empty="empty_vector"
            ),
            self.batcher.run_pieces,  # bulk lane, bulk_batch texts a call
            passages=passages,
            max_batch=max_batch,
            max_queued=max_queued,
            metrics=self.metrics,
        )
        documents.start()
        return documents

    async def document_queue(self) -> DocumentBatcher:
        """The document encode queue: ``--enrich``'s (made at start), or one made on the first
        document request (``config.max_*_documents``), with the document encoder it loads."""
        async with self._document_lock:  # two first requests: one queue, one model loaded
            if self.documents is None:
                document_encoder = await self.document_encoder()
                self.documents = self._new_document_queue(
                    document_encoder,
                    self.config.max_batch_documents,
                    self.config.max_queued_documents,
                )
        return self.documents

    async def embed_passages(self, kind: Kind, asked: EmbedRequest) -> Any:
        """``/_splade/embed/document`` with ``"passages": true``: per input, its passages
        (``embed.passages_answer``), cut and encoded as a write to a passages index gets them,
        through the same document queue."""
        if kind != "document":
            raise EmbedRequestError(
                "[passages] is for documents: POST /_splade/embed/document", field="passages"
            )
        queue = await self.document_queue()
        encoder = await self.document_encoder()
        texts = [asked.texts[i] for i in asked.to_encode]
        try:
            encoded = await queue.encode_passages(texts) if texts else []
        except QueueFull:
            self.metrics.embed_rejected.labels("document").inc()
            raise
        codec = self._codecs.get(asked.key_scheme)
        if codec is None:  # one per scheme: building one walks the whole vocabulary
            codec = self._codecs[asked.key_scheme] = TokenCodec(
                encoder.vocab, scheme=asked.key_scheme
            )
        values = [passages_value(codec, passages) for passages in encoded]
        return passages_answer(asked.passages_of(values), asked.format)

    async def stop(self) -> None:
        if self.documents is not None:
            await self.documents.close()
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
    async def document_encoder(self) -> DocumentEncoder:
        """The masked-LM document side. For an inference-free model it is loaded on the first
        document request only: a proxy that translates queries never loads it."""
        if isinstance(self.encoder, SpladeEncoder):
            return self.encoder
        if self._document_encoder is None:
            self._document_encoder = await asyncio.to_thread(self._load_document_encoder)
        return self._document_encoder

    async def query_vectors(self, texts: Sequence[str]) -> list[SparseBatch]:
        assert self.batcher is not None
        return await self.batcher.encode(texts)

    # ------------------------------------------------------------------ rewriting
    async def rewrite_clauses(
        self, sp: rewrite.SearchPath, body: bytes, authorization: str | None
    ) -> tuple[bytes, list[tuple[str | None, str]]] | None:
        """The rewritten body and the (index, field) facts it used; None if nothing to do."""
        if not rewrite.may_have_clause(body):
            return None
        if sp.api == "_msearch" and not body.endswith(b"\n"):
            return None  # the engine refuses it ("must be terminated by a newline"): its answer
        jobs: list[tuple[int, str | None, Any, rewrite.Found]] = []
        depth = self.config.max_json_depth
        if sp.api == "_search":
            parsed = rewrite.parse_json_body(body, max_depth=depth)
            found = rewrite.find_clauses(parsed)
            if found.clauses:
                jobs.append((0, sp.index, parsed, found))
            items: list[rewrite.MsearchItem] = []
        else:
            items = rewrite.split_msearch(body, max_depth=depth)
            for n, item in enumerate(items):
                if not rewrite.may_have_clause(item.body_line):
                    continue
                where = f"msearch item {n + 1}"
                try:
                    parsed = rewrite.parse_json_body(item.body_line, where, max_depth=depth)
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
        check_texts(texts, self.config, "splade clauses")
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

    async def translation(self, spec: dict[str, Any], authorization: str | None) -> dict[str, Any]:
        """``POST /_splade/query``: the search request ``search()`` would send for a text."""
        text = field_of(spec, "text", str)
        if not text.strip():
            raise HttpError(400, "illegal_argument_exception", "[text] must not be empty")
        check_texts([text], self.config, "[text]")
        field = field_of(spec, "field", str, defaults.VECTOR_FIELD)
        pruning = QueryPruning(
            top_k=field_of(spec, "top_k", int, None),
            min_weight=field_of(spec, "min_weight", float, None),
            mass=field_of(spec, "mass", float, None),
        )
        builder = await self._translation_builder(spec, field, authorization)
        hybrid = hybrid_of(spec)
        filters = field_of(spec, "filters", list, [])
        [vector] = await self.query_vectors([text])
        prepared = builder.search_request(
            vector,
            k=field_of(spec, "k", int, defaults.TOP_K),
            text=text,
            filters=filters,
            hybrid=hybrid,
            source=spec.get("source", True),
            pruning=pruning,
        )
        return translation_answer(builder, prepared)

    async def _translation_builder(
        self, spec: dict[str, Any], field: str, authorization: str | None
    ) -> QueryBuilder:
        """The builder for a translation request: an index's (its facts), or a named engine's."""
        index = field_of(spec, "index", str, None)
        if index is not None:
            return await self.facts.builder(index, field, authorization)
        engine = field_of(spec, "engine", str, None)
        version = field_of(spec, "version", str, None)
        if engine is None or version is None:
            raise HttpError(
                400,
                "illegal_argument_exception",
                "give [index], or [engine] and [version] (and [field_type])",
            )
        field_type: FieldType = field_of(spec, "field_type", str, defaults.FIELD_TYPE)
        return self.engine_builder(
            engine, version, field, field_type, field_of(spec, "max_clauses", int, None)
        )


def hybrid_of(spec: dict[str, Any]) -> Hybrid | None:
    """A translation request's ``hybrid`` object as ``Hybrid`` (None when absent)."""
    hybrid_spec = field_of(spec, "hybrid", dict, None)
    if hybrid_spec is None:
        return None
    try:
        if "text_fields" in hybrid_spec:
            hybrid_spec = {**hybrid_spec, "text_fields": tuple(hybrid_spec["text_fields"])}
        return Hybrid(**hybrid_spec)
    except TypeError as exc:
        raise HttpError(400, "illegal_argument_exception", f"[hybrid]: {exc}") from None


def translation_answer(builder: QueryBuilder, prepared: PreparedSearch) -> dict[str, Any]:
    """The body of a ``/_splade/query`` answer."""
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


# ---------------------------------------------------------------------- JSON input helpers
_MISSING = object()


def field_of(spec: dict[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
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


def texts_of(value: Any, *, name: str = "texts") -> list[str]:
    if not isinstance(value, list) or not value:
        raise HttpError(400, "illegal_argument_exception", f"[{name}] must be a non-empty list")
    for i, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise HttpError(
                400, "illegal_argument_exception", f"[{name}][{i}] must be a non-empty string"
            )
    return value
