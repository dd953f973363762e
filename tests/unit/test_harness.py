"""The integration harness chooses its clusters as documented: testcontainers, URL, the real
OpenSearch node, then the emulator; a forced source that cannot run says why."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import clusters
from tests.engines import opensearch_node


@pytest.fixture
def no_docker_no_url(monkeypatch):
    monkeypatch.setattr(clusters, "docker_available", lambda: False)
    monkeypatch.delenv("SPLADE_ES_TEST_URL", raising=False)
    monkeypatch.delenv("SPLADE_ES_TEST_CLUSTERS", raising=False)
    monkeypatch.delenv("SPLADE_ES_TEST_NODE_VERSIONS", raising=False)
    monkeypatch.setattr(clusters, "NODE_FALLBACK_REASON", [])


def test_real_nodes_come_before_the_emulator(no_docker_no_url, monkeypatch):
    monkeypatch.setattr(opensearch_node, "available_versions", lambda: ["2.19.6", "3.3.2"])
    specs = clusters.discover_specs()
    assert [(s.source, s.target, s.unavailable) for s in specs] == [
        ("node", "2.19.6", ""),
        ("node", "3.3.2", ""),
    ]


def test_a_url_comes_before_the_real_node(no_docker_no_url, monkeypatch):
    monkeypatch.setattr(opensearch_node, "available_versions", lambda: ["2.19.6"])
    monkeypatch.setenv("SPLADE_ES_TEST_URL", "http://127.0.0.1:1")
    assert [s.source for s in clusters.discover_specs()] == ["url"]


def test_without_a_jdk_the_emulator_runs_and_the_header_says_why(no_docker_no_url, monkeypatch):
    monkeypatch.setattr(opensearch_node, "available_versions", lambda: [])
    specs = clusters.discover_specs()
    assert [s.source for s in specs] == ["emulator"]
    assert (
        clusters.NODE_FALLBACK_REASON
        and "no real OpenSearch node" in (clusters.NODE_FALLBACK_REASON[0])
    )


def test_a_forced_node_that_cannot_run_is_a_skip_reason_not_the_emulator(
    no_docker_no_url, monkeypatch
):
    monkeypatch.setattr(opensearch_node, "available_versions", lambda: [])
    monkeypatch.setenv("SPLADE_ES_TEST_CLUSTERS", "node")
    [spec] = clusters.discover_specs()
    assert spec.source == "node" and spec.unavailable


def test_node_versions_can_be_limited(no_docker_no_url, monkeypatch):
    monkeypatch.setattr(opensearch_node, "available_versions", lambda: ["2.19.6", "3.3.2"])
    monkeypatch.setenv("SPLADE_ES_TEST_NODE_VERSIONS", "3.3")
    assert [s.target for s in clusters.discover_specs()] == ["3.3.2"]


def test_an_unknown_forced_source_is_refused(no_docker_no_url, monkeypatch):
    monkeypatch.setenv("SPLADE_ES_TEST_CLUSTERS", "nodes")
    with pytest.raises(ValueError, match="testcontainers\\|url\\|node\\|emulator"):
        clusters.discover_specs()


def _fake_java(folder: Path, version_line: str) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "javac").write_text("")
    return java


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "25" 2025-09-16', 25),
        ('java version "1.8.0_292"', 8),
    ],
)
def test_java_major_reads_the_feature_version(tmp_path, line, major):
    assert opensearch_node.java_major(_fake_java(tmp_path, line)) == major


def test_find_java_prefers_java_home_when_it_fits(tmp_path, monkeypatch):
    java = _fake_java(tmp_path / "jdk21", 'openjdk version "21.0.2" 2024-01-16')
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    assert opensearch_node.find_java(21) == java.resolve()
    # A JAVA_HOME too old for the version is passed over, never used.
    assert opensearch_node.find_java(99) is None


def test_the_build_explains_a_missing_maven(monkeypatch):
    monkeypatch.setattr(opensearch_node.shutil, "which", lambda name: None)
    monkeypatch.setattr(opensearch_node, "_is_fresh", lambda version: False)
    # (A machine without a JDK at all is told about the JDK first.)
    with pytest.raises(opensearch_node.NodeUnavailable, match=r"(?i)maven|mvn|jdk"):
        opensearch_node.build(next(iter(opensearch_node.VERSIONS)))


@pytest.mark.skipif(
    not opensearch_node.available_versions(), reason="no JDK and Maven here for a real node"
)
def test_the_real_node_dies_with_its_parent_even_on_kill_9():
    """A pytest killed with SIGKILL runs no finalizer: the JVM must notice on its own (its stdin
    closes) so that no node is left running."""
    version = opensearch_node.available_versions()[0]
    root = Path(__file__).resolve().parents[2]
    code = (
        f"import sys, time; sys.path.insert(0, {str(root)!r})\n"
        "from tests.engines import opensearch_node\n"
        f"with opensearch_node.run({version!r}) as url:\n"
        "    print(url, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        url = parent.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        with urllib.request.urlopen(url, timeout=10) as response:
            assert json.load(response)["version"]["number"] == version
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except OSError:
            return  # connection refused: the node is gone
        time.sleep(0.5)
    pytest.fail(f"the node at {url} still answers 60 s after its parent was killed")
