"""Where integration tests get their clusters from, in this order of preference:

1. testcontainers, when a Docker engine answers: the four real engines in ``CONTAINER_IMAGES``;
2. ``SPLADE_ES_TEST_URL``: one or more comma-separated URLs of clusters you run yourself
   (credentials from ``SPLADE_ES_TEST_API_KEY`` or ``SPLADE_ES_TEST_USER``/``_PASSWORD``);
3. a real OpenSearch node started in-process in a JVM from Maven Central jars
   (``tests/engines/opensearch-node``), one per version this machine's JDKs can run: 2.19 on
   JDK 17+, 3.3 on JDK 21+; needs ``java`` and ``mvn``;
4. otherwise an ``osmem-server`` process: an in-memory OpenSearch *emulator*, not a real engine.

``SPLADE_ES_TEST_CLUSTERS=testcontainers|url|node|emulator`` forces one source;
``SPLADE_ES_TEST_NODE_VERSIONS=2.19`` limits the real nodes to some versions.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from splade_es.connect import Cluster, ConnectionConfig, Engine, connect

Source = Literal["testcontainers", "url", "node", "emulator"]

# Pinned so that a test run is reproducible; docker/*.yml use the same versions.
CONTAINER_IMAGES: dict[str, tuple[Engine, str]] = {
    "elasticsearch-8": ("elasticsearch", "docker.elastic.co/elasticsearch/elasticsearch:8.19.0"),
    "elasticsearch-9": ("elasticsearch", "docker.elastic.co/elasticsearch/elasticsearch:9.1.0"),
    "opensearch-2": ("opensearch", "opensearchproject/opensearch:2.19.2"),
    "opensearch-3": ("opensearch", "opensearchproject/opensearch:3.3.0"),
}


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster a test session can use; ``engine`` is None until a URL cluster answers."""

    name: str
    source: Source
    engine: Engine | None
    # Image for containers, URL for url clusters, version for nodes, "" for the emulator.
    target: str
    # Why this source could not be used (the harness falls back, or skips when it was forced).
    unavailable: str = ""

    @property
    def is_emulator(self) -> bool:
        return self.source == "emulator"


@dataclass
class TestCluster:
    """What the ``cluster`` fixture yields: a connected cluster and where it came from."""

    __test__ = False  # not a test class, despite the name

    spec: ClusterSpec
    cluster: Cluster
    url: str

    @property
    def client(self) -> Any:
        return self.cluster.client

    @property
    def engine(self) -> Engine:
        return self.cluster.engine

    @property
    def version(self) -> tuple[int, int, int]:
        return self.cluster.version

    @functools.cached_property
    def plugins(self) -> tuple[str, ...]:
        """The cluster's plugin and module names, lower case (``_cat/plugins``); empty when it
        has no such API (the emulator). A classpath plugin of the in-process node is listed
        under its class name (``org.opensearch.neuralsearch.plugin.NeuralSearch``)."""
        try:
            rows = self.client.cat.plugins(format="json")
        except Exception:  # no _cat/plugins: no plugins we could use either
            return ()
        return tuple(sorted({str(r.get("component", "")).lower() for r in rows}))

    def has_plugin(self, name: str) -> bool:
        """Whether a plugin whose name contains ``name`` (e.g. ``neural``) is installed."""
        return any(name.lower() in p for p in self.plugins)

    @property
    def label(self) -> str:
        kind = "EMULATOR, not a real engine" if self.spec.is_emulator else self.spec.source
        if self.spec.source == "node":
            kind = "real OpenSearch node, in-process JVM"
        return f"{self.spec.name}: {self.cluster.description} ({kind}) at {self.url}"


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:  # any failure means "no usable engine here"
        return False


@functools.cache
def available_specs() -> tuple[ClusterSpec, ...]:
    """The clusters of this test session, discovered once."""
    return tuple(discover_specs())


# Why the real node was not used, when it was not (the pytest header says so).
NODE_FALLBACK_REASON: list[str] = []


def discover_specs() -> list[ClusterSpec]:
    forced = os.environ.get("SPLADE_ES_TEST_CLUSTERS", "").strip()
    urls = [u.strip() for u in os.environ.get("SPLADE_ES_TEST_URL", "").split(",") if u.strip()]
    if forced not in ("", "testcontainers", "url", "node", "emulator"):
        choices = "testcontainers|url|node|emulator"
        raise ValueError(f"SPLADE_ES_TEST_CLUSTERS={forced!r}: use {choices}")
    if forced in ("", "testcontainers") and (forced or docker_available()):
        return [
            ClusterSpec(name, "testcontainers", engine, image)
            for name, (engine, image) in CONTAINER_IMAGES.items()
        ]
    if forced in ("", "url") and urls:
        return [ClusterSpec(f"url-{i}", "url", None, url) for i, url in enumerate(urls)]
    if forced in ("", "node"):
        specs = node_specs()
        if specs and not (forced == "" and all(s.unavailable for s in specs)):
            return specs
        NODE_FALLBACK_REASON.extend(s.unavailable for s in specs)
    return [ClusterSpec("osmem-emulator", "emulator", "opensearch", "")]


def node_specs() -> list[ClusterSpec]:
    """One spec per OpenSearch version this machine's JDKs can run. Building the launcher
    (Maven) waits until a test needs the node; a failed build skips that node's tests."""
    from tests.engines import opensearch_node

    wanted = [v.strip() for v in os.environ.get("SPLADE_ES_TEST_NODE_VERSIONS", "").split(",")]
    wanted = [v for v in wanted if v]
    versions = opensearch_node.available_versions()
    if not versions:
        return [ClusterSpec("opensearch-node", "node", "opensearch", "", _no_jdk_reason())]
    if wanted:
        versions = [v for v in versions if any(v.startswith(w) for w in wanted)]
        if not versions:
            reason = f"no real OpenSearch node of versions {wanted} on this machine"
            return [ClusterSpec("opensearch-node", "node", "opensearch", "", reason)]
    return [ClusterSpec(f"opensearch-node-{v}", "node", "opensearch", v) for v in versions]


def _no_jdk_reason() -> str:
    if shutil.which("mvn") is None:
        return "no real OpenSearch node: Maven (mvn) is not installed"
    return "no real OpenSearch node: no JDK 17+ found (JAVA_HOME, /usr/lib/jvm, PATH)"


@contextlib.contextmanager
def start_cluster(spec: ClusterSpec) -> Iterator[TestCluster]:
    """Start (or reach) the cluster of ``spec``; stop what we started on exit."""
    if spec.source == "url":
        config = ConnectionConfig.from_urls(
            spec.target,
            api_key=os.environ.get("SPLADE_ES_TEST_API_KEY") or None,
            username=os.environ.get("SPLADE_ES_TEST_USER") or None,
            password=os.environ.get("SPLADE_ES_TEST_PASSWORD") or None,
            ca_certs=os.environ.get("SPLADE_ES_TEST_CA_CERTS") or None,
        )
        cluster = connect(config)
        try:
            yield TestCluster(spec, cluster, spec.target)
        finally:
            cluster.close()
    elif spec.source == "node":
        import pytest

        from tests.engines import opensearch_node

        try:
            opensearch_node.build(spec.target)
        except opensearch_node.NodeUnavailable as exc:
            pytest.skip(f"real OpenSearch {spec.target} node unavailable: {exc}")
        with opensearch_node.run(spec.target) as url:
            cluster = connect(ConnectionConfig(hosts=(url,), request_timeout=60))
            try:
                yield TestCluster(spec, cluster, url)
            finally:
                cluster.close()
    elif spec.source == "emulator":
        from osmem_server import OsmemServer

        with OsmemServer.start(japanese=False) as server:
            cluster = connect(ConnectionConfig(hosts=(server.url,)))
            try:
                yield TestCluster(spec, cluster, server.url)
            finally:
                cluster.close()
    else:
        with _container(spec) as url:
            cluster = connect(ConnectionConfig(hosts=(url,), request_timeout=60))
            try:
                yield TestCluster(spec, cluster, url)
            finally:
                cluster.close()


@contextlib.contextmanager
def _container(spec: ClusterSpec) -> Iterator[str]:
    if spec.engine == "elasticsearch":
        from testcontainers.community.elasticsearch import ElasticSearchContainer

        container = ElasticSearchContainer(spec.target, mem_limit="2g")
        container.with_env("ES_JAVA_OPTS", "-Xms1g -Xmx1g")
        container.with_env("discovery.type", "single-node")
        # The rrf / linear retrievers of hybrid search need an Enterprise or trial license.
        container.with_env("xpack.license.self_generated.type", "trial")
        with container:
            yield container.get_url()
    else:
        from testcontainers.community.opensearch import OpenSearchContainer

        container = OpenSearchContainer(spec.target, security_enabled=False, mem_limit="2g")
        container.with_env("OPENSEARCH_JAVA_OPTS", "-Xms1g -Xmx1g")
        with container:
            host = container.get_container_host_ip()
            yield f"http://{host}:{container.get_exposed_port(9200)}"
