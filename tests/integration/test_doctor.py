"""``splade-es doctor`` on every harness cluster: what it claims works, what the cluster lacks
is reported as unsupported (with the engine's words), and nothing is left behind."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import splade_es.engines.base as engines_base
from splade_es import doctor
from splade_es.cli import main
from splade_es.connect import parse_version
from splade_es.doctor import _Doctor
from splade_es.engines import dialect_for

pytestmark = pytest.mark.integration

NEURAL_SEARCH = "opensearch-neural-search"
NEEDS_NEURAL_SEARCH = (
    "rank_features · neural_sparse query",
    "sparse_vector field",
    "hybrid rrf",
    "hybrid linear",
)


def credentials() -> dict[str, str | None]:
    """The harness's credentials for a URL cluster, as the command line reads them."""
    return {
        "SPLADE_ES_API_KEY": os.environ.get("SPLADE_ES_TEST_API_KEY"),
        "SPLADE_ES_USER": os.environ.get("SPLADE_ES_TEST_USER"),
        "SPLADE_ES_PASSWORD": os.environ.get("SPLADE_ES_TEST_PASSWORD"),
        "SPLADE_ES_CA_CERTS": os.environ.get("SPLADE_ES_TEST_CA_CERTS"),
    }


def doctor_indices(client, prefix: str) -> list[str]:
    found = client.indices.get(index=f"{prefix}*", allow_no_indices=True, expand_wildcards="all")
    return sorted(found)


def test_doctor_checks_what_the_dialect_claims_and_cleans_up(cluster):
    report = doctor(cluster.client)
    checks = {c.capability: c for c in report.checks}
    facts = report.facts
    assert facts.engine == cluster.engine
    assert parse_version(facts.version) == cluster.version
    assert not report.failed, [(c.capability, c.detail, c.engine_error) for c in report.failed]
    assert report.ok and not report.left_behind
    assert doctor_indices(cluster.client, report.index_prefix) == []

    # Core capabilities of every engine version: exact, and measured.
    assert checks["rank_features field"].status == "ok"
    assert checks["rank_features · rank_feature query"].status == "ok"
    assert (
        "9-bit precision for 4 matching documents"
        in checks["rank_features · rank_feature query"].detail
    )
    assert checks["hybrid sum"].status == "ok"
    assert checks["clause limit"].status == "ok"
    assert facts.clause_limit >= 1024

    dialect = dialect_for(cluster.engine, cluster.version)
    for method in ("sum", "rrf", "linear"):
        check = checks[f"hybrid {method}"]
        assert check.claimed == (method in dialect.hybrid_methods())
    if cluster.spec.is_emulator:
        # osmem has no plugins: every neural-search capability is unsupported, in its words.
        assert facts.plugins == ()
        for name in NEEDS_NEURAL_SEARCH:
            assert checks[name].status == "unsupported", checks[name]
            assert checks[name].detail == f"needs plugin {NEURAL_SEARCH}"
            assert checks[name].engine_error
        unqueried = checks["sparse_vector · neural_sparse query"]
        assert (unqueried.status, unqueried.detail) == (
            "unsupported",
            "no sparse_vector field here",
        )
        assert "1025 runs too" in checks["clause limit"].detail
    elif cluster.engine == "opensearch" and NEURAL_SEARCH in (facts.plugins or ()):
        # A real OpenSearch with neural-search: everything this version offers is ok.
        for check in report.checks:
            assert check.status == "ok" or not check.claimed, check
        assert facts.clause_limit_probed == facts.clause_limit  # limit + 1 was refused


def test_doctor_detects_a_query_that_does_not_score_the_dot_product(cluster, monkeypatch):
    """The classic mistake, a rank_feature query without ``linear`` (the default saturation
    function), must fail the check."""

    def saturated(features, field):
        return {
            "bool": {
                "should": [
                    {"rank_feature": {"field": f"{field}.{key}", "boost": weight}}
                    for key, weight in features.items()
                ]
            }
        }

    monkeypatch.setattr(engines_base, "rank_feature_query", saturated)
    report = doctor(cluster.client)
    check = next(c for c in report.checks if c.capability == "rank_features · rank_feature query")
    assert check.status == "FAILED"
    assert "dot product at stored precision" in check.detail
    assert not report.ok
    assert doctor_indices(cluster.client, report.index_prefix) == []
    # The command says so with exit status 1 (and still cleans up).
    result = CliRunner().invoke(main, ["doctor", "--url", cluster.url], env=credentials())
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stdout
    assert doctor_indices(cluster.client, "splade-es-doctor") == []


def test_doctor_deletes_its_indices_when_interrupted(cluster, monkeypatch):
    seen: list[str] = []

    def interrupted(self, index, method):
        seen.append(index)
        assert cluster.client.indices.exists(index=index)
        raise KeyboardInterrupt

    monkeypatch.setattr(_Doctor, "_hybrid", interrupted)
    with pytest.raises(KeyboardInterrupt):
        doctor(cluster.client)
    assert seen
    assert not cluster.client.indices.exists(index=seen[0])


def test_doctor_command_prints_json_and_leaves_nothing_behind(cluster):
    before = doctor_indices(cluster.client, "splade-es-doctor")
    result = CliRunner().invoke(main, ["doctor", "--url", cluster.url, "--json"], env=credentials())
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["facts"]["engine"] == cluster.engine
    assert parse_version(report["facts"]["version"]) == cluster.version
    assert report["ok"] is True and report["left_behind"] == []
    statuses = {c["capability"]: c["status"] for c in report["checks"]}
    assert statuses["rank_features · rank_feature query"] == "ok"
    assert report["index_prefix"].startswith("splade-es-doctor-")
    assert doctor_indices(cluster.client, "splade-es-doctor") == before
