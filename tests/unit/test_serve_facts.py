"""The proxy's cache of index facts and write targets stays bounded however many indices apps
name, and still answers repeated names from memory."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from splade_es.serve import facts


def test_facts_and_write_targets_keep_only_the_most_recent(monkeypatch):
    monkeypatch.setattr(facts, "MAX_CACHED", 3)
    cache = facts.FactsCache(upstream=None)
    reads: list[str] = []

    async def read(index, field, authorization):
        reads.append(index)
        return SimpleNamespace(read_at=time.monotonic(), builder=index)

    async def read_target(name, field, authorization):
        reads.append(name)
        return SimpleNamespace(read_at=time.monotonic(), index=name)

    cache._read = read
    cache._read_target = read_target

    async def scenario() -> None:
        for day in range(10):  # one index a day, as time-based indices go
            await cache.facts(f"logs-{day}", "splade")
            await cache.write_target(f"logs-{day}", "splade")
        assert [index for index, _ in cache._facts] == ["logs-7", "logs-8", "logs-9"]
        assert [name for name, _ in cache._targets] == ["logs-7", "logs-8", "logs-9"]
        before = len(reads)
        await cache.facts("logs-9", "splade")  # still cached: no read
        await cache.write_target("logs-8", "splade")
        assert len(reads) == before
        await cache.facts("logs-0", "splade")  # evicted long ago: read again
        assert reads[-1] == "logs-0" and len(cache._facts) == 3

    asyncio.run(scenario())
