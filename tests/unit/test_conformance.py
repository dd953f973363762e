"""Request bodies pinned to the engines' own sources and API specifications.

No real Elasticsearch or OpenSearch runs in CI, and the osmem emulator accepts bodies real
engines refuse, so each test here names the engine source (repository, tag or branch, path)
whose behaviour it follows. ``splade-es doctor`` checks the same things on a live cluster.
"""

from __future__ import annotations

import json

import pytest

from splade_es.engines import Hybrid, dialect_for
from splade_es.engines.opensearch import MAX_QUERY_WEIGHT, SEISMIC_QUERY_DEFAULTS
from splade_es.exceptions import ConfigurationError, InputError, UnsupportedFeatureError
from splade_es.ingest.index_source import read_index
from splade_es.migrate import target_body, verify
from tests.unit.test_elasticsearch_client_calls import FakeElasticsearch

SPARSE = {"sparse_vector": {"field": "sp", "query_vector": {"a": 1.0}, "prune": False}}
LEXICAL = {"multi_match": {"query": "a", "fields": ["title", "text"]}}


# ---------------------------------------------------------------------- defect 1
@pytest.mark.parametrize(
    ("version", "parameter"),
    [("8.14.0", "window_size"), ("8.14.3", "window_size"), ("8.15.0", "rank_window_size")],
)
def test_rrf_retriever_window_parameter_follows_the_version(version, parameter):
    """elastic/elasticsearch-specification, branch 8.14, specification/_types/Retriever.ts:
    ``RRFRetriever { retrievers, rank_constant?, window_size? }``; branch 8.15 renames it to
    ``rank_window_size`` (PR #2562, "renaming window_size to rank_window_size"). An unknown
    retriever field is a 400, so 8.14 must get ``window_size``."""
    request = dialect_for("elasticsearch", version).search_request(
        SPARSE, k=7, lexical=LEXICAL, hybrid=Hybrid(method="rrf", rank_window_size=50)
    )
    rrf = request.body["retriever"]["rrf"]
    assert rrf[parameter] == 50
    other = {"window_size", "rank_window_size"} - {parameter}
    assert not other & set(rrf)
    # The window never shrinks below the page size.
    big = dialect_for("elasticsearch", version).search_request(
        SPARSE, k=80, lexical=LEXICAL, hybrid=Hybrid(method="rrf", rank_window_size=50)
    )
    assert big.body["retriever"]["rrf"][parameter] == 80


# ---------------------------------------------------------------------- defect 2
@pytest.mark.parametrize(
    ("version", "nested"),
    [("2.19.0", True), ("2.19.3", True), ("3.0.0", True), ("3.1.0", False), ("3.3.2", False)],
)
def test_score_ranker_rank_constant_goes_where_the_version_reads_it(version, nested):
    """opensearch-project/neural-search, src/main/java/org/opensearch/neuralsearch/processor/
    factory/RRFProcessorFactory.java: at tags 2.19.0.0 and 3.0.0.0 ``create`` passes only
    ``combination.parameters`` to ``createNormalization(rrf, params)`` (where rank_constant is
    read); from 3.1.0.0 it reads ``combination.rank_constant`` and hands ``parameters`` to
    ``RRFScoreCombinationTechnique``, whose ``SUPPORTED_PARAMS`` is ``weights`` only. A
    constant in the wrong place is silently 60 (2.19 / 3.0) or a 400 (3.1+)."""
    body = dialect_for("opensearch", version).hybrid_pipeline_body(
        Hybrid(method="rrf", rank_constant=17)
    )
    combination = body["phase_results_processors"][0]["score-ranker-processor"]["combination"]
    assert combination["technique"] == "rrf"
    if nested:
        assert combination == {"technique": "rrf", "parameters": {"rank_constant": 17}}
    else:
        assert combination == {"technique": "rrf", "rank_constant": 17}
    assert Hybrid(method="rrf", rank_constant=17).pipeline_name.endswith("-17")
    # RRFNormalizationTechnique.validateRankConstant (2.19.0.0): "rank constant must be in the
    # interval between 1 and 10000".
    for bad in (0, 10_001):
        with pytest.raises(ConfigurationError, match="rank_constant"):
            Hybrid(method="rrf", rank_constant=bad)


# ---------------------------------------------------------------------- defect 3
def test_seismic_sparse_vector_query_always_sends_method_parameters():
    """opensearch-project/neural-search 3.3.0.0,
    src/main/java/org/opensearch/neuralsearch/query/NeuralSparseQueryBuilder.java ``doToQuery``:
    without ``method_parameters`` (``sparseAnnQueryBuilder == null``) a SEISMIC field gets the
    plain FeatureField query on every segment, and SEISMIC postings
    (sparse/codec/SparsePostingsEnum.java: ``advance`` throws UnsupportedOperationException)
    cannot serve it above ``approximate_threshold``. With them,
    sparse/query/SparseQueryWeight.java ``scorerSupplier`` runs the exact fallback query below
    the threshold and SEISMIC above. Defaults from sparse/query/SparseAnnQueryBuilder.java
    (DEFAULT_QUERY_CUT 10, DEFAULT_TOP_K 10, DEFAULT_HEAP_FACTOR 1.0f)."""
    dialect = dialect_for("opensearch", "3.3.0")
    plain = dialect.sparse_query({"7": 1.5}, field="sp", field_type="sparse_vector")
    assert plain["neural_sparse"]["sp"]["method_parameters"] == {
        "top_n": 10,
        "k": 10,
        "heap_factor": 1.0,
    }
    assert SEISMIC_QUERY_DEFAULTS == {"top_n": 10, "k": 10, "heap_factor": 1.0}
    tuned = dialect.sparse_query(
        {"7": 1.5},
        field="sp",
        field_type="sparse_vector",
        options={"method_parameters": {"k": 100, "top_n": 30}},
    )
    assert tuned["neural_sparse"]["sp"]["method_parameters"] == {
        "top_n": 30,
        "k": 100,
        "heap_factor": 1.0,
    }
    # SparseAnnQueryBuilder.fromXContent: any other key is "[...] unknown field".
    with pytest.raises(ConfigurationError, match="unknown method_parameters"):
        dialect.sparse_query(
            {"7": 1.5},
            field="sp",
            field_type="sparse_vector",
            options={"method_parameters": {"ef_search": 5}},
        )


@pytest.mark.parametrize("version", ["2.19.0", "3.3.0"])
def test_method_parameters_on_a_rank_features_field_are_refused(version):
    """neural-search 2.19.0.0 NeuralSparseQueryBuilder.fromXContent: ``method_parameters`` is
    "unknown token" (a 400); at 3.3.0.0 it parses but ``doToQuery`` ignores it on a
    non-SEISMIC field. Refused on both, so nothing is silently dropped."""
    with pytest.raises(ConfigurationError, match="sparse_vector"):
        dialect_for("opensearch", version).sparse_query(
            {"a": 1.0},
            field="sp",
            style="neural_sparse",
            options={"method_parameters": {"k": 5}},
        )
    plain = dialect_for("opensearch", version).sparse_query(
        {"a": 1.0}, field="sp", style="neural_sparse"
    )
    assert plain == {"neural_sparse": {"sp": {"query_tokens": {"a": 1.0}}}}


# ---------------------------------------------------------------------- defect 4
class VectorHidingElasticsearch(FakeElasticsearch):
    """The fake 9.2 node, leaving vector fields out of ``_source`` the way 9.2 does unless a
    request asks ``"_source": {"exclude_vectors": false}``; plus refresh, count and mget."""

    def _vector_fields(self, index: str) -> set[str]:
        props = self.indices[index].get("mappings", {}).get("properties", {})
        return {k for k, v in props.items() if v.get("type") in ("dense_vector", "sparse_vector")}

    def _shown(self, index: str, source: dict, spec: object) -> dict:
        keep = isinstance(spec, dict) and spec.get("exclude_vectors") is False
        hidden = set() if keep else self._vector_fields(index)
        return {k: v for k, v in source.items() if k not in hidden}

    def handle(self, method, target, body):
        path = target.split("?")[0]
        parts = [p for p in path.split("/") if p]
        payload = json.loads(body) if body else None
        if parts[-1:] == ["_refresh"]:
            self.requests.append((method, path, {}, payload))
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if parts[-1:] == ["_count"]:
            self.requests.append((method, path, {}, payload))
            return 200, {"count": len(self.docs[parts[0]])}
        if parts[-1:] == ["_mget"]:
            self.requests.append((method, path, {}, payload))
            index = parts[0]
            docs = []
            for doc in payload["docs"]:
                stored = self.docs[index].get(doc["_id"])
                found = {"_index": index, "_id": doc["_id"], "found": stored is not None}
                if stored is not None:
                    found["_source"] = self._shown(index, stored, doc.get("_source", True))
                docs.append(found)
            return 200, {"docs": docs}
        status, response = super().handle(method, target, body)
        if path == "/_search" and payload and "pit" in payload:
            index = payload["pit"]["id"].removeprefix("pit-")
            for hit in response["hits"]["hits"]:
                hit["_source"] = self._shown(index, hit["_source"], payload.get("_source", True))
        return status, response


def test_elasticsearch_9_2_reads_documents_back_with_their_vectors():
    """elastic/elasticsearch-specification, branch 9.2:
    specification/_global/search/_types/SourceFilter.ts (``exclude_vectors``: "If true,
    vector fields are excluded from the returned source") used by _search ``_source`` and by
    each _mget doc's ``_source`` (specification/_global/mget/types.ts ``Operation._source:
    SourceConfig``). 9.2 excludes them by default, so every read-back asks to keep them."""
    assert dialect_for("elasticsearch", "9.2.0").full_source() == {"exclude_vectors": False}
    assert dialect_for("elasticsearch", "9.1.0").full_source() is True
    assert dialect_for("opensearch", "3.3.0").full_source() is True


def _vector_index(fake: VectorHidingElasticsearch, index: str, docs: dict[str, dict]) -> None:
    fake.indices[index] = {
        "mappings": {
            "properties": {
                "title": {"type": "text"},
                "emb": {"type": "dense_vector", "dims": 2},
                "splade": {"type": "sparse_vector"},
            }
        }
    }
    fake.docs[index] = docs


def _client_for(fake):
    import elasticsearch
    from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
    from elastic_transport._node._base import NodeApiResponse

    class Node(BaseNode):
        def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
            status, payload = fake.handle(method, target, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            response_headers = HttpHeaders(
                {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}
            )
            meta = ApiResponseMeta(status, "1.1", response_headers, 0.0, self.config)
            return NodeApiResponse(meta, data)

    return elasticsearch.Elasticsearch("http://fake:9200", node_class=Node)


def test_migration_reader_and_verification_keep_vectors_on_9_2():
    fake = VectorHidingElasticsearch()
    client = _client_for(fake)
    docs = {f"d{i}": {"title": f"t{i}", "emb": [0.5, float(i)]} for i in range(3)}
    _vector_index(fake, "src", docs)
    dialect = dialect_for("elasticsearch", "9.2.0")

    records = list(read_index(client, "src", dialect=dialect, page_size=2))
    assert [r.doc["emb"] for r in records] == [d["emb"] for d in docs.values()]
    searches = [r[3] for r in fake.requests if r[1] == "/_search"]
    assert searches and all(s["_source"] == {"exclude_vectors": False} for s in searches)

    # A copy that lost its dense vectors: verification must see it.
    _vector_index(
        fake,
        "dst",
        {i: {"title": d["title"], "splade": {"a": 1.0}} for i, d in docs.items()},
    )
    result = verify(client, "src", "dst", dialect=dialect, sparse_field="splade", sample=3)
    assert not result.ok
    assert sorted(result.mismatches) == [("d0", "emb"), ("d1", "emb"), ("d2", "emb")]
    mget = next(r[3] for r in fake.requests if r[1] == "/dst/_mget")
    assert all(d["_source"] == {"exclude_vectors": False} for d in mget["docs"])

    # A faithful copy passes.
    _vector_index(fake, "ok", {i: {**d, "splade": {"a": 1.0}} for i, d in docs.items()})
    assert verify(client, "src", "ok", dialect=dialect, sparse_field="splade", sample=3).ok


# ---------------------------------------------------------------------- defect 5
@pytest.mark.parametrize("bm25_weight", [0, 1, 0.25])
def test_normalization_processor_weights_are_doubles(bm25_weight):
    """opensearch-project/neural-search 2.10.0.0 .. 3.3.0.0,
    src/main/java/org/opensearch/neuralsearch/processor/combination/ScoreCombinationUtil.java
    ``getWeights``: ``((List<Double>) params.get("weights")).stream().map(Double::floatValue)``.
    A JSON ``0`` parses as an Integer: ClassCastException. So weights are always floats."""
    body = dialect_for("opensearch", "2.19.0").hybrid_pipeline_body(
        Hybrid(method="linear", bm25_weight=bm25_weight)
    )
    combination = body["phase_results_processors"][0]["normalization-processor"]["combination"]
    weights = combination["parameters"]["weights"]
    assert all(type(w) is float for w in weights)
    assert weights == [float(bm25_weight), 1.0 - bm25_weight]
    text = json.dumps(weights)
    assert all("." in part for part in text.strip("[]").split(","))


# ---------------------------------------------------------------------- minor findings
def test_point_in_time_reader_is_refused_without_shard_doc():
    """OpenSearch added the ``_shard_doc`` sort in 3.3.0 (opensearch-project/OpenSearch PR
    #18924, server/src/main/java/org/opensearch/search/sort/ShardDocSortBuilder.java); before,
    a PIT sorted on it is a 400, and on ``_doc`` alone it pages inexactly across shards."""
    old = dialect_for("opensearch", "2.19.0")
    with pytest.raises(UnsupportedFeatureError, match="scroll"):
        next(read_index(object(), "src", dialect=old, method="pit"))
    assert old.pit_sort() is None  # "auto" reads with a scroll
    assert dialect_for("opensearch", "3.3.0").check_pit_reader() == ["_shard_doc"]
    assert dialect_for("elasticsearch", "8.11.0").check_pit_reader() == ["_shard_doc"]


def test_neural_sparse_query_weights_must_be_in_the_lucene_range():
    """apache/lucene, lucene/core/src/java/org/apache/lucene/document/FeatureField.java
    ``newLinearQuery``: "weight must be in (0, 64]" (MAX_WEIGHT = Long.SIZE); neural-search
    NeuralSparseQueryBuilder.doToQuery passes each query weight to it. Refused, not scaled
    (see opensearch.check_query_weights)."""
    dialect = dialect_for("opensearch", "2.19.0")
    ok = dialect.sparse_query({"a": MAX_QUERY_WEIGHT}, field="sp", style="neural_sparse")
    assert ok["neural_sparse"]["sp"]["query_tokens"] == {"a": 64.0}
    with pytest.raises(InputError, match=r"'big'.*64\.5.*\(0, 64\]") as error:
        dialect.sparse_query({"a": 1.0, "big": 64.5}, field="sp", style="neural_sparse")
    assert error.value.field == "sp"
    with pytest.raises(InputError, match="weight 0"):
        dialect.sparse_query({"a": 0.0}, field="sp", style="neural_sparse")
    # The rank_feature style puts the weight in ``boost``, which has no such limit; so does
    # Elasticsearch's sparse_vector query (x-pack ml WeightedTokensUtils: BoostQuery per token).
    assert dialect.sparse_query({"a": 100.0}, field="sp")["bool"]["should"][0]["rank_feature"][
        "boost"
    ] == pytest.approx(100.0)
    es = dialect_for("elasticsearch", "8.15.0")
    query = es.sparse_query({"a": 100.0}, field="sp", field_type="sparse_vector")
    assert query["sparse_vector"]["query_vector"] == {"a": 100.0}


def _source_info(index_settings: dict) -> dict:
    return {
        "settings": {"index": index_settings},
        "mappings": {"properties": {"title": {"type": "text"}}},
    }


def test_settings_copy_drops_elasticsearch_private_settings_and_keeps_allocation():
    """Settings as ``GET /<index>`` returns them. Time series (``index.mode``,
    ``routing_path``, ``time_series.start_time/end_time``, ``look_ahead_time``), downsample
    (``index.downsample.*``) and searchable snapshot mounts (``index.store.type: snapshot``,
    ``index.store.snapshot.*``, elastic/elasticsearch server/src/main/java/org/elasticsearch/
    snapshots/SearchableSnapshotsSettings.java) describe one index only."""
    settings = {
        "number_of_shards": "2",
        "number_of_replicas": "1",
        "uuid": "abc",
        "creation_date": "1700000000000",
        "provided_name": "metrics-2024",
        "version": {"created": "8500003"},
        "mode": "time_series",
        "routing_path": ["host"],
        "time_series": {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-01-02T00:00:00Z"},
        "look_ahead_time": "2h",
        "downsample": {"source": {"name": "metrics-raw", "uuid": "u"}, "status": "success"},
        "store": {"type": "snapshot", "snapshot": {"snapshot_name": "s", "partial": "true"}},
        "recovery": {"type": "snapshot_prewarm"},
        "routing": {
            "allocation": {
                "include": {"_tier_preference": "data_frozen", "zone": "a"},
                "require": {"box": "hot"},
                "initial_recovery": {"_id": "node-1"},
            }
        },
        "analysis": {"analyzer": {"std": {"type": "standard"}}},
    }
    body = target_body(
        _source_info(settings),
        dialect=dialect_for("elasticsearch", "8.15.0"),
        sparse_field="splade",
        field_type="rank_features",
    )
    assert body["settings"]["index"] == {
        "number_of_shards": "2",
        "number_of_replicas": "1",
        "routing": {"allocation": {"include": {"zone": "a"}, "require": {"box": "hot"}}},
        "analysis": {"analyzer": {"std": {"type": "standard"}}},
    }
    assert body["mappings"]["properties"]["splade"] == {"type": "rank_features"}
    # A plain index keeps its tier preference and a non-time-series mode.
    plain = dialect_for("elasticsearch", "8.15.0").copyable_settings(
        {"mode": "logsdb", "routing": {"allocation": {"include": {"_tier_preference": "d"}}}}
    )
    assert plain == {
        "mode": "logsdb",
        "routing": {"allocation": {"include": {"_tier_preference": "d"}}},
    }


def test_settings_copy_drops_opensearch_remote_store_and_keeps_replication_type():
    """OpenSearch ``index.remote_store.*`` (segment/translog repositories) and searchable
    snapshot settings (``index.store.type: remote_snapshot``, ``index.searchable_snapshot.*``)
    belong to one index; ``index.replication.type`` is a user choice (SEGMENT/DOCUMENT)."""
    settings = {
        "number_of_shards": "1",
        "uuid": "x",
        "replication": {"type": "SEGMENT"},
        "remote_store": {
            "enabled": "true",
            "segment": {"repository": "seg-repo"},
            "translog": {"repository": "tlog-repo"},
        },
        "routing": {"allocation": {"exclude": {"_name": "node-3"}}},
    }
    copied = dialect_for("opensearch", "2.19.0").copyable_settings(settings)
    assert copied == {
        "number_of_shards": "1",
        "replication": {"type": "SEGMENT"},
        "routing": {"allocation": {"exclude": {"_name": "node-3"}}},
    }
    mounted = dialect_for("opensearch", "2.19.0").copyable_settings(
        {
            "store": {"type": "remote_snapshot"},
            "searchable_snapshot": {"repository": "r", "snapshot_id": {"name": "s"}},
            "number_of_shards": "1",
        }
    )
    assert mounted == {"number_of_shards": "1"}
    assert settings["remote_store"]["enabled"] == "true"  # the input is not modified
