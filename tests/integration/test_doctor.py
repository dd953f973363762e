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
    elif cluster.engine == "opensearch" and cluster.has_plugin("neural"):
        # A real OpenSearch with neural-search (the in-process node lists it under its class
        # name): everything this version offers is ok.
        for check in report.checks:
            assert check.status == "ok" or not check.claimed, check
        assert facts.clause_limit_probed == facts.clause_limit  # limit + 1 was refused
    elif cluster.engine == "opensearch":
        # A real OpenSearch without neural-search (the 3.3 node): core ok, the rest named.
        for name in NEEDS_NEURAL_SEARCH:
            assert checks[name].status == "unsupported", checks[name]
            assert checks[name].detail in (
                f"needs plugin {NEURAL_SEARCH}",
                "no sparse_vector field here",
            )
        assert facts.clause_limit_probed == facts.clause_limit


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


# ---------------------------------------------------------------------- passages (issue 24)
PASSAGES = {  # (start, end, {token: weight}) of each passage
    "d1": [(0, 40, {"tax": 0.7123456}), (30, 90, {"tax": 2.3333333, "law": 0.5})],
    "d2": [(0, 25, {"law": 1.25}), (20, 70, {"brain": 0.3})],
    "d3": [(0, 10, {"garlic": 0.9})],
}


def passages_index(cluster, index_name, **settings) -> None:
    from splade_es import create_index

    create_index(cluster.client, index_name, replicas=0, passages=True)
    if settings:
        cluster.client.indices.put_settings(index=index_name, body=settings)
    for doc_id, passages in PASSAGES.items():
        objects = [{"vector": v, "start": s, "end": e} for s, e, v in passages]
        body = {"id": doc_id, "text": doc_id, "splade": objects}
        cluster.client.index(index=index_name, id=doc_id, body=body)
    cluster.client.indices.refresh(index=index_name)


def test_doctor_checks_passages_and_the_nested_objects_limit(cluster):
    report = doctor(cluster.client)
    checks = {c.capability: c for c in report.checks}
    assert not report.failed, [(c.capability, c.detail, c.engine_error) for c in report.failed]
    field = checks["rank_features · passages (nested)"]
    assert field.status == "ok", field
    assert "5 documents as 11 nested passages" in field.detail
    assert "index.mapping.nested_objects.limit 10000 (default) per document" in field.detail
    assert "max_windows 64 fits" in field.detail
    query = checks["rank_features · rank_feature query on passages"]
    assert query.status == "ok", query
    assert "best passage's dot product (nested, score_mode max) for 4 documents" in query.detail
    assert report.warnings == ()
    dialect = dialect_for(cluster.engine, cluster.version)
    if "sparse_vector" in dialect.field_types() and checks["sparse_vector field"].status == "ok":
        for style in dialect.query_styles("sparse_vector"):
            assert checks[f"sparse_vector · {style} query on passages"].status == "ok"
    assert doctor_indices(cluster.client, report.index_prefix) == []

    # A max_windows above the limit: a warning, not a failure.
    over = doctor(cluster.client, max_windows=20_000)
    assert over.ok
    assert any(
        "up to 20000 passages (max_windows) exceeds index.mapping.nested_objects.limit 10000" in w
        for w in over.warnings
    ), over.warnings


def test_doctor_fails_passages_scored_by_their_sum(cluster, monkeypatch):
    """The check can fail: a nested query that adds the passages up (score_mode sum) ranks
    d2 (three passages) above d1 (the best single passage)."""
    original = engines_base.Dialect.passage_query

    def summed(self, sparse, *, field, inner_hits=3):
        query = original(self, sparse, field=field, inner_hits=inner_hits)
        query["nested"]["score_mode"] = "sum"
        return query

    monkeypatch.setattr(engines_base.Dialect, "passage_query", summed)
    report = doctor(cluster.client)
    check = next(
        c for c in report.checks if c.capability == "rank_features · rank_feature query on passages"
    )
    assert check.status == "FAILED", check
    assert "d2" in check.detail
    assert doctor_indices(cluster.client, report.index_prefix) == []


def test_doctor_names_a_passages_index_and_checks_its_top_hit(cluster, index_name):
    passages_index(cluster, index_name)
    report = doctor(cluster.client, index=index_name)
    check = next(c for c in report.checks if c.capability == f"index {index_name}")
    assert check.status == "ok", check
    assert "splade: nested passages of rank_features vectors" in check.detail
    assert "scores its best passage's exact dot product" in check.detail
    assert "index.mapping.nested_objects.limit 10000 (default)" in check.detail
    assert report.warnings == ()
    assert cluster.client.indices.exists(index=index_name)  # read-only: still there


def test_doctor_warns_when_max_windows_exceeds_the_indexs_nested_limit(cluster, index_name):
    passages_index(cluster, index_name, **{"index.mapping.nested_objects.limit": 5})
    result = CliRunner().invoke(
        main,
        ["doctor", "--url", cluster.url, "--index", index_name, "--max-windows", "8"],
        env=credentials(),
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"index {index_name}: a document of up to 8 passages (max_windows) exceeds" in said
    assert "index.mapping.nested_objects.limit 5:" in said
    fits = CliRunner().invoke(
        main,
        ["doctor", "--url", cluster.url, "--index", index_name, "--max-windows", "5", "--json"],
        env=credentials(),
    )
    assert fits.exit_code == 0, fits.output
    report = json.loads(fits.stdout)
    assert report["warnings"] == []
    row = next(c for c in report["checks"] if c["capability"] == f"index {index_name}")
    assert "index.mapping.nested_objects.limit 5 per document, max_windows 5 fits" in row["detail"]


def test_doctor_names_a_one_vector_index(cluster, index_name):
    from splade_es import create_index

    create_index(cluster.client, index_name, replicas=0)
    for doc_id, passages in PASSAGES.items():
        body = {"id": doc_id, "splade": passages[0][2]}
        cluster.client.index(index=index_name, id=doc_id, body=body)
    cluster.client.indices.refresh(index=index_name)
    report = doctor(cluster.client, index=index_name)
    check = next(c for c in report.checks if c.capability == f"index {index_name}")
    assert check.status == "ok", check
    assert "splade: one rank_features vector per document" in check.detail
    assert "scores its exact dot product" in check.detail
    assert "nested_objects" not in check.detail
