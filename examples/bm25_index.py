"""A plain BM25 index (no vectors) from a JSONL file: something for ``splade-es migrate`` to
migrate. The cluster comes from SPLADE_ES_URL, as for the ``splade-es`` commands.

    python examples/bm25_index.py docs-bm25 examples/sample.jsonl
"""

from __future__ import annotations

import json
import os
import sys

from splade_es import ConnectionConfig, connect

MAPPING = {
    "mappings": {
        "properties": {
            "title": {"type": "text"},
            "text": {"type": "text"},
            "lang": {"type": "keyword"},
        }
    }
}


def main(index: str, path: str) -> None:
    url = os.environ.get("SPLADE_ES_URL", "http://localhost:9200")
    client = connect(ConnectionConfig.from_urls(url)).client
    client.indices.create(index=index, body=MAPPING)
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                doc = json.loads(line)
                client.index(index=index, id=doc.pop("_id"), body=doc)
    client.indices.refresh(index=index)
    print(f"{index}: {client.count(index=index)['count']} documents")


if __name__ == "__main__":
    main(*sys.argv[1:3])
