"""``splade-es doctor --serve-url`` on the real OpenSearch 2.19.6 node (ml-commons 2.19.6.0,
neural-search 2.19.6.0) with a real ``splade-es serve`` process (``--api-key-file``) and
``splade-es register`` run first: the three serve rows pass (the ingest pipeline's and the
query model's vectors equal serve's own, weight for weight), doctor leaves nothing behind, and
the rows fail with the right words once the trusted endpoint regex is gone or serve is down.

Only the 2.19.6 node has ml-commons (``NodeVersion.ml_commons``); other clusters skip, saying
why (the 3.3.2 node, the emulator, Elasticsearch, and clusters that cannot reach this machine's
127.0.0.1).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from splade_es import doctor
from splade_es.doctor import (
    CAN_CALL,
    SAME_VECTORS,
    SERVE_ANSWERS,
    ServeTarget,
    serve_checks,
)
from splade_es.register import RegisterConfig, register, unregister
from splade_es.register.opensearch import TRUSTED
from tests.clusters import ClusterSpec, TestCluster
from tests.engines import ml_commons, opensearch_node
from tests.integration.serve_support import free_port, raw_request

pytestmark = [pytest.mark.integration, pytest.mark.engines("opensearch")]

KEY = secrets.token_urlsafe(24)  # compared, never printed


def skip_reason(spec: ClusterSpec) -> str | None:
    """Why a cluster cannot run these tests, known before it is started."""
    if spec.engine == "elasticsearch" or spec.is_emulator:
        return f"{spec.name} is not a real OpenSearch cluster with ml-commons"
    if spec.source == "node" and not opensearch_node.VERSIONS[spec.target].ml_commons:
        return f"the OpenSearch {spec.target} node has no ml-commons (no zip on Maven Central)"
    if spec.source == "testcontainers" or (
        spec.source == "url" and urlsplit(spec.target).hostname not in ("127.0.0.1", "localhost")
    ):
        return f"{spec.name} cannot reach a serve on this machine's 127.0.0.1"
    return None


@dataclass
class Setup:
    cluster: TestCluster
    serve: subprocess.Popen[str]
    target: ServeTarget


def start_serve(model_dir: Path, keys: Path, port: int, cluster_url: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "splade_es.cli", "serve", "--model", str(model_dir),
        "--listen", f"127.0.0.1:{port}", "--api-key-file", str(keys),
    ]  # fmt: skip
    env = {**os.environ, "SPLADE_ES_URL": cluster_url}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            status, _, body = raw_request(f"http://127.0.0.1:{port}", "GET", "/_splade/health")
        except OSError:
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
            continue
        assert status == 200 and json.loads(body)["model_loaded"], body
        return process


def stop_serve(process: subprocess.Popen) -> None:
    """Stop serve (once: a second call finds it stopped) and check its log holds no key."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    _, logs = process.communicate(timeout=60)
    assert KEY not in (logs or "")


@pytest.fixture(scope="module")
def setup(
    request: pytest.FixtureRequest,
    _cluster_spec: ClusterSpec,
    search_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    """serve (a tiny random model) and register's objects under a fresh name; afterwards
    unregistered, the connector settings reset and serve stopped."""
    reason = skip_reason(_cluster_spec)
    if reason:
        pytest.skip(reason)
    running: TestCluster = request.getfixturevalue("_running_cluster")
    if not ml_commons.available(running.client):
        pytest.skip(f"{_cluster_spec.name} has no ml-commons plugin")
    keys = tmp_path_factory.mktemp("keys") / "serve.keys"
    keys.write_text(f"# the cluster's key\n{KEY}\n")
    port = free_port()
    serve = start_serve(search_model_dir, keys, port, running.url)
    target = ServeTarget(
        url=f"http://127.0.0.1:{port}", api_key=KEY, name=f"doctor-{uuid.uuid4().hex[:8]}"
    )
    config = RegisterConfig(
        serve_url=target.url, api_key=KEY, name=target.name, apply_settings=True
    )
    with contextlib.ExitStack() as stack:
        stack.callback(stop_serve, serve)
        stack.callback(ml_commons.reset_connector_endpoints, running.client)
        stack.callback(unregister, running.cluster, RegisterConfig(name=target.name))
        register(running.cluster, config)
        yield Setup(running, serve, target)


def cluster_objects(client: Any) -> dict[str, Any]:
    """What doctor could leave behind: indices, pipelines, ml-commons objects and tasks."""
    ml = {}
    for kind in ("connectors", "models", "model_groups", "tasks"):
        body = {"query": {"match_all": {}}, "size": 1000}
        with contextlib.suppress(Exception):  # an ml index that does not exist yet
            answer = client.transport.perform_request(
                "POST", f"{ml_commons.ML}/{kind}/_search", body=body
            )
            ml[kind] = sorted(hit["_id"] for hit in answer["hits"]["hits"])
    search: list[str] = []
    with contextlib.suppress(Exception):  # 404 when there is none
        search = sorted(client.transport.perform_request("GET", "/_search/pipeline"))
    return {
        "indices": sorted(client.indices.get(index="*", expand_wildcards="all")),
        "ingest": sorted(client.ingest.get_pipeline()),
        "search": search,
        "ml": ml,
    }


def rows(checks: Any) -> dict[str, Any]:
    found = {c.capability: c for c in checks}
    assert KEY not in json.dumps([c.__dict__ for c in checks])
    return found


def test_after_register_the_serve_rows_pass_and_nothing_is_left(cluster, setup):
    client = setup.cluster.client
    before = cluster_objects(client)
    report = doctor(setup.cluster.cluster, serve=setup.target)
    found = rows(report.checks)
    for name in (CAN_CALL, SERVE_ANSWERS, SAME_VECTORS):
        assert found[name].status == "ok", found[name]
    assert report.ok and not report.left_behind, report.failed
    assert "private addresses allowed" in found[CAN_CALL].detail
    assert f"3 document texts through the ingest pipeline {setup.target.name}-ingest" in (
        found[SAME_VECTORS].detail
    )
    assert "query texts through the model" in found[SAME_VECTORS].detail
    assert cluster_objects(client) == before


def test_without_the_trusted_regex_the_first_row_names_it(cluster, setup):
    client = setup.cluster.client
    body = {"persistent": {TRUSTED: None}}  # back to ml-commons' cloud endpoints
    client.transport.perform_request("PUT", "/_cluster/settings", body=body)
    try:
        found = rows(serve_checks(setup.cluster.cluster, setup.target))
    finally:
        trusted = [rf"^http://127\.0\.0\.1:{urlsplit(setup.target.url).port}/_splade/embed/.*$"]
        body = {"persistent": {TRUSTED: trusted}}
        client.transport.perform_request("PUT", "/_cluster/settings", body=body)
    row = found[CAN_CALL]
    assert row.status == "FAILED"
    assert f"no pattern of {TRUSTED} matches {setup.target.url}/_splade/embed/" in row.detail
    assert "fix with PUT _cluster/settings" in row.detail
    assert found[SERVE_ANSWERS].status == "ok"


def test_with_serve_stopped_serve_answers_fails_and_the_vectors_are_skipped(cluster, setup):
    # Last in this module: serve does not come back.
    stop_serve(setup.serve)
    found = rows(serve_checks(setup.cluster.cluster, setup.target))
    assert found[CAN_CALL].status == "ok"
    assert found[SERVE_ANSWERS].status == "FAILED"
    assert found[SERVE_ANSWERS].detail.startswith(
        f"connection refused at {setup.target.url}/_splade/embed/document"
    )
    assert found[SAME_VECTORS].status == "skipped"
