"""The official Node.js clients (``@opensearch-project/opensearch``, ``@elastic/elasticsearch``
from npm) pointed at ``splade-es serve``: same hit ids and scores as ``search()``, and their
usual bad-request error for a malformed clause. Skipped, with the reason, without node/npm."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from splade_es import SpladeEncoder, search
from tests.integration.serve_support import StubServer, forward_to, index_corpus, running_proxy

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).parent / "node"
TEXT = "brain white matter imaging"


@pytest.fixture(scope="module")
def node_clients() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the Node.js client test (not installed)")
    if not (NODE_DIR / "node_modules").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.skip(f"npm ci could not install the Node.js clients: {done.stderr[-500:]}")
    return NODE_DIR / "clients.mjs"


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


def test_node_clients_through_the_proxy_equal_search(cluster, index_name, encoder, node_clients):
    index_corpus(cluster, index_name, encoder, 25)
    direct = [
        [h.id, h.score]
        for h in search(cluster.client, index_name, TEXT, encoder=encoder, k=25).hits
    ]
    assert direct
    # The Elasticsearch client sends versioned media types, which the emulator refuses: it
    # goes through a gate that reads them as plain JSON, as Elasticsearch does.
    with (
        running_proxy(cluster.url, encoder) as os_proxy,
        StubServer(forward_to(cluster.url, plain_json=True)) as gate,
        running_proxy(gate.url, encoder) as es_proxy,
    ):
        done = subprocess.run(
            [
                "node",
                str(node_clients),
                os_proxy.state.url,
                es_proxy.state.url,
                index_name,
                TEXT,
                "25",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for client in ("opensearch", "elasticsearch"):
        assert out[client]["hits"] == direct, client
        assert out[client]["error"]["statusCode"] == 400, client
        assert out[client]["error"]["type"] == "parsing_exception", client
    assert out["opensearch"]["error"]["name"] == "ResponseError"
    assert out["elasticsearch"]["error"]["name"] == "ResponseError"
