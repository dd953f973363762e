"""The doctor's own arithmetic and parsing (no cluster): expected scores at storage
precision, fusion formulas, the engines' error bodies, the clause-limit probe."""

from __future__ import annotations

import importlib
import json

import elasticsearch
import opensearchpy
import pytest
from rich.console import Console

from splade_es.cli.doctor import doctor_table
from splade_es.connect import Cluster
from splade_es.doctor import (
    DOCUMENTS,
    NESTED_LIMIT_SETTING,
    PASSAGE_DOCUMENTS,
    QUERY,
    Check,
    CheckFailed,
    ClusterFacts,
    DoctorReport,
    _check_fusion,
    _Doctor,
    best_passage_scores,
    clause_limit_in,
    compare_hits,
    engine_error,
    expected_scores,
    nested_limit_in,
    nested_limit_warning,
    rrf_scores,
)
from splade_es.engines import Hybrid
from tests.unit.test_conformance import _client_for
from tests.unit.test_elasticsearch_client_calls import FakeElasticsearch

# What Elasticsearch 8 answers when Lucene's IndexSearcher refuses a query
# (apache/lucene IndexSearcher.TooManyNestedClauses: "Query contains too many nested
# clauses; maxClauseCount is set to " + getMaxClauseCount()).
TOO_MANY = {
    "error": {
        "root_cause": [
            {
                "type": "query_shard_exception",
                "reason": "failed to create query: Query contains too many nested clauses; "
                "maxClauseCount is set to 4096",
            }
        ],
        "type": "search_phase_execution_exception",
        "reason": "all shards failed",
        "caused_by": {
            "type": "too_many_nested_clauses",
            "reason": "Query contains too many nested clauses; maxClauseCount is set to 4096",
        },
    },
    "status": 400,
}


def test_expected_scores_use_the_nine_bit_storage_precision():
    scores = expected_scores({"a": 2.0, "b": 1.0}, {"d": {"a": 0.7, "c": 5.0}, "e": {"c": 1.0}})
    assert scores == {"d": 2.0 * 0.69921875}  # 0.7 is stored as 0.69921875
    full = expected_scores({"a": 2.0}, {"d": {"a": 0.7}})["d"]
    with pytest.raises(CheckFailed, match="dot product"):
        compare_hits([("d", 1.4)], {"d": full})  # a full-precision score is a failure
    compare_hits([("d", full * (1 + 1e-7))], {"d": full})  # float32 summation is fine


def test_the_known_documents_exercise_precision_escaping_and_misses():
    scores = expected_scores(QUERY, {d: doc["vector"] for d, doc in DOCUMENTS.items()})
    assert set(scores) == {"d1", "d2", "d3", "d5"}  # d4, d6 share no query token
    assert "zebra" in QUERY and all("zebra" not in d["vector"] for d in DOCUMENTS.values())
    tokens = {t for d in DOCUMENTS.values() for t in d["vector"]}
    assert {".", "%", "u.s"} <= tokens  # keys the codec must escape


def test_compare_hits_wants_exactly_the_matching_documents():
    with pytest.raises(CheckFailed, match="expected exactly"):
        compare_hits([("a", 1.0), ("b", 2.0)], {"a": 1.0})
    with pytest.raises(CheckFailed, match="expected exactly"):
        compare_hits([("a", 1.0)], {"a": 1.0, "b": 2.0})


def test_fusion_checks():
    hybrid = Hybrid(method="sum", bm25_weight=0.25)
    splade, bm25 = [("a", 4.0), ("b", 2.0)], [("b", 8.0), ("c", 1.0)]
    fused = [("b", 0.75 * 2.0 + 0.25 * 8.0), ("a", 3.0), ("c", 0.25)]
    assert "0.75 x SPLADE" in _check_fusion("sum", hybrid, fused, splade, bm25)
    with pytest.raises(CheckFailed):
        _check_fusion("sum", hybrid, [(d, s + 0.1) for d, s in fused], splade, bm25)
    with pytest.raises(CheckFailed, match="either query"):
        _check_fusion("sum", hybrid, fused[:2], splade, bm25)

    rrf = Hybrid(method="rrf", rank_constant=20)
    expected = rrf_scores([["b", "c"], ["a", "b"]], 20)
    assert expected["b"] == pytest.approx(1 / 21 + 1 / 22)
    assert expected["a"] == pytest.approx(1 / 21)
    fused = sorted(expected.items(), key=lambda kv: -kv[1])
    assert "rank_constant 20" in _check_fusion("rrf", rrf, fused, splade, bm25)
    # A pipeline that ignored the constant (60) is caught.
    ignored = sorted(rrf_scores([["b", "c"], ["a", "b"]], 60).items(), key=lambda kv: -kv[1])
    with pytest.raises(CheckFailed):
        _check_fusion("rrf", rrf, ignored, splade, bm25)

    linear = Hybrid(method="linear")
    assert "[0, 1]" in _check_fusion(
        "linear", linear, [("a", 1.0), ("b", 0.5), ("c", 0.0)], splade, bm25
    )
    with pytest.raises(CheckFailed, match="outside"):
        _check_fusion("linear", linear, [("a", 3.0), ("b", 0.5), ("c", 0.0)], splade, bm25)


def test_engine_errors_are_read_from_both_clients_bodies():
    assert clause_limit_in(json.dumps(TOO_MANY)) == 4096
    assert clause_limit_in("maxClauseCount is set to 1024") == 1024
    assert clause_limit_in("something else") is None
    es_error = elasticsearch.BadRequestError("x", meta=None, body=TOO_MANY)  # type: ignore[arg-type]
    assert engine_error(es_error).startswith("query_shard_exception: failed to create query")
    os_error = opensearchpy.RequestError(400, "no handler", {"error": "no handler found for uri"})
    assert engine_error(os_error) == "no handler found for uri"


class ClauseLimitedElasticsearch(FakeElasticsearch):
    """The fake node, refusing searches of more than ``limit`` clauses as Elasticsearch does."""

    def __init__(self, limit: int, refusal: dict = TOO_MANY) -> None:
        super().__init__("8.15.0")
        self.limit = limit
        self.refusal = refusal
        self.clauses: list[int] = []

    def handle(self, method, target, body):
        if target.startswith("/probe/_search"):
            count = len(json.loads(body)["query"]["bool"]["should"])
            self.clauses.append(count)
            return (400, self.refusal) if count > self.limit else (200, {"hits": {"hits": []}})
        return super().handle(method, target, body)


def test_elasticsearch_clause_limit_probe_doubles_until_refused():
    fake = ClauseLimitedElasticsearch(4096)
    probe = _Doctor(Cluster(_client_for(fake), "elasticsearch", (8, 15, 0)), "x")
    assert probe._probe_clause_limit("probe", 1024) == 4096
    assert fake.clauses == [1025, 2049, 4097]  # three small requests; Lucene names the limit

    # A refusal for the clause count that does not name the limit: the last count that ran.
    unnamed = {"error": {"type": "too_many_clauses", "reason": "too many clauses"}, "status": 400}
    fake = ClauseLimitedElasticsearch(2048, unnamed)
    probe = _Doctor(Cluster(_client_for(fake), "elasticsearch", (8, 15, 0)), "x")
    assert probe._probe_clause_limit("probe", 1024) == 2048
    # Any other refusal is not a clause limit: it is raised (the check fails with it).
    other = {"error": {"type": "circuit_breaking_exception", "reason": "data too large"}}
    fake = ClauseLimitedElasticsearch(1500, {**other, "status": 429})
    probe = _Doctor(Cluster(_client_for(fake), "elasticsearch", (8, 15, 0)), "x")
    with pytest.raises(elasticsearch.ApiError):
        probe._probe_clause_limit("probe", 1024)


def test_table_escapes_engine_text():
    report = DoctorReport(
        facts=ClusterFacts(
            engine="opensearch",
            version="2.19.0",
            distribution="opensearch",
            license=None,
            plugins=(),
            clause_limit=1024,
            clause_limit_probed=None,
        ),
        checks=(Check("hybrid rrf", "FAILED", "the engine refused it", "[bold]boom[/bold] [x]"),),
        index_prefix="p",
    )
    # Literal on any console: one with markup (an application's) and the CLI's, without
    # (where escaped text would show its backslashes).
    for markup in (True, False):
        console = Console(width=200, record=True, markup=markup)
        console.print(doctor_table(report))
        text = console.export_text()
        assert "[bold]boom[/bold] [x]" in text
        assert "\\[" not in text
    assert not report.ok and report.to_json()["ok"] is False


# ---------------------------------------------------------------------- passages (issue 24)
def test_best_passage_scores_take_the_best_passage_at_storage_precision():
    query = {"tax": 2.0, "law": 0.5}
    documents = {
        "a": [{"tax": 0.7}, {"tax": 1.3, "law": 0.33}, {"garlic": 9.0}],
        "b": [{"garlic": 1.0}],  # shares nothing
        "c": [{"law": 0.001}],
    }
    best = best_passage_scores(query, documents)
    assert set(best) == {"a", "c"}
    per_passage = expected_scores(query, {str(i): v for i, v in enumerate(documents["a"])})
    assert best["a"] == (max(per_passage.values()), 1)
    assert best["a"][0] != 2.0 * 1.3 + 0.5 * 0.33  # stored weights are rounded to 9 bits


def test_the_passage_documents_tell_the_best_passage_from_a_sum_and_the_first():
    best = best_passage_scores(
        QUERY, {d: [v for _, _, v in parts] for d, parts in PASSAGE_DOCUMENTS.items()}
    )
    sums = {
        d: sum(expected_scores(QUERY, {str(i): v for i, (_, _, v) in enumerate(parts)}).values())
        for d, parts in PASSAGE_DOCUMENTS.items()
    }
    assert best["d1"][1] != 0  # d1's best passage is not its first
    assert best["d1"][0] > best["d2"][0] and sums["d2"] > sums["d1"]  # max and sum disagree
    assert "d4" not in best  # no query token
    assert set(PASSAGE_DOCUMENTS) <= set(DOCUMENTS)


def test_the_nested_objects_limit_is_read_and_compared_with_max_windows():
    assert nested_limit_in({"settings": {NESTED_LIMIT_SETTING: "7"}, "defaults": {}}) == (7, True)
    assert nested_limit_in({"settings": {}, "defaults": {NESTED_LIMIT_SETTING: "10000"}}) == (
        10_000,
        False,
    )
    assert nested_limit_in({}) == (10_000, False)  # not named: the engines' default
    assert nested_limit_warning(64, 64, "x") is None
    warning = nested_limit_warning(64, 65, "index docs")
    assert warning is not None and warning.startswith("index docs: a document of up to 65")
    assert "lower --max-windows to 64" in warning
    unbounded = nested_limit_warning(10_000, None, "new indices")
    assert unbounded is not None and "any number of passages" in unbounded


def test_the_command_prints_the_reports_warnings(monkeypatch):
    from click.testing import CliRunner

    from splade_es.cli import main

    doctor_module = importlib.import_module("splade_es.doctor")  # the package's name is a function

    facts = ClusterFacts("opensearch", "3.8.0", "tar", None, (), 1024, None)
    seen = {}

    def fake_doctor(cluster, **options):
        seen.update(options)
        checks = (Check("index docs", "ok", "splade: nested passages of rank_features vectors"),)
        return DoctorReport(facts, checks, "p", warnings=("index docs: too many passages",))

    monkeypatch.setattr(doctor_module, "doctor", fake_doctor)
    monkeypatch.setattr("splade_es.cli.doctor.connect", lambda config: FakeCluster())
    result = CliRunner().invoke(
        main, ["doctor", "--url", "http://x:9200", "--index", "docs", "--max-windows", "9"]
    )
    assert result.exit_code == 0, result.output
    assert "index docs: too many passages" in result.output
    assert seen["index"] == "docs" and seen["max_windows"] == 9
    assert seen["sparse_field"] == "splade"


class FakeCluster:
    def close(self) -> None:
        pass
