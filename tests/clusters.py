"""Where integration tests get their clusters from, in this order of preference:

1. testcontainers, when a Docker engine answers: the four real engines in ``CONTAINER_IMAGES``;
2. ``SPLADE_ES_TEST_URL``: one or more comma-separated URLs of clusters you run yourself
   (credentials from ``SPLADE_ES_TEST_API_KEY`` or ``SPLADE_ES_TEST_USER``/``_PASSWORD``);
3. otherwise an ``osmem-server`` process: an in-memory OpenSearch *emulator*, not a real engine.

``SPLADE_ES_TEST_CLUSTERS=testcontainers|url|emulator`` forces one source.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from splade_es.connect import Cluster, ConnectionConfig, Engine, connect

Source = Literal["testcontainers", "url", "emulator"]

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
    target: str  # image for containers, URL for url clusters, "" for the emulator

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

    @property
    def label(self) -> str:
        kind = "EMULATOR, not a real engine" if self.spec.is_emulator else self.spec.source
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


def discover_specs() -> list[ClusterSpec]:
    forced = os.environ.get("SPLADE_ES_TEST_CLUSTERS", "").strip()
    urls = [u.strip() for u in os.environ.get("SPLADE_ES_TEST_URL", "").split(",") if u.strip()]
    if forced in ("", "testcontainers") and (forced or docker_available()):
        return [
            ClusterSpec(name, "testcontainers", engine, image)
            for name, (engine, image) in CONTAINER_IMAGES.items()
        ]
    if forced in ("", "url") and urls:
        return [ClusterSpec(f"url-{i}", "url", None, url) for i, url in enumerate(urls)]
    return [ClusterSpec("osmem-emulator", "emulator", "opensearch", "")]


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
