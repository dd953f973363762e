"""Passages (issue 24): the nested layout, its query and its hits, pinned to the engines'
sources, as ``test_conformance.py`` does for the flat field.

A long document is stored as one nested object per passage
(``{"vector": {...}, "start": 0, "end": 812}``) and scored by its best passage. The facts:

* ``nested`` + ``score_mode: max`` is the maximum of the child scores: ``parseScoreMode``
  maps ``"max"`` to Lucene ``ScoreMode.Max`` (the default is ``Avg``), and ``doToQuery``
  builds a ``ToParentBlockJoinQuery`` with it. elastic/elasticsearch v8.15.0 and v9.1.0,
  opensearch-project/OpenSearch 2.19.6 and 3.3.2 (their released sources), all
  ``server/src/main/java/org/{elasticsearch,opensearch}/index/query/NestedQueryBuilder.java``.
* Nested inner hits: ``InnerHitBuilder`` (same directory) defaults to 3 hits; without a sort,
  ``NestedQueryBuilder.NestedInnerHitSubContext.topDocs`` collects them by score
  (``TopScoreDocCollector``), best first. Their ``_source`` is the root document's filtered by
  full paths (``<field>.start``), then cut down to the passage object: Elasticsearch
  ``server/src/main/java/org/elasticsearch/search/fetch/subphase/FetchSourcePhase.java``
  ``extractNested`` after ``source.filter``; OpenSearch ``search/fetch/FetchPhase.java``
  ``prepareNestedHitContext`` (the passage wrapped back under its path "so that features like
  source filtering ... work") and ``FetchSourcePhase.getNestedSource``.
* ``sparse_vector`` inside ``nested`` on Elasticsearch: what ``semantic_text`` maps and queries
  (elastic/elasticsearch ``x-pack/plugin/inference/src/main/java/org/elasticsearch/xpack/
  inference/mapper/SemanticTextFieldMapper.java``: a nested ``chunks`` object whose
  ``embeddings`` is a ``sparse_vector``, queried with ``new NestedQueryBuilder(path, query,
  ScoreMode.Max)``). Its mapper (v9.1.0 ``index/mapper/vectors/SparseVectorFieldMapper.java``
  ``parse``) writes to ``context.doc()``, the passage's own Lucene document.
* SEISMIC ``sparse_vector`` inside ``nested`` on OpenSearch 3.3: the mapper, codec and query
  work per Lucene document and per field name (opensearch-project/neural-search 3.3.2.0
  ``sparse/mapper/SparseVectorFieldMapper.java`` ``parseCreateField``,
  ``sparse/common/PredicateUtils.java`` ``segmentInfo.maxDoc() >= approximate_threshold``,
  ``sparse/query/SparseQueryWeight.java`` ``scorerSupplier``: the exact fallback below it,
  ``SeismicBaseScorer.HeapWrapper.toOrderedList`` hands the block join doc ids in order). So
  a nested one is exact below the threshold, which counts passages and parents.
* The ``hybrid`` query keeps its sub-queries' inner hits from neural-search 3.0.0.0
  (``query/HybridQueryBuilder.java`` ``extractInnerHitBuilders``, PR #1253); 2.19.x has no
  such method and drops them.
"""

from __future__ import annotations

import pytest

from splade_es import defaults
from splade_es.engines import Hybrid, dialect_for
from splade_es.engines.base import Dialect
from splade_es.exceptions import ConfigurationError, UnsupportedFeatureError
from splade_es.query import QueryBuilder, field_layout_from_mapping, field_type_from_mapping
from splade_es.search import Passage, best_passage, hits_of, passages_of
from splade_es.sparse import SparseBatch, Vocabulary

NESTED_SOURCE = ["sp.start", "sp.end"]
VOCAB = Vocabulary(["[CLS]", "tax", "code", "."], special_ids={0})


def _nested(body: dict) -> dict:
    return body["mappings"]["properties"]["sp"]


# ---------------------------------------------------------------------- index bodies
@pytest.mark.parametrize(
    ("engine", "version", "field_type", "vector"),
    [
        ("elasticsearch", "8.15.0", "rank_features", {"type": "rank_features"}),
        ("elasticsearch", "9.1.0", "rank_features", {"type": "rank_features"}),
        ("elasticsearch", "8.15.0", "sparse_vector", {"type": "sparse_vector"}),
        (
            "elasticsearch",
            "8.19.0",
            "sparse_vector",
            {"type": "sparse_vector", "index_options": {"prune": False}},
        ),
        (
            "elasticsearch",
            "9.2.0",
            "sparse_vector",
            {"type": "sparse_vector", "index_options": {"prune": False}},
        ),
        ("opensearch", "2.19.0", "rank_features", {"type": "rank_features"}),
        ("opensearch", "3.3.0", "rank_features", {"type": "rank_features"}),
        (
            "opensearch",
            "3.3.0",
            "sparse_vector",
            {"type": "sparse_vector", "method": {"name": "seismic"}},
        ),
    ],
)
def test_passages_index_body_nests_todays_sparse_field(engine, version, field_type, vector):
    """The passages field is ``nested`` with today's sparse field mapping (version-adjusted) as
    its ``vector`` and integer offsets; settings are the flat layout's, ``index.sparse`` for
    SEISMIC and 9.2's ``exclude_source_vectors: false`` included."""
    dialect = dialect_for(engine, version)
    flat = dialect.index_body(field_type, sparse_field="sp", replicas=0)
    body = dialect.index_body(field_type, sparse_field="sp", replicas=0, passages=True)
    assert _nested(flat) == vector
    assert _nested(body) == {
        "type": "nested",
        "properties": {
            "vector": vector,
            "start": {"type": "integer"},
            "end": {"type": "integer"},
        },
    }
    assert body["settings"] == flat["settings"]
    assert {k: v for k, v in body["mappings"]["properties"].items() if k != "sp"} == {
        k: v for k, v in flat["mappings"]["properties"].items() if k != "sp"
    }
    if engine == "opensearch" and field_type == "sparse_vector":
        assert body["settings"]["index.sparse"] is True
    if version == "9.2.0" and field_type == "sparse_vector":
        assert body["settings"]["index.mapping.exclude_source_vectors"] is False
    assert (defaults.PASSAGE_VECTOR, defaults.PASSAGE_START, defaults.PASSAGE_END) == (
        "vector",
        "start",
        "end",
    )


@pytest.mark.parametrize(
    ("engine", "version"), [("elasticsearch", "8.10.0"), ("opensearch", "2.19.0")]
)
def test_passages_refuse_a_field_type_the_version_lacks(engine, version):
    with pytest.raises(UnsupportedFeatureError, match="sparse_vector"):
        dialect_for(engine, version).index_body("sparse_vector", passages=True)
    with pytest.raises(UnsupportedFeatureError):
        QueryBuilder(dialect_for(engine, version), field_type="sparse_vector", passages=True)


def test_a_passages_refusal_is_one_configuration_error_line():
    """The capability check a dialect answers: every field type of every supported version
    holds passages today (see the module docstring); one that cannot refuses here, before any
    index or query is made."""

    class Refusing(type(dialect_for("opensearch", "3.3.0"))):  # type: ignore[misc]
        def _passages_refusal(self, field_type):
            return (
                "SEISMIC cannot score nested documents" if field_type == "sparse_vector" else None
            )

    dialect: Dialect = Refusing((3, 3, 0))
    with pytest.raises(ConfigurationError) as error:
        dialect.index_body("sparse_vector", passages=True)
    assert "\n" not in str(error.value)
    assert str(error.value) == (
        "opensearch 3.3.0 cannot keep passages in a 'sparse_vector' field: "
        "SEISMIC cannot score nested documents"
    )
    with pytest.raises(ConfigurationError, match="cannot keep passages"):
        QueryBuilder(dialect, field_type="sparse_vector", passages=True)
    dialect.index_body("sparse_vector")  # the flat layout is not concerned
    dialect.check_passages("rank_features")
    for engine, version in [("elasticsearch", "8.11.0"), ("elasticsearch", "9.1.0")]:
        for field_type in dialect_for(engine, version).field_types():
            dialect_for(engine, version).check_passages(field_type)
    for version in ["2.19.0", "3.3.0"]:
        for field_type in dialect_for("opensearch", version).field_types():
            dialect_for("opensearch", version).check_passages(field_type)


def test_seismic_approximation_counts_passages():
    dialect = dialect_for("opensearch", "3.3.0")
    assert "passage" in dialect.approximation("sparse_vector", passages=True)
    assert "passage" not in dialect.approximation("sparse_vector")
    assert dialect.approximation("rank_features", passages=True) is None


# ---------------------------------------------------------------------- the query
@pytest.mark.parametrize(
    ("engine", "version", "field_type", "style"),
    [
        ("elasticsearch", "8.15.0", "rank_features", None),
        ("elasticsearch", "9.1.0", "sparse_vector", None),
        ("opensearch", "2.19.0", "rank_features", None),
        ("opensearch", "2.19.0", "rank_features", "neural_sparse"),
        ("opensearch", "3.3.0", "sparse_vector", None),
    ],
)
def test_passage_query_is_a_max_nested_query_on_the_vector_sub_field(
    engine, version, field_type, style
):
    dialect = dialect_for(engine, version)
    features = (
        {"7": 1.5} if field_type == "sparse_vector" and engine == "opensearch" else {"a": 1.5}
    )
    inner = dialect.sparse_query(features, field="sp.vector", field_type=field_type, style=style)
    query = dialect.passage_query(inner, field="sp")
    assert query == {
        "nested": {
            "path": "sp",
            "score_mode": "max",
            "query": inner,
            "inner_hits": {"size": 3, "_source": NESTED_SOURCE},
        }
    }
    # The builder makes the same one, on <field>.vector (what neural_sparse names too).
    builder = QueryBuilder(dialect, field="sp", field_type=field_type, style=style, passages=True)
    batch = SparseBatch.from_rows([([1], [1.5])], vocab=VOCAB)
    built = builder.sparse_query(batch)
    assert built["nested"]["path"] == "sp"
    assert built["nested"]["score_mode"] == "max"
    assert built["nested"]["inner_hits"] == {"size": 3, "_source": NESTED_SOURCE}
    text = str(built["nested"]["query"])
    assert "sp.vector" in text and "'sp'" not in text
    # Inner hits: start and end only, never the vector.
    assert "sp.vector" not in built["nested"]["inner_hits"]["_source"]


def test_inner_hits_size_and_none():
    dialect = dialect_for("elasticsearch", "8.15.0")
    inner = {"match_all": {}}
    assert dialect.passage_query(inner, field="sp", inner_hits=10)["nested"]["inner_hits"] == {
        "size": 10,
        "_source": NESTED_SOURCE,
    }
    assert "inner_hits" not in dialect.passage_query(inner, field="sp", inner_hits=0)["nested"]
    with pytest.raises(ConfigurationError, match="inner_hits"):
        dialect.passage_query(inner, field="sp", inner_hits=-1)
    with pytest.raises(ConfigurationError, match="passage_hits"):
        QueryBuilder(dialect, passages=True, passage_hits=-1)
    builder = QueryBuilder(dialect, field="sp", passages=True, passage_hits=0)
    assert "inner_hits" not in builder.sparse_query({"tax": 1.0})["nested"]


def test_filters_go_outside_the_nested_query():
    builder = QueryBuilder(dialect_for("opensearch", "2.19.0"), field="sp", passages=True)
    body = builder.search_request({"tax": 1.0}, filters=[{"term": {"lang": "en"}}]).request.body
    assert body["query"]["bool"]["filter"] == [{"term": {"lang": "en"}}]
    [nested] = body["query"]["bool"]["must"]
    assert nested["nested"]["path"] == "sp"
    assert "filter" not in nested["nested"]["query"].get("bool", {})


def test_sum_hybrid_mixes_the_nested_query_with_bm25():
    builder = QueryBuilder(dialect_for("elasticsearch", "8.15.0"), field="sp", passages=True)
    hybrid = Hybrid(bm25_weight=0.25)
    body = builder.search_request({"tax": 1.0}, text="tax", hybrid=hybrid).request.body
    sparse, lexical = body["query"]["bool"]["should"]
    assert sparse["bool"]["boost"] == 0.75
    assert sparse["bool"]["must"][0]["nested"]["inner_hits"]["size"] == 3
    assert "multi_match" in lexical["bool"]["must"][0]


@pytest.mark.parametrize(
    ("engine", "version", "method", "inner_hits"),
    [
        ("elasticsearch", "8.18.0", "rrf", False),
        ("elasticsearch", "9.1.0", "linear", False),
        ("opensearch", "2.19.0", "linear", False),
        ("opensearch", "2.19.0", "rrf", False),
        ("opensearch", "3.0.0", "linear", True),
        ("opensearch", "3.3.0", "rrf", True),
    ],
)
def test_fused_hybrids_ask_for_inner_hits_where_the_engine_returns_them(
    engine, version, method, inner_hits
):
    """OpenSearch: neural-search 3.0.0.0 HybridQueryBuilder.extractInnerHitBuilders (PR
    #1253); 2.19 drops them (tests/integration/test_passages.py asks the 2.19.6 node).
    Elasticsearch: the rrf / linear retrievers run each child retriever's query in a search
    of their own and the final one is a rank-docs query (server/.../search/retriever/
    RankDocsRetrieverBuilder.java), so no inner hits are asked for there."""
    dialect = dialect_for(engine, version)
    builder = QueryBuilder(dialect, field="sp", passages=True)
    hybrid = Hybrid(method=method)
    assert dialect.inner_hits_with(hybrid) is inner_hits
    assert dialect.inner_hits_with(None) and dialect.inner_hits_with(Hybrid(method="sum"))
    body = builder.search_request({"tax": 1.0}, text="tax", hybrid=hybrid).request.body
    text = str(body)
    assert "'nested'" in text and "'score_mode': 'max'" in text
    assert ("inner_hits" in text) is inner_hits


def test_an_empty_hybrid_query_needs_no_nested_clause():
    builder = QueryBuilder(dialect_for("opensearch", "3.3.0"), field="sp", passages=True)
    body = builder.search_request({}, text="tax", hybrid=Hybrid()).request.body
    assert body["query"]["bool"]["should"][0]["bool"]["must"] == [{"match_none": {}}]


# ---------------------------------------------------------------------- the mapping
def _mapping(**fields) -> dict:
    return {"mappings": {"properties": fields}}


def test_the_layout_is_read_through_the_nested_field():
    nested = {"type": "nested", "properties": {"vector": {"type": "sparse_vector"}}}
    layout = field_layout_from_mapping({"a": _mapping(sp=nested)}, "a", "sp")
    assert (layout.field_type, layout.passages) == ("sparse_vector", True)
    assert field_type_from_mapping({"a": _mapping(sp=nested)}, "a", "sp") == "sparse_vector"
    flat = field_layout_from_mapping({"a": _mapping(sp={"type": "rank_features"})}, "a", "sp")
    assert (flat.field_type, flat.passages) == ("rank_features", False)
    # An alias over a passages index and a flat one: refused, not guessed.
    flat_too = _mapping(sp={"type": "sparse_vector"})
    with pytest.raises(ConfigurationError, match=r"disagree.*nested:sparse_vector"):
        field_layout_from_mapping({"a": _mapping(sp=nested), "b": flat_too}, "a*", "sp")
    # Indices without the field are skipped.
    assert field_layout_from_mapping({"a": _mapping(sp=nested), "b": _mapping()}, "*", "sp")
    # A nested field that holds no sparse vector is not a vector field.
    other = {"type": "nested", "properties": {"text": {"type": "text"}}}
    with pytest.raises(ConfigurationError, match=r"no rank_features .* \(it is nested\)"):
        field_layout_from_mapping({"a": _mapping(sp=other)}, "a", "sp")


# ---------------------------------------------------------------------- hits
def _inner(score: float, start: int, end: int, offset: int) -> dict:
    return {
        "_id": "d1",
        "_nested": {"field": "sp", "offset": offset},
        "_score": score,
        "_source": {"start": start, "end": end},
    }


def test_hits_carry_their_passages_best_first():
    response = {
        "hits": {
            "hits": [
                {
                    "_id": "d1",
                    "_score": 4.5,
                    "_source": {"title": "t"},
                    "inner_hits": {
                        "sp": {
                            "hits": {
                                "hits": [_inner(0.5, 1300, 2050, 2), _inner(4.5, 640, 1490, 1)]
                            }
                        },
                        "other": {"hits": {"hits": [{"_score": 9.0, "_source": {"x": 1}}]}},
                    },
                },
                {"_id": "d2", "_score": 1.0, "_source": {}},
            ]
        }
    }
    d1, d2 = hits_of(response, passages_field="sp")
    assert d1.passages == (Passage(640, 1490, 4.5), Passage(1300, 2050, 0.5))
    assert d2.passages == ()
    # Without a name: any inner hits holding start and end.
    assert hits_of(response)[0].passages == d1.passages
    assert hits_of(response, passages_field="nope")[0].passages == ()
    assert passages_of({"_id": "x", "inner_hits": None}) == ()


def test_explain_picks_the_best_passage():
    query = {"tax": 2.0, "code": 1.0}
    passages = [
        {"vector": {"tax": 0.5}, "start": 0, "end": 10},
        {"vector": {"tax": 0.7, "code": 0.3333333}, "start": 8, "end": 30},
        {"vector": {"law": 3.0}, "start": 25, "end": 40},
    ]
    passage, parts = best_passage(query, passages)
    assert passage is not None and (passage.start, passage.end) == (8, 30)
    # Stored precision: 0.7 -> 0.69921875, 0.3333333 -> 0.3330078125.
    assert passage.score == pytest.approx(2 * 0.69921875 + 0.3330078125, rel=1e-12)
    assert [c.token for c in parts] == ["tax", "code"]
    assert best_passage({"brain": 1.0}, passages) == (None, ())


def test_the_readme_example_is_what_the_builder_sends():
    import json
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Passages (long documents).**") :]
    block = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert block is not None
    builder = QueryBuilder(dialect_for("elasticsearch", "8.15.0"), passages=True)
    assert json.loads(block.group(1)) == builder.sparse_query({"tax": 1.5})
