"""Micro-batching in front of the encoder: concurrent requests' texts are encoded together.

A batch closes when it holds ``max_batch`` texts or ``max_wait`` after it opened. The wait is
skipped while the load is light (the previous batch held one text): a lone client pays no
delay, and under concurrent load batches fill up (texts also gather on their own while the
model is busy). ``max_batch=1`` encodes every text on its own.

The model runs on one worker thread, created once, so the event loop never blocks on torch
and the model is never entered twice at a time. An LRU cache keeps recent query vectors
(identical texts in one batch are encoded once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..sparse import SparseBatch
from .metrics import Metrics

T = TypeVar("T")
EncodeFn = Callable[[list[str]], SparseBatch]


@dataclass
class _Waiting:
    text: str
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch: int = 32,
        max_wait: float = 0.002,
        cache_size: int = 10_000,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.cache_size = cache_size
        self.metrics = metrics or Metrics()
        self._cache: OrderedDict[str, SparseBatch] = OrderedDict()
        self._waiting: list[_Waiting] = []
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._last_batch = 1
        self._closing = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splade-encode")
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def close(self) -> None:
        """Encode what is already waiting, then stop the worker thread."""
        self._closing = True
        self._has_work.set()
        if self._task is not None:
            await self._task
        self._worker.shutdown(wait=True)

    # ------------------------------------------------------------------ API
    async def encode(self, texts: Sequence[str]) -> list[SparseBatch]:
        """One-row query vectors for ``texts``, in order (cached ones straight away)."""
        if self._closing:
            raise RuntimeError("the encoder is shutting down")
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
            self._waiting.append(_Waiting(text, future))
            results.append(future)
        self.metrics.cache_lookups(hits, len(texts) - hits)
        if hits < len(texts):
            self._has_work.set()
            if len(self._waiting) >= self.max_batch:
                self._full.set()
        return [r if isinstance(r, SparseBatch) else await r for r in results]

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on the model thread (document encoding, for instance)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    # ------------------------------------------------------------------ batching
    async def _collect(self) -> None:
        while True:
            while not self._waiting:
                if self._closing:
                    return
                self._has_work.clear()
                await self._has_work.wait()
            if (
                self._last_batch > 1
                and len(self._waiting) < self.max_batch
                and self.max_wait > 0
                and not self._closing
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            self._full.clear()
            if batch:
                self._last_batch = len(batch)
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        unique = list(dict.fromkeys(w.text for w in batch))
        started = time.perf_counter()
        try:
            vectors = await self.run(self._encode, unique)
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
