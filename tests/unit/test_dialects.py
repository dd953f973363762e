"""Engine dialects: the exact request bodies per engine and version (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splade_es.engines import FIELD_TYPES, Hybrid, dialect_for, load_template
from splade_es.exceptions import ConfigurationError, UnsupportedFeatureError

ROOT = Path(__file__).resolve().parents[2]


def test_repository_mappings_folder_is_the_packaged_templates():
    files = sorted(p.name for p in (ROOT / "mappings").glob("*.json"))
    assert files == [
        "elasticsearch.rank_features.json",
        "elasticsearch.sparse_vector.json",
        "opensearch.rank_features.json",
        "opensearch.sparse_vector.json",
    ]
    for name in files:
        engine, field_type, _ = name.split(".")
        on_disk = json.loads((ROOT / "mappings" / name).read_text())
        assert on_disk == load_template(engine, field_type)
        props = on_disk["mappings"]["properties"]
        assert props["id"] == {"type": "keyword"}
        assert props["title"]["type"] == props["text"]["type"] == "text"
        assert props["splade"]["type"] == field_type


@pytest.mark.parametrize(
    ("version", "has_index_options", "keeps_source_vectors_setting"),
    [
        ("8.11.0", False, False),
        ("8.18.2", False, False),
        ("8.19.0", True, False),
        ("9.0.3", False, False),
        ("9.1.0", True, False),
        ("9.2.0", True, True),
    ],
)
def test_elasticsearch_sparse_vector_body_follows_the_version(
    version, has_index_options, keeps_source_vectors_setting
):
    body = dialect_for("elasticsearch", version).index_body("sparse_vector", sparse_field="sv")
    field = body["mappings"]["properties"]["sv"]
    assert field["type"] == "sparse_vector"
    assert ("index_options" in field) == has_index_options
    if has_index_options:
        assert field["index_options"] == {"prune": False}
    assert (
        body["settings"].get("index.mapping.exclude_source_vectors") is False
    ) == keeps_source_vectors_setting


def test_versions_without_a_field_type_get_a_clear_error():
    with pytest.raises(UnsupportedFeatureError, match=r"8\.11"):
        dialect_for("elasticsearch", "8.10.0").index_body("sparse_vector")
    with pytest.raises(UnsupportedFeatureError, match=r"3\.3"):
        dialect_for("opensearch", "2.19.0").index_body("sparse_vector")
    with pytest.raises(ConfigurationError, match="unknown field type"):
        dialect_for("opensearch", "2.19.0").index_body("dense")


def test_opensearch_sparse_vector_uses_seismic_and_integer_keys():
    dialect = dialect_for("opensearch", "3.3.0")
    body = dialect.index_body("sparse_vector", shards=3, replicas=0)
    assert body["settings"]["index.sparse"] is True
    assert body["settings"]["number_of_shards"] == 3
    assert body["settings"]["number_of_replicas"] == 0
    assert body["mappings"]["properties"]["splade"]["method"]["name"] == "seismic"
    assert dialect.key_scheme("sparse_vector") == "id"
    assert dialect.key_scheme("rank_features") == "token"


@pytest.mark.parametrize(
    ("engine", "version"), [("elasticsearch", "8.11.0"), ("opensearch", "2.11.0")]
)
def test_rank_feature_query_is_linear_with_boost_equal_to_query_weight(engine, version):
    query = dialect_for(engine, version).sparse_query({"tax": 1.5, "%2E": 0.25}, field="sp")
    clauses = query["bool"]["should"]
    assert clauses == [
        {"rank_feature": {"field": "sp.tax", "linear": {}, "boost": 1.5}},
        {"rank_feature": {"field": "sp.%2E", "linear": {}, "boost": 0.25}},
    ]
    assert "saturation" not in json.dumps(query)


def test_elasticsearch_sparse_vector_query_turns_pruning_off_explicitly():
    dialect = dialect_for("elasticsearch", "9.1.0")
    query = dialect.sparse_query({"a": 1.0}, field="sp", field_type="sparse_vector")
    assert query == {"sparse_vector": {"field": "sp", "query_vector": {"a": 1.0}, "prune": False}}
    config = {"tokens_freq_ratio_threshold": 5, "tokens_weight_threshold": 0.4}
    pruned = dialect.sparse_query(
        {"a": 1.0}, field="sp", field_type="sparse_vector", options={"pruning_config": config}
    )
    assert pruned["sparse_vector"]["prune"] is True
    assert pruned["sparse_vector"]["pruning_config"] == config
    with pytest.raises(UnsupportedFeatureError, match="by vector"):
        dialect_for("elasticsearch", "8.14.0").sparse_query(
            {"a": 1.0}, field="sp", field_type="sparse_vector"
        )
    with pytest.raises(UnsupportedFeatureError):
        dialect.sparse_query({"a": 1.0}, field="sp", style="neural_sparse")


def test_opensearch_neural_sparse_query_tokens_from_2_14():
    query = dialect_for("opensearch", "2.14.0").sparse_query(
        {"a": 1.0}, field="sp", style="neural_sparse"
    )
    assert query == {"neural_sparse": {"sp": {"query_tokens": {"a": 1.0}}}}
    with pytest.raises(UnsupportedFeatureError, match="neural_sparse"):
        dialect_for("opensearch", "2.13.0").sparse_query(
            {"a": 1.0}, field="sp", style="neural_sparse"
        )
    ann = dialect_for("opensearch", "3.3.0").sparse_query(
        {"101": 1.0},
        field="sp",
        field_type="sparse_vector",
        options={"method_parameters": {"k": 10, "top_n": 6}},
    )
    assert ann == {
        "neural_sparse": {
            "sp": {
                "query_tokens": {"101": 1.0},
                "method_parameters": {"k": 10, "top_n": 6, "heap_factor": 1.0},
            }
        }
    }


def test_filters_are_filter_context_and_do_not_loosen_the_sparse_match():
    dialect = dialect_for("opensearch", "2.19.0")
    sparse = dialect.sparse_query({"a": 1.0}, field="sp")
    body = dialect.search_request(sparse, k=5, filters=[{"term": {"lang": "en"}}]).body
    assert body["size"] == 5
    assert body["query"] == {"bool": {"must": [sparse], "filter": [{"term": {"lang": "en"}}]}}


def test_weighted_sum_hybrid_scores_bm25_and_splade_with_complementary_boosts():
    dialect = dialect_for("elasticsearch", "8.11.0")
    sparse = dialect.sparse_query({"a": 1.0}, field="sp")
    lexical = dialect.lexical_query("a b", ["title", "text"])
    request = dialect.search_request(sparse, k=10, lexical=lexical, hybrid=Hybrid(bm25_weight=0.3))
    should = request.body["query"]["bool"]["should"]
    assert should[0] == {"bool": {"must": [sparse], "boost": pytest.approx(0.7)}}
    assert should[1] == {"bool": {"must": [lexical], "boost": 0.3}}
    assert request.body["query"]["bool"]["minimum_should_match"] == 1
    assert request.params == {}


def test_elasticsearch_retrievers_by_version():
    sparse = {"match_all": {}}
    lexical = {"match": {"text": "x"}}
    old = dialect_for("elasticsearch", "8.13.0")
    assert old.hybrid_methods() == ("sum",)
    with pytest.raises(UnsupportedFeatureError, match="rrf"):
        old.search_request(sparse, k=5, lexical=lexical, hybrid=Hybrid(method="rrf"))
    rrf = dialect_for("elasticsearch", "8.14.0").search_request(
        sparse, k=5, lexical=lexical, hybrid=Hybrid(method="rrf"), filters=[{"term": {"a": 1}}]
    )
    retrievers = rrf.body["retriever"]["rrf"]["retrievers"]
    assert retrievers[0] == {"standard": {"query": lexical, "filter": [{"term": {"a": 1}}]}}
    assert rrf.body["retriever"]["rrf"]["rank_constant"] == 60
    assert "query" not in rrf.body
    linear = dialect_for("elasticsearch", "9.0.0").search_request(
        sparse, k=5, lexical=lexical, hybrid=Hybrid(method="linear", bm25_weight=0.25)
    )
    parts = linear.body["retriever"]["linear"]["retrievers"]
    assert [p["weight"] for p in parts] == [0.25, 0.75]
    assert {p["normalizer"] for p in parts} == {"minmax"}
    with pytest.raises(UnsupportedFeatureError, match="linear"):
        dialect_for("elasticsearch", "8.17.0").check_hybrid(Hybrid(method="linear"))


def test_opensearch_hybrid_query_runs_through_a_named_pipeline():
    dialect = dialect_for("opensearch", "2.19.0")
    hybrid = Hybrid(method="linear", bm25_weight=0.2)
    request = dialect.search_request(
        {"match_all": {}},
        k=5,
        lexical={"match": {"text": "x"}},
        hybrid=hybrid,
        filters=[{"term": {"a": 1}}],
    )
    queries = request.body["query"]["hybrid"]["queries"]
    assert all(q["bool"]["filter"] == [{"term": {"a": 1}}] for q in queries)
    assert request.params == {"search_pipeline": hybrid.pipeline_name}
    pipeline = dialect.hybrid_pipeline_body(hybrid)
    processor = pipeline["phase_results_processors"][0]["normalization-processor"]
    assert processor["normalization"] == {"technique": "min_max"}
    assert processor["combination"]["parameters"]["weights"] == [0.2, 0.8]
    rrf = dialect.hybrid_pipeline_body(Hybrid(method="rrf"))
    assert rrf["phase_results_processors"][0]["score-ranker-processor"]["combination"] == {
        "technique": "rrf",
        "parameters": {"rank_constant": 60},  # 2.19 (see test_conformance.py)
    }
    assert dialect_for("opensearch", "2.18.0").hybrid_methods() == ("sum", "linear")
    assert dialect.hybrid_pipeline_body(Hybrid(method="sum")) is None
    # Elasticsearch fuses in its retrievers: no pipeline, whatever the method.
    assert dialect_for("elasticsearch", "9.1.0").hybrid_pipeline_body(Hybrid(method="rrf")) is None


def test_clause_limit_is_read_from_settings_with_a_safe_default():
    os_dialect = dialect_for("opensearch", "2.19.0")
    setting = "indices.query.bool.max_clause_count"
    assert os_dialect.clause_limit({"defaults": {setting: "2048"}}) == 2048
    assert (
        os_dialect.clause_limit({"persistent": {setting: "512"}, "defaults": {setting: "1024"}})
        == 512
    )
    assert os_dialect.clause_limit({}) == 1024
    es = dialect_for("elasticsearch", "8.15.0")
    # Elasticsearch 8+ reports the deprecated setting's default but derives the real limit.
    assert es.clause_limit({"defaults": {setting: "4096"}}) == 1024
    assert es.clause_limit({"transient": {setting: "3000"}}) == 3000


def test_source_with_vectors_asks_elasticsearch_9_2_to_keep_vectors():
    assert dialect_for("elasticsearch", "9.2.0").source_with_vectors(["sp"]) == {
        "includes": ["sp"],
        "exclude_vectors": False,
    }
    assert dialect_for("elasticsearch", "9.1.0").source_with_vectors(["sp"]) == ["sp"]
    assert dialect_for("opensearch", "3.3.0").source_with_vectors(["sp"]) == ["sp"]


def test_every_field_type_is_known_to_both_engines():
    for engine in ("elasticsearch", "opensearch"):
        assert set(dialect_for(engine, "99.0.0").field_types()) == set(FIELD_TYPES)


def test_hybrid_config_validates():
    with pytest.raises(ConfigurationError):
        Hybrid(bm25_weight=1.5)
    with pytest.raises(ConfigurationError):
        Hybrid(method="magic")  # type: ignore[arg-type]
    assert Hybrid(bm25_weight=0.3).pipeline_name == "splade-es-hybrid-linear-0300"
