"""An existing index as an ingestion source: every document, read consistently.

A point-in-time reader paged with ``search_after`` (sorted by the ``_shard_doc`` tiebreaker)
where the engine has one, a scroll otherwise; ``slices`` readers run in parallel threads.
Each hit becomes a ``Record`` whose document is the whole ``_source`` (vector fields included,
``Dialect.full_source``) plus its ``_id``.

``source=False`` reads ids only (the catch-up passes of a live migration compare id sets).
``read_shard_changes`` reads one shard's documents written after a sequence number: what a
catch-up pass re-copies.

``skip_existing`` drops the records whose ``_id`` is already in a target index: a resumed
migration re-reads the source but encodes and writes only what is missing.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from .. import defaults
from ..connect import call
from ..engines import Dialect
from .sources import Record

ReadMethod = Literal["auto", "pit", "scroll"]
_DONE = object()


def read_index(
    client: Any,
    index: str,
    *,
    dialect: Dialect,
    slices: int = 1,
    page_size: int = defaults.PAGE_SIZE,
    keep_alive: str = defaults.KEEP_ALIVE,
    method: ReadMethod = "auto",
    source: Any = None,
) -> Iterator[Record]:
    """Records of every document in ``index`` (positions 1, 2, ... in arrival order).
    ``source``: the ``_source`` spec (default: every field, ``Dialect.full_source``; ``False``
    reads ids only, each record's document is then ``{"_id": ...}``).

    ``method="pit"`` on a version without the ``_shard_doc`` tiebreaker is refused: paging a
    point in time by ``_doc`` alone can skip or repeat documents across shards.
    """
    sort = dialect.check_pit_reader() if method == "pit" else dialect.pit_sort()
    use_pit = method == "pit" or (method == "auto" and sort is not None)
    source = dialect.full_source() if source is None else source
    pages: queue.Queue[Any] = queue.Queue(maxsize=max(2, slices * 2))
    pit_id = (
        call(lambda: dialect.open_pit(client, index, keep_alive), f"opening {index}")
        if use_pit
        else None
    )

    def reader(slice_id: int) -> None:
        try:
            if pit_id is not None:
                assert sort is not None  # a point in time is only opened with a sort
                _read_pit(
                    client, pit_id, sort, source, slice_id, slices, page_size, keep_alive, pages
                )
            else:
                body = {"size": page_size, "sort": ["_doc"], "_source": source}
                if slices > 1:
                    body["slice"] = {"id": slice_id, "max": slices}
                for page in _scroll_pages(client, index, body, keep_alive):
                    pages.put(page)
            pages.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            pages.put(exc)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(slices)]
    for thread in threads:
        thread.start()
    position, finished = 0, 0
    try:
        while finished < slices:
            item = pages.get()
            if item is _DONE:
                finished += 1
                continue
            if isinstance(item, BaseException):
                raise item
            for hit in item:
                position += 1
                yield Record(position, {**(hit.get("_source") or {}), "_id": hit["_id"]})
    finally:
        if pit_id is not None:
            with contextlib.suppress(Exception):  # an expired reader needs no closing
                dialect.close_pit(client, pit_id)


def _read_pit(client, pit_id, sort, source, slice_id, slices, page_size, keep_alive, out) -> None:  # noqa: ANN001
    search_after = None
    while True:
        body: dict[str, Any] = {
            "pit": {"id": pit_id, "keep_alive": keep_alive},
            "sort": sort,
            "size": page_size,
            "track_total_hits": False,
            "_source": source,
        }
        if slices > 1:
            body["slice"] = {"id": slice_id, "max": slices}
        if search_after is not None:
            body["search_after"] = search_after
        response = call(lambda body=body: client.search(body=body), "reading the source index")
        hits = response["hits"]["hits"]
        if not hits:
            return
        out.put(hits)
        pit_id = response.get("pit_id", pit_id)
        search_after = hits[-1]["sort"]


def read_shard_changes(
    client: Any,
    index: str,
    shard: int,
    after: int,
    *,
    dialect: Dialect,
    page_size: int = defaults.PAGE_SIZE,
    keep_alive: str = defaults.KEEP_ALIVE,
) -> Iterator[Record]:
    """Whole documents of shard ``shard`` whose ``_seq_no`` is above ``after``: every document
    written (created or updated) there since that sequence number was reached.

    Sequence numbers are per shard, hence one scroll per shard, pinned with the
    ``_shards:<n>`` preference (a point in time cannot take a preference). ``_seq_no`` is an
    indexed metadata field that range queries accept on both engines.
    """
    body = {
        "size": page_size,
        "sort": ["_doc"],
        "_source": dialect.full_source(),
        "query": changed_since(after),
    }
    position = 0
    for page in _scroll_pages(client, index, body, keep_alive, preference=f"_shards:{shard}"):
        for hit in page:
            position += 1
            yield Record(position, {**(hit.get("_source") or {}), "_id": hit["_id"]})


def changed_since(after: int) -> dict[str, Any]:
    """The query for documents written after sequence number ``after`` (-1: all). Pure."""
    return {"range": {"_seq_no": {"gt": after}}}


def _scroll_pages(
    client: Any, index: str, body: dict[str, Any], keep_alive: str, *, preference: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    params: dict[str, Any] = {"preference": preference} if preference else {}
    response = call(
        lambda: client.search(index=index, scroll=keep_alive, body=body, **params),
        f"reading {index}",
    )
    scroll_id = response.get("_scroll_id")
    try:
        while response["hits"]["hits"]:
            yield response["hits"]["hits"]
            response = call(
                lambda sid=scroll_id: client.scroll(scroll_id=sid, scroll=keep_alive),
                f"reading {index}",
            )
            scroll_id = response.get("_scroll_id", scroll_id)
    finally:
        if scroll_id:
            with contextlib.suppress(Exception):  # expired already
                client.clear_scroll(scroll_id=scroll_id)


def skip_existing(
    client: Any,
    index: str,
    records: Iterable[Record],
    *,
    batch: int = 500,
    skipped: list[int] | None = None,
) -> Iterator[Record]:
    """``records`` minus those whose ``_id`` is already in ``index`` (one mget per batch).
    The count of skipped records is appended to ``skipped`` when given."""
    pending: list[Record] = []

    def flush() -> Iterator[Record]:
        ids = [str(r.doc["_id"]) for r in pending if r.doc and "_id" in r.doc]
        found: set[str] = set()
        if ids:
            response = call(
                lambda: client.mget(index=index, body={"ids": ids}, _source=False),
                f"checking {index}",
            )
            found = {d["_id"] for d in response["docs"] if d.get("found")}
        for record in pending:
            if record.doc and str(record.doc.get("_id")) in found:
                if skipped is not None:
                    skipped.append(record.position)
                continue
            yield record
        pending.clear()

    for record in records:
        pending.append(record)
        if len(pending) >= batch:
            yield from flush()
    yield from flush()
