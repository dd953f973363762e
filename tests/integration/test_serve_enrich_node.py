"""``splade-es serve --enrich`` under the official Node.js clients' bulk helpers
(``client.helpers.bulk`` of ``@opensearch-project/opensearch`` and ``@elastic/elasticsearch``):
small bulks several at a time, one bad document among them. The helper counts every good
document as indexed and hands the bad one to ``onDrop`` with the proxy's per-item 400; the
cluster holds the vectors ``splade-es ingest`` writes, and not the bad document. Skipped, with
the reason, without node/npm (the ``node_clients`` fixture installs the clients)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from splade_es import SpladeEncoder, create_index
from tests.integration.corpus import make_documents
from tests.integration.serve_support import StubServer, forward_to, running_proxy
from tests.integration.test_serve_enrich import (
    assert_same_vectors,
    enrich,
    ingested_vectors,
    stored,
)
from tests.integration.test_serve_node import node_clients  # noqa: F401 (fixture: npm ci or skip)

pytestmark = pytest.mark.integration

N_DOCS = 200
BAD = 137  # the document whose `text` is a number


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture(scope="module")
def bulk_script(node_clients: Path) -> Path:  # noqa: F811 (the imported fixture)
    return node_clients.parent / "bulk.mjs"


def run_bulk_helper(script: Path, kind: str, url: str, index: str, docs_file: Path) -> dict:
    done = subprocess.run(
        ["node", str(script), kind, url, index, str(docs_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["opensearch", "elasticsearch"])
def test_node_bulk_helper_drops_only_the_bad_document(
    cluster, index_name, encoder, bulk_script, tmp_path, kind
):
    create_index(cluster.client, index_name, replicas=0)
    docs = make_documents(N_DOCS, seed=11)
    bad_id = docs[BAD]["id"]
    docs[BAD] = {**docs[BAD], "text": 42}
    docs_file = tmp_path / "docs.json"
    docs_file.write_text(json.dumps(docs))
    rules = enrich("splade-es-test-*")
    if kind == "opensearch":
        with running_proxy(cluster.url, encoder, enrich=rules) as app:
            out = run_bulk_helper(bulk_script, kind, app.state.url, index_name, docs_file)
    else:
        # The Elasticsearch client sends versioned media types and checks the product
        # header: a gate between proxy and cluster reads them as plain JSON and answers it,
        # as Elasticsearch does (see serve_support.forward_to).
        with (
            StubServer(forward_to(cluster.url, plain_json=True)) as gate,
            running_proxy(gate.url, encoder, enrich=rules) as app,
        ):
            out = run_bulk_helper(bulk_script, kind, app.state.url, index_name, docs_file)

    assert out["bulks"] > 1  # several bulk requests, not one that held everything
    assert not out["aborted"]
    assert (out["total"], out["successful"], out["failed"]) == (N_DOCS, N_DOCS - 1, 1)
    [drop] = out["dropped"]
    assert drop["id"] == bad_id and drop["status"] == 400
    assert drop["document"] == docs[BAD]  # the helper matched the item to its document
    reason = drop["error"]["reason"]
    assert f"document [{bad_id}]" in reason and "'text'" in reason, reason

    copies = stored(cluster, index_name)
    good = [d for d in docs if d["id"] != bad_id]
    assert sorted(copies) == sorted(d["id"] for d in good)  # the bad one is absent
    want = ingested_vectors(cluster, index_name, encoder, good)
    for doc in good:
        copy = copies[doc["id"]]
        assert {k: v for k, v in copy.items() if k != "splade"} == doc  # fields as sent
        assert_same_vectors(copy["splade"], want[doc["id"]])
