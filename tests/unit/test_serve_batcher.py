"""The micro-batcher: concurrent texts are encoded together (up to max_batch, within
max_wait), off the event loop, once per distinct text, with an LRU cache in front."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from splade_es.serve.batcher import MicroBatcher
from splade_es.sparse import SparseBatch

VOCAB = [f"t{i}" for i in range(100)]


class RecordingEncoder:
    """Encodes a text as one token (its length) and records every batch and its thread."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self._event = threading.Event()

    def __call__(self, texts: list[str]) -> SparseBatch:
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            self._event.wait(self.delay)
        rows = [([len(t)], [float(len(t))]) for t in texts]
        return SparseBatch.from_rows(rows, vocab=VOCAB)


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(encoder, body, **options):
    batcher = MicroBatcher(encoder, **options)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.close()


def test_concurrent_texts_share_batches_and_results_stay_in_order():
    encoder = RecordingEncoder(delay=0.02)

    async def body(batcher):
        texts = [f"text {'x' * i}" for i in range(40)]
        results = await asyncio.gather(*(batcher.encode([t]) for t in texts))
        return texts, results

    texts, results = run(_with_batcher(encoder, body, max_batch=16, max_wait=0.01))
    for text, [row] in zip(texts, results, strict=True):
        ids, weights = row.row(0)
        assert ids.tolist() == [len(text)] and weights.tolist() == [float(len(text))]
    sizes = [len(b) for b in encoder.batches]
    assert sum(sizes) == 40
    assert max(sizes) == 16  # capped at max_batch
    assert len(sizes) <= 5  # 40 texts in few batches, not 40 one-text calls
    assert encoder.threads == {"splade-encode_0"}  # one worker thread, never the loop's


def test_max_batch_one_encodes_each_text_alone():
    encoder = RecordingEncoder(delay=0.005)

    async def body(batcher):
        await asyncio.gather(*(batcher.encode([f"q{i}"]) for i in range(10)))

    run(_with_batcher(encoder, body, max_batch=1, max_wait=0.01))
    assert [len(b) for b in encoder.batches] == [1] * 10


def test_a_lone_request_does_not_wait():
    encoder = RecordingEncoder()

    async def body(batcher):
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(5):  # one client, one request at a time
            await batcher.encode([f"q{i}"])
        return loop.time() - started

    elapsed = run(_with_batcher(encoder, body, max_batch=32, max_wait=0.5))
    assert elapsed < 0.5  # five sequential requests never paid the 0.5 s batch wait
    assert [len(b) for b in encoder.batches] == [1] * 5


def test_under_load_a_batch_waits_up_to_max_wait_for_more_texts():
    encoder = RecordingEncoder()

    async def body(batcher):
        await asyncio.gather(batcher.encode(["a1"]), batcher.encode(["a2"]))  # load seen

        async def later(text, delay):
            await asyncio.sleep(delay)
            return await batcher.encode([text])

        await asyncio.gather(later("b1", 0), later("b2", 0.02), later("b3", 0.04))

    run(_with_batcher(encoder, body, max_batch=8, max_wait=0.2))
    assert encoder.batches[-1] == ["b1", "b2", "b3"]  # gathered within max_wait


def test_cache_hits_and_duplicates_are_not_encoded_again():
    encoder = RecordingEncoder(delay=0.01)

    async def body(batcher):
        first = await asyncio.gather(*(batcher.encode(["same"]) for _ in range(5)))
        again = await batcher.encode(["same", "other"])
        return batcher, first, again

    batcher, first, again = run(_with_batcher(encoder, body, max_batch=8, cache_size=10))
    assert [t for b in encoder.batches for t in b] == ["same", "other"]
    assert np.array_equal(again[0].indices, first[0][0].indices)  # served from the cache
    assert all(np.array_equal(r[0].indices, first[0][0].indices) for r in first)
    metrics = batcher.metrics.exposition().decode()
    assert "splade_es_query_cache_hits_total 1.0" in metrics
    assert "splade_es_query_cache_misses_total 6.0" in metrics
    assert "splade_es_batch_size_count 2.0" in metrics


def test_lru_cache_evicts_the_least_recently_used():
    encoder = RecordingEncoder()

    async def body(batcher):
        for text in ["a", "b", "a", "c", "a", "b"]:  # b evicted by c; a kept warm
            await batcher.encode([text])

    run(_with_batcher(encoder, body, cache_size=2))
    assert [t for b in encoder.batches for t in b] == ["a", "b", "c", "b"]


def test_an_encoding_error_reaches_every_waiting_request():
    def failing(texts):
        raise RuntimeError("model exploded")

    async def body(batcher):
        return await asyncio.gather(
            *(batcher.encode([f"q{i}"]) for i in range(3)), return_exceptions=True
        )

    results = run(_with_batcher(failing, body))
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


def test_close_finishes_waiting_texts():
    encoder = RecordingEncoder(delay=0.01)

    async def body():
        batcher = MicroBatcher(encoder, max_batch=2)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.encode([f"q{i}"])) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        with pytest.raises(RuntimeError, match="shutting down"):
            await batcher.encode(["late"])
        return await asyncio.gather(*pending)

    results = run(body())
    assert len(results) == 5 and sum(len(b) for b in encoder.batches) == 5


def test_one_text_and_several_get_their_own_torch_threads(tiny_bert_dir):
    """A lone query keeps to ``threads`` (a core stays with the event loop); a micro-batch or
    documents use ``batch_threads``. Set on the model thread itself: OpenMP keeps the count
    per calling thread."""
    import torch

    from splade_es import SpladeEncoder
    from splade_es.connect import ConnectionConfig
    from splade_es.serve.service import ServeConfig, Service

    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    config = ServeConfig(
        connection=ConnectionConfig(hosts=("http://127.0.0.1:9",)), threads=1, batch_threads=2
    )
    service = Service(config, encoder)
    seen: list[int] = []

    def model_thread() -> None:
        service.use_threads(encoder, 1)
        seen.append(torch.get_num_threads())
        service.use_threads(encoder, 32)
        seen.append(torch.get_num_threads())
        service.encode_documents(encoder, ["one document"])
        seen.append(torch.get_num_threads())
        service.encode_documents(encoder, ["two", "documents"])
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=model_thread)
    worker.start()
    worker.join()
    assert seen == [1, 2, 1, 2]
