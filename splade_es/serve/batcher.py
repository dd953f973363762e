"""Micro-batching in front of the encoder: concurrent requests' texts are encoded together.

A batch closes when it holds ``max_batch`` texts or ``max_wait`` after it opened. The wait is
skipped while the load is light (the previous batch held one text): a lone client pays no
delay, and under concurrent load batches fill up (texts also gather on their own while the
model is busy). ``max_batch=1`` encodes every text on its own.

The model runs on one worker thread, created once, so the event loop never blocks on torch
and the model is never entered twice at a time. An LRU cache keeps recent query vectors
(identical texts in one batch are encoded once).

No head-of-line blocking (``ModelThread``): the thread serves two lanes, query micro-batches
and bulk work (documents, and query texts over ``LONG_TEXT`` characters), the bulk in pieces
of at most ``bulk_batch`` texts. When both lanes have work they take turns, so a query batch
waits for at most one bulk piece however many large texts or documents are queued, and bulk
work still advances under a steady stream of queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from .. import defaults
from ..exceptions import ConfigurationError, OverloadedError, ShuttingDownError
from ..sparse import PassageBatch, SparseBatch
from .metrics import Metrics

T = TypeVar("T")
B = TypeVar("B", SparseBatch, PassageBatch)
EncodeFn = Callable[[list[str]], SparseBatch]
PassagesFn = Callable[[list[str]], PassageBatch]
Row = tuple[np.ndarray, np.ndarray]
# One passage of a document (long_documents="passages"): its vector's ids and weights, and
# the [start, end) character span of its window in the text.
PassageRow = tuple[np.ndarray, np.ndarray, int, int]


Lane = Literal["queries", "bulk"]
# A query text longer than this goes to the bulk lane: its forward pass (up to the model's
# max_length tokens) costs as much as a document's. Typical queries are under 100 characters.
LONG_TEXT = 256


@dataclass
class _Job:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class ModelThread:
    """The one thread the model runs on, serving the query lane and the bulk lane in turn
    (a query lane job first whenever the last job was bulk)."""

    # The name the one-thread executor it replaces gave it (thread dumps, tests know it).
    def __init__(self, name: str = "splade-encode_0") -> None:
        self._lanes: dict[Lane, deque[_Job]] = {"queries": deque(), "bulk": deque()}
        self._ready = threading.Condition()
        self._last: Lane = "bulk"
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    async def run(self, lane: Lane, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the model thread, in ``lane``'s turn."""
        loop = asyncio.get_running_loop()
        job = _Job(func, args, loop, loop.create_future())
        with self._ready:
            if self._closing:
                raise ShuttingDownError("the encoder is shutting down")
            if not self._thread.is_alive():  # started by the first job
                self._thread.start()
            self._lanes[lane].append(job)
            self._ready.notify()
        return await job.future

    def shutdown(self) -> None:
        """Finish the jobs already queued, then stop the thread."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _next(self) -> _Job | None:
        with self._ready:
            while not any(self._lanes.values()):
                if self._closing:
                    return None
                self._ready.wait()
            queries, bulk = self._lanes["queries"], self._lanes["bulk"]
            lane: Lane = "queries" if queries and (self._last == "bulk" or not bulk) else "bulk"
            self._last = lane
            return self._lanes[lane].popleft()

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            if job.future.cancelled():  # its request gave up (a deadline) before it ran
                continue
            try:
                result, error = job.func(*job.args), None
            except BaseException as exc:  # handed to the waiting request, like an executor
                result, error = None, exc
            job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@dataclass
class _Waiting:
    text: str
    future: asyncio.Future


@dataclass
class _Queue:
    """Texts waiting for one lane of the model thread, and how they are batched."""

    lane: Lane
    max_batch: int
    waiting: list[_Waiting] = field(default_factory=list)
    has_work: asyncio.Event = field(default_factory=asyncio.Event)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    last_batch: int = 1


class MicroBatcher:
    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch: int = defaults.BATCH_SIZE,
        max_wait: float = defaults.MAX_WAIT_MS / 1000,
        cache_size: int = defaults.QUERY_CACHE_SIZE,
        bulk_batch: int = 2,
        metrics: Metrics | None = None,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("bulk_batch", bulk_batch)):
            if value < 1:
                raise ConfigurationError.bad_value(name, value, "must be >= 1")
        if max_wait < 0:
            raise ConfigurationError.bad_value("max_wait", max_wait, "must be >= 0")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.cache_size = cache_size
        self.bulk_batch = bulk_batch
        self.metrics = metrics or Metrics()
        self._cache: OrderedDict[str, SparseBatch] = OrderedDict()
        self._short = _Queue("queries", max_batch)
        self._long = _Queue("bulk", bulk_batch)
        self._closing = False
        self._worker = ModelThread()
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._collect(q)) for q in (self._short, self._long)]

    async def close(self) -> None:
        """Encode what is already waiting, then stop the worker thread."""
        self._closing = True
        for queue in (self._short, self._long):
            queue.has_work.set()
        for task in self._tasks:
            await task
        await asyncio.to_thread(self._worker.shutdown)

    # ------------------------------------------------------------------ API
    async def encode(self, texts: Sequence[str]) -> list[SparseBatch]:
        """One-row query vectors for ``texts``, in order (cached ones straight away)."""
        if self._closing:
            raise ShuttingDownError("the encoder is shutting down")
        loop = asyncio.get_running_loop()
        results: list[Any] = []
        hits = 0
        for text in texts:
            cached = self._cache.get(text)
            if cached is not None and self.cache_size:
                self._cache.move_to_end(text)
                results.append(cached)
                hits += 1
                continue
            future = loop.create_future()
            queue = self._long if len(text) > LONG_TEXT else self._short
            queue.waiting.append(_Waiting(text, future))
            queue.has_work.set()
            if len(queue.waiting) >= queue.max_batch:
                queue.full.set()
            results.append(future)
        self.metrics.cache_lookups(hits, len(texts) - hits)
        return [r if isinstance(r, SparseBatch) else await r for r in results]

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on the model thread's bulk lane (document encoding, say): keep
        each call to about ``bulk_batch`` texts (``run_pieces``), queries wait for one."""
        return await self._worker.run("bulk", func, *args)

    async def run_pieces(self, func: Callable[[list[str]], B], texts: Sequence[str]) -> B:
        """``func`` over ``texts`` on the bulk lane, ``bulk_batch`` texts a call, rows (or
        documents' passages) in order: queries take their turn between the calls."""
        texts = list(texts)
        pieces = [
            await self.run(func, texts[i : i + self.bulk_batch])
            for i in range(0, len(texts), self.bulk_batch)
        ]
        if not pieces:
            raise ConfigurationError("run_pieces needs at least one text")
        return type(pieces[0]).concat(pieces)

    # ------------------------------------------------------------------ batching
    async def _collect(self, queue: _Queue) -> None:
        while True:
            while not queue.waiting:
                if self._closing:
                    return
                queue.has_work.clear()
                await queue.has_work.wait()
            if (
                queue.last_batch > 1
                and len(queue.waiting) < queue.max_batch
                and self.max_wait > 0
                and not self._closing
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.full.wait(), self.max_wait)
            batch = queue.waiting[: queue.max_batch]
            del queue.waiting[: queue.max_batch]
            queue.full.clear()
            if batch:
                queue.last_batch = len(batch)
                await self._run_batch(queue.lane, batch)

    async def _run_batch(self, lane: Lane, batch: list[_Waiting]) -> None:
        unique = list(dict.fromkeys(w.text for w in batch))
        started = time.perf_counter()
        try:
            vectors = await self._worker.run(lane, self._encode, unique)
        except Exception as exc:  # every waiting request gets the error, none hangs
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        self.metrics.encode_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(unique))
        rows = {text: _row(vectors, i) for i, text in enumerate(unique)}
        for text, row in rows.items():
            self._remember(text, row)
        for waiting in batch:
            if not waiting.future.done():  # its request may have been cancelled
                waiting.future.set_result(rows[waiting.text])

    def _remember(self, text: str, row: SparseBatch) -> None:
        if not self.cache_size:
            return
        self._cache[text] = row
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _row(batch: SparseBatch, i: int) -> SparseBatch:
    truncated = None if batch.truncated is None else batch.truncated[i : i + 1]
    return SparseBatch.from_rows([batch.row(i)], vocab=batch.vocab, truncated=truncated)


class QueueFull(OverloadedError):
    """More documents are waiting to be encoded than the queue holds: answered 429."""


@dataclass
class _DocumentJob:
    texts: list[str]
    future: asyncio.Future
    passages: bool = False  # each text's passages (list[PassageRow]) instead of one Row
    rows: list[Any] = field(default_factory=list)  # encoded so far, in order


class DocumentBatcher:
    """The write path's encoder queue: the documents of concurrent requests are encoded
    together, up to ``max_batch`` texts a call, on the model thread ``run`` provides (the
    query batcher's, so queries and documents never run the model at the same time).

    The queue is bounded in documents: ``encode`` raises ``QueueFull`` when admitting a
    request would pass ``max_queued`` (a request is always admitted into an empty queue,
    however large), so an overloaded proxy answers 429 instead of buffering without bound.
    Inside one call the encoder sorts texts by length and splits them under its token budget.

    ``encode_passages`` (given ``passages``, the encoder's ``encode_passages``): each text's
    passages, for an index whose sparse field holds them. Such documents wait in the same
    queue, under the same bound; one model call encodes documents of one kind, the oldest
    waiting request's.
    """

    def __init__(
        self,
        encode: EncodeFn,
        run: Callable[..., Any],
        *,
        passages: PassagesFn | None = None,
        max_batch: int = defaults.ENRICH_BATCH_DOCS,
        max_queued: int = defaults.ENRICH_QUEUE_DOCS,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1:
            raise ConfigurationError.bad_value("max_batch", max_batch, "must be >= 1")
        if max_queued < 1:
            raise ConfigurationError.bad_value("max_queued", max_queued, "must be >= 1")
        self._encode = encode
        self._passages = passages
        self._run = run
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.metrics = metrics or Metrics()
        self.queued = 0  # documents admitted and not yet encoded
        self._jobs: list[_DocumentJob] = []
        self._has_work = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.metrics.enrich_queue_depth.set_function(lambda: self.queued)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def close(self) -> None:
        self._closing = True
        self._has_work.set()
        if self._task is not None:
            await self._task

    async def encode(self, texts: Sequence[str]) -> list[Row]:
        """Document vectors for ``texts``: (vocabulary ids, weights), row for row."""
        rows: list[Row] = await self._submit(texts, passages=False)
        return rows

    async def encode_passages(self, texts: Sequence[str]) -> list[list[PassageRow]]:
        """Each text's passages, in text order: (ids, weights, start, end) per window (none
        for an empty text)."""
        if self._passages is None:
            raise ConfigurationError("this document queue encodes no passages")
        documents: list[list[PassageRow]] = await self._submit(texts, passages=True)
        return documents

    async def _submit(self, texts: Sequence[str], *, passages: bool) -> Any:
        if self._closing:
            raise ShuttingDownError("the encoder is shutting down")
        if self.queued and self.queued + len(texts) > self.max_queued:
            raise QueueFull(
                f"{self.queued} documents are waiting to be encoded (queue of "
                f"{self.max_queued}): retry later"
            )
        job = _DocumentJob(list(texts), asyncio.get_running_loop().create_future(), passages)
        self.queued += len(texts)
        self._jobs.append(job)
        self._has_work.set()
        try:
            return await job.future
        finally:
            if not job.future.done():  # cancelled before it ran: no longer waiting
                job.future.cancel()

    async def _collect(self) -> None:
        while True:
            while not self._jobs:
                if self._closing:
                    return
                self._has_work.clear()
                await self._has_work.wait()
            # Up to max_batch texts from the waiting jobs of the oldest one's kind, in order;
            # a large job is encoded in several calls, so queries (same model thread) get
            # their turn in between.
            taken: list[tuple[_DocumentJob, int, int]] = []  # job, first text, end
            size = 0
            passages = self._jobs[0].passages
            for job in self._jobs:
                if size >= self.max_batch:
                    break
                if job.passages != passages:
                    continue
                start = len(job.rows)
                end = min(len(job.texts), start + self.max_batch - size)
                taken.append((job, start, end))
                size += end - start
            texts = [t for job, start, end in taken for t in job.texts[start:end]]
            started = time.perf_counter()
            rows: list[Any]
            try:
                if passages:
                    assert self._passages is not None
                    rows = passage_rows(await self._run(self._passages, texts))
                else:
                    vectors = await self._run(self._encode, texts)
                    rows = [vectors.row(i) for i in range(len(texts))]
            except Exception as exc:  # every waiting request gets the error, none hangs
                for job, _, _ in taken:
                    self._finish(job, exc)
                continue
            self.metrics.enrich_encode_seconds.observe(time.perf_counter() - started)
            offset = 0
            for job, start, end in taken:
                job.rows.extend(rows[offset : offset + end - start])
                offset += end - start
                self.queued -= end - start
                if len(job.rows) == len(job.texts):
                    self._finish(job, None)

    def _finish(self, job: _DocumentJob, error: Exception | None) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
            self.queued -= len(job.texts) - len(job.rows)
        if not job.future.done():
            if error is None:
                job.future.set_result(job.rows)
            else:
                job.future.set_exception(error)


def passage_rows(batch: PassageBatch) -> list[list[PassageRow]]:
    """Per document of ``batch``, its passages: (ids, weights, start, end) in text order."""
    spans = batch.spans.tolist()
    return [
        [(*batch.passages.row(p), *spans[p]) for p in batch.passage_range(d)]
        for d in range(len(batch))
    ]
