"""The ``cluster`` fixture: every integration test runs once per available cluster.

Mark a test ``@pytest.mark.engines("elasticsearch")`` to restrict it to one engine, and
``@pytest.mark.emulator_lacks("neural_sparse query")`` when the osmem emulator cannot run it:
it is then skipped on the emulator, with that reason, and still runs on real engines.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.clusters import (
    NODE_FALLBACK_REASON,
    ClusterSpec,
    TestCluster,
    available_specs,
    start_cluster,
)

_STARTED: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if not _STARTED:
        return
    terminalreporter.section("splade-es clusters that ran")
    for label in _STARTED:
        terminalreporter.write_line(label)
    if any(spec.is_emulator for spec in available_specs()):
        terminalreporter.write_line(
            "NOTE: osmem-server is an emulator. Passing here is not proof for real "
            "Elasticsearch/OpenSearch; run with Docker, SPLADE_ES_TEST_URL or a real node "
            "(java + mvn) for that."
        )
        for reason in NODE_FALLBACK_REASON:
            terminalreporter.write_line(f"(the real OpenSearch node was not used: {reason})")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cluster" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("engines")
    wanted = set(marker.args) if marker else None
    specs = [
        s for s in available_specs() if wanted is None or s.engine is None or s.engine in wanted
    ]
    params = [
        pytest.param(
            s, id=s.name, marks=[pytest.mark.skip(reason=s.unavailable)] if s.unavailable else []
        )
        for s in specs
    ] or [
        pytest.param(
            None, id="no-cluster", marks=pytest.mark.skip(reason=f"no {wanted} cluster available")
        )
    ]
    metafunc.parametrize("_cluster_spec", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def _cluster_spec(request: pytest.FixtureRequest) -> ClusterSpec:
    return request.param


@pytest.fixture(scope="session")
def _running_cluster(_cluster_spec: ClusterSpec) -> Iterator[TestCluster]:
    with start_cluster(_cluster_spec) as running:
        _STARTED.append(running.label)
        yield running


@pytest.fixture
def cluster(request: pytest.FixtureRequest, _running_cluster: TestCluster) -> TestCluster:
    engines = request.node.get_closest_marker("engines")
    if engines and _running_cluster.engine not in engines.args:
        pytest.skip(f"test applies to {engines.args}, cluster is {_running_cluster.engine}")
    lacks = request.node.get_closest_marker("emulator_lacks")
    if lacks and _running_cluster.spec.is_emulator:
        pytest.skip(f"the osmem emulator lacks {lacks.args[0]}; runs on real engines")
    return _running_cluster


@pytest.fixture
def index_name(cluster: TestCluster) -> Iterator[str]:
    """A fresh index name, deleted after the test."""
    name = f"splade-es-test-{uuid.uuid4().hex[:12]}"
    yield name
    cluster.client.indices.delete(index=name, ignore_unavailable=True)
