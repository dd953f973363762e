"""The named stages split out of long orchestrators (issue 22): Spark's and Ray's job steps,
the CLI's model resolution, serve's configuration and search's output, the doctor's facts,
and evaluation's bm25 path. Each is tested on its own, with fakes where IO is involved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from splade_es import defaults
from splade_es.connect import Cluster
from splade_es.doctor import _Doctor
from splade_es.evaluate import run_queries
from splade_es.query import PruneReport
from splade_es.search import Hit, SearchResult
from splade_es.spark import _fresh_dead_letter_file, _read_dead_letters
from tests.unit.test_conformance import _client_for
from tests.unit.test_elasticsearch_client_calls import FakeElasticsearch


# ---------------------------------------------------------------------- spark
def test_spark_partition_dead_letter_file_starts_empty(tmp_path: Path) -> None:
    assert _fresh_dead_letter_file(None, 3) is None  # no folder: no dead letters kept
    earlier = tmp_path / "part-00003.jsonl"
    earlier.write_text('{"id": "from a failed attempt"}\n')
    other = tmp_path / "part-00004.jsonl"
    other.write_text('{"id": "another partition"}\n')
    assert _fresh_dead_letter_file(str(tmp_path), 3) == str(earlier)
    assert not earlier.exists()  # a retried partition starts afresh
    assert other.exists()  # only its own file


def test_spark_dead_letters_are_read_partition_by_partition(tmp_path: Path) -> None:
    (tmp_path / "part-00001.jsonl").write_text('{"id": "c"}\n')
    (tmp_path / "part-00000.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    (tmp_path / "notes.jsonl").write_text('{"id": "not a partition"}\n')
    assert _read_dead_letters(str(tmp_path)) == ({"id": "a"}, {"id": "b"}, {"id": "c"})
    assert _read_dead_letters(None) == ()


def test_spark_partition_id_needs_a_spark_task() -> None:
    pytest.importorskip("pyspark")
    from splade_es.spark import _partition_id

    with pytest.raises(RuntimeError, match="Spark task"):
        _partition_id()


# ---------------------------------------------------------------------- ray
def test_ray_actor_arguments_pick_the_device_from_the_gpus(monkeypatch: Any) -> None:
    from splade_es.ray import _actor_arguments
    from splade_es.scaleout import CRASH_ONCE_ENV

    monkeypatch.setenv(CRASH_ONCE_ENV, "/tmp/marker")
    config: Any = object()
    on_gpu = _actor_arguments("m", "client", config, 1.0, "text")  # type: ignore[arg-type]
    assert on_gpu == {
        "model": "m",
        "client_config": "client",
        "config": config,
        "device": "cuda",
        "crash_marker": "/tmp/marker",
        "json_field": "text",
    }
    monkeypatch.delenv(CRASH_ONCE_ENV)
    on_cpu = _actor_arguments("m", "client", config, 0.0, None)  # type: ignore[arg-type]
    assert on_cpu["device"] == "cpu" and on_cpu["crash_marker"] is None


def test_ray_dead_letters_are_written_one_json_object_a_line(tmp_path: Path) -> None:
    from splade_es.ray import _write_dead_letters
    from splade_es.scaleout import ScaleOutSummary, WorkerCounts

    total = WorkerCounts(read=2, indexed=0, dead_lettered=2)
    letters = ({"id": "1", "reason": "é"}, {"id": "2", "reason": "x"})
    path = tmp_path / "dead.jsonl"
    _write_dead_letters(str(path), ScaleOutSummary({"w": total}, total, letters))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == list(letters)
    assert "é" in lines[0]  # not escaped


# ---------------------------------------------------------------------- cli
def _checkpoint_with_code(folder: Path) -> Path:
    folder.mkdir()
    config = {"model_type": "bert", "auto_map": {"AutoModelForMaskedLM": "custom.Model"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text("class Model: pass\n")
    return folder


def test_a_local_checkpoint_with_code_needs_trust(tmp_path: Path) -> None:
    from splade_es.cli.app import NoModel, _refuse_untrusted_code

    folder = _checkpoint_with_code(tmp_path / "ckpt")
    with pytest.raises(NoModel, match="trust-remote-code"):
        _refuse_untrusted_code(str(folder), trusted=False)
    _refuse_untrusted_code(str(folder), trusted=True)
    _refuse_untrusted_code("org/hub-model", trusted=False)  # checked when it loads
    _refuse_untrusted_code(str(tmp_path), trusted=False)  # not a checkpoint: the load says so


def test_the_model_resolver_keeps_a_given_model_and_checks_its_code(tmp_path: Path) -> None:
    import click

    from splade_es.cli.app import NoModel, _model_resolver

    resolve = _model_resolver(required=False)
    command = click.Command("x")
    untrusted = click.Context(command)
    untrusted.params = {"trust_remote_code": False}
    assert resolve(untrusted, click.Option(["--model"]), "org/model") == "org/model"
    folder = _checkpoint_with_code(tmp_path / "ckpt")
    with pytest.raises(NoModel):
        resolve(untrusted, click.Option(["--model"]), str(folder))
    trusted = click.Context(command)
    trusted.params = {"trust_remote_code": True}
    assert resolve(trusted, click.Option(["--model"]), str(folder)) == str(folder)


def _search_result() -> SearchResult:
    hits = (
        Hit(id="d1", score=3.0, source={"title": "T1", "splade": {"a": 1.0, "b": 2.0}}),
        Hit(id="d2", score=1.0, source={"title": "T2"}),  # no vector stored
    )
    return SearchResult(
        hits=hits,
        features={"a": 2.0, "c": 1.0},
        prune=PruneReport(kept=2, dropped=1, kept_weight=0.75, clause_limited=False),
        encode_ms=1.23456,
        search_ms=2.5,
        took_ms=2,
        request=None,  # type: ignore[arg-type]
    )


def test_search_rows_pair_hits_with_their_matched_tokens() -> None:
    from splade_es.cli.searching import _hits_json, _matched_rows

    result = _search_result()
    rows = _matched_rows(result, "splade", lambda key: f"<{key}>")
    assert [hit.id for hit, _ in rows] == ["d1", "d2"]
    (_, matched), (_, none) = rows
    assert [(c.token, c.contribution) for c in matched] == [("<a>", 2.0)]  # a only: c not stored
    assert none == ()
    out = _hits_json(result, rows)
    assert out["hits"][0] == {
        "id": "d1",
        "score": 3.0,
        "title": "T1",
        "top_tokens": [{"token": "<a>", "contribution": 2.0}],
    }
    assert out["hits"][1]["top_tokens"] == []
    assert (out["query_tokens"], out["pruned_tokens"]) == (2, 1)
    assert (out["encode_ms"], out["search_ms"]) == (1.235, 2.5)


def test_serve_options_become_its_config(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    from splade_es.cli.serve import _enrich_config, _serve_config, serve

    args = ["--model", str(tmp_path / "model"), "--url", "http://es:9200", "--listen", ":0"]
    args += ["--enrich", "docs*", "--enrich", "news-*:headline:vec", "--max-client-requests", "0"]
    opts = dict(serve.make_context("serve", args).params)
    opts.pop("listen"), opts.pop("log_level")
    enrich = _enrich_config(opts)
    rules = [(r.pattern, r.text_fields, r.sparse_field) for r in enrich.rules]
    assert rules == [
        ("docs*", defaults.TEXT_FIELDS, defaults.VECTOR_FIELD),
        ("news-*", ("headline",), "vec"),
    ]
    config = _serve_config(opts, enrich, "127.0.0.1")
    assert config.listen_host == "127.0.0.1" and config.api_keys is None
    assert config.model == str(tmp_path / "model")
    assert config.connection.hosts == ("http://es:9200",)
    assert config.max_batch == defaults.BATCH_SIZE
    assert config.max_body_bytes == 100 * 1024 * 1024
    assert config.max_client_requests is None  # 0: no limit
    assert config.enrich is enrich
    assert "url" not in opts  # the connection options were taken


# ---------------------------------------------------------------------- doctor
class InfoElasticsearch(FakeElasticsearch):
    """The fake node, also answering what the doctor reads about the cluster."""

    def handle(self, method: str, target: str, body: bytes | None) -> tuple[int, Any]:
        if target.startswith("/_cat/plugins"):
            return 200, [{"component": "analysis-icu"}, {"component": "analysis-icu"}]
        if target.startswith("/_license"):
            return 200, {"license": {"type": "basic", "status": "active"}}
        if target.startswith("/_cluster/settings"):
            return 200, {"persistent": {"indices.query.bool.max_clause_count": "4096"}}
        return super().handle(method, target, body)


def test_doctor_facts_are_what_the_cluster_says_about_itself() -> None:
    fake = InfoElasticsearch("8.15.0")
    doctor = _Doctor(Cluster(_client_for(fake), "elasticsearch", (8, 15, 0)), "x")
    facts = doctor._facts()
    assert (facts.engine, facts.version, facts.distribution) == (
        "elasticsearch",
        "8.15.0",
        "default",
    )
    assert facts.plugins == ("analysis-icu",) and doctor.plugins == facts.plugins
    assert facts.clause_limit == 4096
    assert facts.clause_limit_probed is None  # measured later, by the run
    assert facts.license is not None and "basic" in facts.license


# ---------------------------------------------------------------------- evaluate
class SearchingElasticsearch(FakeElasticsearch):
    """The fake node answering searches with one hit per query word."""

    def handle(self, method: str, target: str, body: bytes | None) -> tuple[int, Any]:
        if target.startswith("/docs/_search"):
            query = json.loads(body or b"{}")["query"]
            words = query["multi_match"]["query"].split()
            hits = [{"_id": w, "_score": 1.0 / (i + 1)} for i, w in enumerate(words)]
            self.requests.append((method, target, {}, query))
            return 200, {"took": 1, "hits": {"hits": hits}}
        return super().handle(method, target, body)


def test_bm25_mode_searches_the_text_fields_even_with_a_builder() -> None:
    from splade_es.query import QueryBuilder

    fake = SearchingElasticsearch("8.15.0")
    builder = QueryBuilder.for_engine("elasticsearch")  # ignored in bm25 mode
    result = run_queries(
        _client_for(fake), "docs", {"q1": "tax code", "q2": "  "}, mode="bm25", builder=builder
    )
    assert result.run == {"q1": {"tax": 1.0, "code": 0.5}, "q2": {}}
    assert fake.requests[0][3]["multi_match"]["fields"] == list(defaults.TEXT_FIELDS)
    assert result.encode_ms == [0.0, 0.0] and result.empty_queries == 0


def test_evaluation_modes_are_checked_before_anything_is_sent() -> None:
    from splade_es.evaluate import _check_mode
    from splade_es.exceptions import ConfigurationError

    _check_mode("bm25", None)  # bm25 encodes nothing
    with pytest.raises(ConfigurationError, match="mode"):
        _check_mode("dense", None)
    with pytest.raises(ConfigurationError, match="needs an encoder"):
        _check_mode("hybrid", None)


def test_ray_gpus_per_worker_as_requested() -> None:
    from splade_es.ray import _gpus_per_worker

    assert _gpus_per_worker(0.5) == 0.5
    assert _gpus_per_worker(0.0) == 0.0  # CPU encoding asked for: Ray is not consulted
