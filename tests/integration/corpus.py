"""Small corpora for integration tests, encoded and bulk-indexed with the official helpers."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from splade_es.sparse import SparseBatch
from splade_es.tokens import TokenCodec
from tests.conftest import WORDS

TOPICAL = [w for w in WORDS if len(w) > 3]


def make_documents(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = rng.sample(TOPICAL, 6) + rng.sample(WORDS, 4)
        docs.append(
            {
                "id": f"doc-{i}",
                "title": " ".join(words[:3]),
                "text": " ".join(words),
                "lang": "en" if i % 2 == 0 else "fr",
            }
        )
    return docs


def document_text(doc: dict[str, Any]) -> str:
    return f"{doc['title']} {doc['text']}"


def bulk_index(
    client: Any,
    index: str,
    docs: Sequence[dict[str, Any]],
    vectors: SparseBatch,
    codec: TokenCodec,
    *,
    field: str = "splade",
) -> None:
    """Index ``docs`` with their vectors; refresh so they are searchable at once."""
    if type(client).__module__.startswith("opensearchpy"):
        from opensearchpy import helpers
    else:
        from elasticsearch import helpers
    actions = (
        {"_index": index, "_id": doc["id"], "_source": {**doc, field: codec.encode(vectors, i)}}
        for i, doc in enumerate(docs)
    )
    ok, errors = helpers.bulk(client, actions, refresh=True, raise_on_error=False)
    assert not errors, errors[:3]
    assert ok == len(docs)
