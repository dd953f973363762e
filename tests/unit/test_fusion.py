"""Client-side fusion (``splade_es.fusion``) against the engines' own formulas, and the
``fusion=`` choice of ``splade_es.search``.

Sources (see the module docstring of ``splade_es.fusion``):

* OpenSearch neural-search, tag ``2.19.6.0`` (same formulas at ``3.3.2.0``),
  ``src/main/java/org/opensearch/neuralsearch/processor/normalization/
  {RRFNormalizationTechnique,MinMaxScoreNormalizationTechnique,L2ScoreNormalizationTechnique}
  .java`` and ``processor/combination/{RRFScoreCombinationTechnique,
  ArithmeticMeanScoreCombinationTechnique,ScoreCombiner}.java``.
* Elasticsearch, ``x-pack/plugin/rank-rrf/src/main/java/org/elasticsearch/xpack/rank/
  rrf/RRFRetrieverBuilder.java`` (``combineInnerRetrieverResults``: ``score += 1.0f /
  (rankConstant + rank)``, rank from 1) and ``linear/{LinearRetrieverBuilder,
  MinMaxScoreNormalizer,L2ScoreNormalizer}.java`` (elastic/elasticsearch as stored: commits
  0050ad5d, 030968aa, 05d51c19, 2ddd3e9b); the documented formula (reference 8.14,
  ``rrf.html``): ``score = 0.0; for q in queries: if d in result(q): score += 1.0 / (k +
  rank(result(q), d))``, rank starting from 1.

The engines compute in Java ``float``; the references below do the same with numpy float32,
or (for the documented formula) in float64, compared within float32 rounding.
"""

from __future__ import annotations

import doctest
import math
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import pytest

import splade_es.fusion as fusion_module
from splade_es.engines import Hybrid, dialect_for
from splade_es.exceptions import ClusterError, ConfigurationError, UnsupportedFeatureError
from splade_es.fusion import (
    ELASTICSEARCH,
    OPENSEARCH,
    engine_float,
    fuse,
    linear,
    normalize,
    rrf,
    rrf_term,
)
from splade_es.query import QueryBuilder
from splade_es.search import (
    FusionChoice,
    choose_fusion,
    client_fusion,
    msearch_responses,
    search_vector,
)

F32 = np.float32


def test_docstring_examples_run():
    result = doctest.testmod(fusion_module)
    assert result.attempted > 5 and result.failed == 0


def random_lists(seed: int, n: int = 40) -> list[list[tuple[str, float]]]:
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n)]
    out = []
    for _ in range(2):
        chosen = rng.sample(docs, rng.randint(1, n))
        scores = sorted((float(F32(rng.uniform(0.1, 40.0))) for _ in chosen), reverse=True)
        out.append(list(zip(chosen, scores, strict=True)))
    return out


# ---------------------------------------------------------------------- RRF
@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("rank_constant", [1, 20, 60, 10_000])
def test_elasticsearch_rrf_is_the_documented_formula(seed, rank_constant):
    """The ES docs' pseudo-code, literally (float64, ranks from 1, summed over the lists
    holding the document), equals the client's ES RRF within float32 rounding; and the
    client's score is exactly the source's float arithmetic (``1.0f / (k + rank)``, summed in
    ``float`` in list order)."""
    lists = random_lists(seed)
    documented: dict[str, float] = {}
    for result in lists:
        for rank, (doc, _) in enumerate(result, start=1):
            documented[doc] = documented.get(doc, 0.0) + 1.0 / (rank_constant + rank)
    fused = rrf(lists, rank_constant=rank_constant, rules=ELASTICSEARCH)
    assert {f.id for f in fused} == set(documented)
    for f in fused:
        assert math.isclose(f.score, documented[f.id], rel_tol=2e-7)
        exact = F32(0.0)
        for rank in f.ranks:
            if rank is not None:
                exact = F32(exact + F32(1.0) / F32(rank_constant + rank))
        assert F32(f.score) == exact
    scores = [f.score for f in fused]
    assert scores == sorted(scores, reverse=True)


def test_opensearch_rrf_term_is_rounded_to_ten_decimals_then_float():
    """``BigDecimal.ONE.divide(rank_constant + rank, 10, HALF_UP).floatValue()``."""
    for rank_constant in (1, 7, 60, 9_999):
        for rank in (1, 2, 3, 17, 100, 4_321):
            decimal = (Decimal(1) / Decimal(rank_constant + rank)).quantize(
                Decimal("1e-10"), rounding=ROUND_HALF_UP
            )
            assert rrf_term(rank, rank_constant, OPENSEARCH) == F32(float(decimal))
            assert rrf_term(rank, rank_constant, ELASTICSEARCH) == F32(1.0) / F32(
                rank_constant + rank
            )
    # Where the two differ: the 10-decimal rounding loses what float keeps.
    differ = [
        r for r in range(1, 2_000) if rrf_term(r, 60, OPENSEARCH) != rrf_term(r, 60, ELASTICSEARCH)
    ]
    assert differ, "10-decimal rounding never changed a float32 term"


def test_rrf_missing_documents_window_and_size():
    bm25 = [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0)]
    splade = [("d", 3.0), ("e", 2.0)]
    fused = {f.id: f for f in rrf([bm25, splade], rank_constant=10, window=2)}
    # The window cuts each list before ranking: c and d (ranks 3, 4 of BM25) are outside it.
    assert set(fused) == {"a", "b", "d", "e"}
    assert fused["d"].ranks == (None, 1) and fused["d"].scores == (None, 3.0)
    assert fused["a"].ranks == (1, None)
    assert fused["a"].score == engine_float(rrf_term(1, 10))
    assert len(rrf([bm25, splade], size=3)) == 3


def test_ties_keep_the_better_rank_then_list_order_then_id():
    # a is rank 1 of BM25, c rank 1 of SPLADE: same RRF score, a first (list order).
    fused = rrf([[("a", 2.0), ("b", 1.0)], [("c", 5.0), ("b", 1.0)]])
    assert [f.id for f in fused] == ["b", "a", "c"]
    assert fused[1].score == fused[2].score


def test_a_list_with_a_document_twice_is_refused():
    with pytest.raises(ConfigurationError, match="twice"):
        rrf([[("a", 2.0), ("a", 1.0)]])
    with pytest.raises(ConfigurationError):
        rrf([[("a", 1.0)]], rank_constant=0)
    with pytest.raises(ConfigurationError):
        rrf([[("a", 1.0)]], window=0)


# ---------------------------------------------------------------------- normalisation
def test_opensearch_min_max_floor_and_single_result():
    """``normalizeSingleScore``: 0 becomes MIN_SCORE 0.001; max == min == score gives 1.0."""
    assert [float(s) for s in normalize([5.0, 3.0, 1.0])] == [
        1.0,
        float(F32(2.0) / F32(4.0)),
        float(F32(0.001)),
    ]
    assert [float(s) for s in normalize([4.2])] == [1.0]
    assert [float(s) for s in normalize([4.2, 4.2, 4.2])] == [1.0, 1.0, 1.0]


def test_elasticsearch_min_max_flat_is_the_min_and_has_no_floor():
    """``MinMaxScoreNormalizer``: ``|max - min| < 1e-6`` gives every score ``min``; the lowest
    score normalises to exactly 0."""
    assert [float(s) for s in normalize([5.0, 3.0, 1.0], rules=ELASTICSEARCH)] == [1.0, 0.5, 0.0]
    assert [float(s) for s in normalize([4.25], rules=ELASTICSEARCH)] == [4.25]
    flat = normalize([2.0, 2.0 + 5e-7], rules=ELASTICSEARCH)
    assert [float(s) for s in flat] == [2.0, 2.0]


@pytest.mark.parametrize("rules", [OPENSEARCH, ELASTICSEARCH], ids=lambda r: r.engine)
def test_l2_divides_by_the_norm(rules):
    scores = [3.0, 4.0, 12.0]
    norm = math.sqrt(9 + 16 + 144)
    got = [float(s) for s in normalize(scores, "l2", rules)]
    assert got == pytest.approx([s / norm for s in scores], rel=1e-6)
    assert math.isclose(sum(g * g for g in got), 1.0, rel_tol=1e-6)


def test_l2_zero_norm():
    assert [float(s) for s in normalize([0.0, 0.0], "l2", OPENSEARCH)] == [0.0, 0.0]
    assert [float(s) for s in normalize([0.0, 0.0], "l2", ELASTICSEARCH)] == [0.0, 0.0]
    tiny = normalize([1e-9], "l2", ELASTICSEARCH)  # below ES's epsilon: unchanged
    assert float(tiny[0]) == float(F32(1e-9))
    with pytest.raises(ConfigurationError):
        normalize([1.0], "z_score")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- linear
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_opensearch_linear_is_the_weighted_arithmetic_mean(seed, weight):
    """``ArithmeticMeanScoreCombinationTechnique.combine`` over per-document arrays that
    start at 0 (``ScoreCombiner``): a missing document counts 0 with its weight."""
    lists = random_lists(seed)
    weights = [weight, 1.0 - weight]
    fused = linear(lists, weights)
    normalized = [
        dict(zip([d for d, _ in ranking], normalize([s for _, s in ranking]), strict=True))
        for ranking in lists
    ]
    for f in fused:
        total, weight_sum = F32(0.0), F32(0.0)
        for j, w in enumerate(weights):
            part = normalized[j].get(f.id, F32(0.0))
            total = F32(total + F32(part * F32(w)))
            weight_sum = F32(weight_sum + F32(w))
        assert F32(f.score) == F32(total / weight_sum)
    assert all(0.0 <= f.score <= 1.0 for f in fused)


def test_elasticsearch_linear_sums_weighted_scores_without_dividing():
    bm25 = [("a", 10.0), ("b", 5.0)]
    splade = [("b", 8.0), ("c", 4.0)]
    fused = {f.id: f.score for f in linear([bm25, splade], [2.0, 1.0], rules=ELASTICSEARCH)}
    # min-max: a 1, b 0 (BM25); b 1, c 0 (SPLADE).
    assert fused == {"a": 2.0, "b": 1.0, "c": 0.0}
    os_fused = {f.id: f.score for f in linear([bm25, splade], [2.0, 1.0])}
    assert os_fused["a"] == engine_float(F32(F32(2.0) + F32(F32(0.001) * F32(0.0))) / F32(3.0))


def test_linear_weights_must_match_the_lists():
    with pytest.raises(ConfigurationError, match="one per list"):
        linear([[("a", 1.0)]], [0.5, 0.5])
    with pytest.raises(ConfigurationError):
        linear([[("a", 1.0)]], [-1.0])
    assert [f.id for f in fuse([[("a", 1.0)], [("b", 2.0)]], "linear")] == ["a", "b"]
    with pytest.raises(ConfigurationError):
        fuse([[("a", 1.0)]], "sum")  # type: ignore[arg-type]


def test_engine_float_reads_back_as_the_same_float32():
    for value in (1 / 3, 0.016393442, 123.456, 1e-7):
        f32 = F32(value)
        assert F32(engine_float(f32)) == f32
        assert len(repr(engine_float(f32))) <= len(repr(float(f32)))


# ---------------------------------------------------------------------- dialects
def test_dialects_say_how_they_fuse():
    hybrid = Hybrid(method="rrf", rank_window_size=50)
    opensearch, elasticsearch = (
        dialect_for("opensearch", "2.19.6"),
        dialect_for("elasticsearch", "8.18.0"),
    )
    assert opensearch.fusion_rules() is OPENSEARCH and elasticsearch.fusion_rules() is ELASTICSEARCH
    # OpenSearch sends no pagination_depth: each sub-query returns ``size`` hits.
    assert opensearch.fusion_window(hybrid, 10) == 10
    assert elasticsearch.fusion_window(hybrid, 10) == 50
    assert elasticsearch.fusion_window(hybrid, 80) == 80


@pytest.mark.parametrize(
    ("engine", "version", "method", "plugins", "license", "refused"),
    [
        ("opensearch", "2.19.6", "rrf", ("opensearch-neural-search",), None, None),
        ("opensearch", "2.19.6", "rrf", (), None, "needs the opensearch-neural-search plugin"),
        # An embedded node lists a classpath plugin by its class name.
        (
            "opensearch",
            "3.3.2",
            "rrf",
            ("org.opensearch.neuralsearch.plugin.NeuralSearch",),
            None,
            None,
        ),
        ("opensearch", "3.3.2", "rrf", ("opensearch-knn",), None, "neural-search plugin"),
        ("opensearch", "2.19.6", "linear", None, None, "could not be read"),
        ("opensearch", "2.17.0", "rrf", ("opensearch-neural-search",), None, "has no rrf"),
        ("elasticsearch", "8.18.0", "linear", (), "trial (active)", None),
        ("elasticsearch", "8.18.0", "rrf", (), "enterprise (active)", None),
        ("elasticsearch", "8.18.0", "rrf", (), "basic (active)", "enterprise (or trial) license"),
        ("elasticsearch", "8.18.0", "rrf", (), "platinum (active)", "license"),
        ("elasticsearch", "8.18.0", "rrf", (), "trial (expired)", "license"),
        ("elasticsearch", "8.18.0", "rrf", (), None, "unknown"),
        ("elasticsearch", "8.15.0", "linear", (), "trial (active)", "has no linear"),
        ("elasticsearch", "8.15.0", "sum", (), None, None),
    ],
)
def test_engine_fusion_refusal(engine, version, method, plugins, license, refused):
    dialect = dialect_for(engine, version)
    reason = dialect.engine_fusion_refusal(Hybrid(method=method), plugins=plugins, license=license)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


# ---------------------------------------------------------------------- search(fusion=)
class FakeClient:
    """Answers what ``search_vector`` and ``choose_fusion`` ask: _msearch from canned lists,
    plugins, license, search pipelines."""

    def __init__(
        self,
        lexical: list[tuple[str, float]],
        sparse: list[tuple[str, float]],
        *,
        plugins: list[str] | None = None,
        license_type: str = "basic",
        pipelines: tuple[str, ...] = (),
    ) -> None:
        self.lists = (lexical, sparse)
        self.calls: list[tuple[str, Any]] = []
        outer = self

        class Cat:
            def plugins(self, format: str) -> list[dict[str, str]]:
                outer.calls.append(("cat.plugins", None))
                if plugins is None:
                    raise ClusterError("no privilege")
                return [{"name": "node", "component": p} for p in plugins]

        class License:
            def get(self) -> dict[str, Any]:
                outer.calls.append(("license", None))
                return {"license": {"type": license_type, "status": "active"}}

        class Pipelines:
            def get(self, id: str) -> dict[str, Any]:
                outer.calls.append(("pipeline", id))
                if id not in pipelines:
                    raise ClusterError(f"pipeline {id} not found")
                return {id: {}}

        self.cat, self.license, self.search_pipeline = Cat(), License(), Pipelines()

    def msearch(self, body: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(("msearch", body))
        responses = []
        for ranked, request in zip(self.lists, body[1::2], strict=True):
            hits = [
                {"_index": "docs", "_id": d, "_score": s, "_source": {"title": d}}
                for d, s in ranked[: request["size"]]
            ]
            responses.append({"took": 3, "hits": {"total": {"value": len(ranked)}, "hits": hits}})
        return {"responses": responses}

    def search(self, index: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        self.calls.append(("search", (body, params)))
        return {"took": 1, "hits": {"hits": []}}


BM25 = [("a", 12.0), ("b", 9.5), ("c", 3.0)]
SPLADE = [("c", 30.1), ("a", 22.4), ("d", 1.5)]


def opensearch_builder(version: str = "2.19.6") -> QueryBuilder:
    return QueryBuilder.for_engine("opensearch", version=version)


def test_client_fusion_sends_one_msearch_bm25_then_splade():
    client = FakeClient(BM25, SPLADE)
    hybrid = Hybrid(method="rrf", rank_constant=60)
    result = search_vector(
        client,
        "docs",
        {"tax": 1.5, "code": 0.5},
        builder=opensearch_builder(),
        text="tax code",
        k=2,
        hybrid=hybrid,
        filters=[{"term": {"lang": "en"}}],
        fusion="client",
    )
    kinds = [kind for kind, _ in client.calls]
    assert kinds == ["msearch"]
    body = client.calls[0][1]
    assert body[0] == {"index": "docs"} and body[2] == {"index": "docs"}
    assert "multi_match" in str(body[1]["query"]) and "rank_feature" in str(body[3]["query"])
    assert all("lang" in str(b["query"]) for b in body[1::2])  # filters on both sides
    assert body[1]["size"] == body[3]["size"] == 2  # OpenSearch's window: size
    expected = rrf([BM25[:2], SPLADE[:2]], rank_constant=60, size=2)
    assert [(h.id, h.score) for h in result.hits] == [(f.id, f.score) for f in expected]
    assert result.fusion == "client" and "fusion=client" in result.fusion_note
    assert result.requests and result.requests[1] == result.request


def test_engine_fusion_stays_the_default():
    client = FakeClient(BM25, SPLADE)
    result = search_vector(
        client,
        "docs",
        {"tax": 1.5},
        builder=opensearch_builder(),
        text="tax",
        hybrid=Hybrid(method="linear"),
    )
    assert [kind for kind, _ in client.calls] == ["search"]
    assert client.calls[0][1][1] == {"search_pipeline": Hybrid(method="linear").pipeline_name}
    assert result.fusion == "engine"
    plain = search_vector(client, "docs", {"tax": 1.5}, builder=opensearch_builder())
    assert plain.fusion is None


def test_auto_falls_back_to_the_client_without_the_plugin_and_says_why():
    hybrid = Hybrid(method="linear", bm25_weight=0.3)
    client = FakeClient(BM25, SPLADE, plugins=["opensearch-knn"])
    choice = choose_fusion(client, hybrid, "auto", dialect=opensearch_builder().dialect)
    assert choice.fusion == "client" and "opensearch-neural-search" in choice.note
    result = search_vector(
        client,
        "docs",
        {"tax": 1.5},
        builder=opensearch_builder(),
        text="tax",
        k=3,
        hybrid=hybrid,
        fusion=choice,
    )
    expected = linear([BM25, SPLADE], [0.3, 0.7], size=3)
    assert [(h.id, h.score) for h in result.hits] == [(f.id, f.score) for f in expected]
    assert result.fusion == "client" and result.fusion_note == choice.note


def test_auto_uses_the_engine_where_plugin_and_pipeline_exist():
    hybrid = Hybrid(method="rrf")
    dialect = opensearch_builder().dialect
    with_pipeline = FakeClient(
        BM25, SPLADE, plugins=["opensearch-neural-search"], pipelines=(hybrid.pipeline_name,)
    )
    assert choose_fusion(with_pipeline, hybrid, "auto", dialect=dialect).fusion == "engine"
    without = FakeClient(BM25, SPLADE, plugins=["opensearch-neural-search"])
    choice = choose_fusion(without, hybrid, "auto", dialect=dialect)
    assert choice.fusion == "client" and "pipeline" in choice.note
    unreadable = FakeClient(BM25, SPLADE, plugins=None)
    assert choose_fusion(unreadable, hybrid, "auto", dialect=dialect).fusion == "client"


def test_auto_on_elasticsearch_reads_the_license_only():
    hybrid = Hybrid(method="rrf")
    dialect = dialect_for("elasticsearch", "8.18.0")
    basic = FakeClient(BM25, SPLADE, license_type="basic")
    assert choose_fusion(basic, hybrid, "auto", dialect=dialect).fusion == "client"
    assert [kind for kind, _ in basic.calls] == ["license"]
    trial = FakeClient(BM25, SPLADE, license_type="trial")
    assert choose_fusion(trial, hybrid, "auto", dialect=dialect).fusion == "engine"


def test_elasticsearch_client_fusion_uses_the_rank_window():
    client = FakeClient(BM25, SPLADE)
    builder = QueryBuilder.for_engine("elasticsearch", version="8.12.0")  # no retrievers yet
    hybrid = Hybrid(method="rrf", rank_window_size=2, rank_constant=5)
    result = search_vector(
        client,
        "docs",
        {"tax": 1.5},
        builder=builder,
        text="tax",
        k=1,
        hybrid=hybrid,
        fusion="client",
    )
    body = client.calls[0][1]
    assert body[1]["size"] == body[3]["size"] == 2
    expected = rrf([BM25[:2], SPLADE[:2]], rank_constant=5, size=1, rules=ELASTICSEARCH)
    assert [(h.id, h.score) for h in result.hits] == [(f.id, f.score) for f in expected]


def test_fusion_choice_for_nothing_to_fuse_and_bad_names():
    client = FakeClient(BM25, SPLADE)
    assert choose_fusion(client, None, "client").fusion is None
    assert choose_fusion(client, Hybrid(method="sum"), "auto").fusion is None
    assert client.calls == []  # nothing read
    with pytest.raises(ConfigurationError):
        choose_fusion(client, Hybrid(method="rrf"), "both")  # type: ignore[arg-type]
    given = FusionChoice("client", "mine")
    assert choose_fusion(client, Hybrid(method="rrf"), given) is given


def test_client_fusion_response_is_a_search_response():
    builder = opensearch_builder()
    plan = client_fusion(builder, {"tax": 1.0}, text="tax", k=3, hybrid=Hybrid(method="rrf"))
    lexical = {"took": 2, "hits": {"total": {"value": 7}, "hits": [{"_id": "a", "_score": 2.0}]}}
    sparse = {
        "took": 5,
        "_shards": {"total": 1},
        "hits": {"total": {"value": 4}, "hits": [{"_id": "a", "_score": 9.0, "inner_hits": {}}]},
    }
    response = plan.response([lexical, sparse])
    assert response["took"] == 5 and response["_shards"] == {"total": 1}
    assert response["hits"]["total"] == {"value": 7, "relation": "gte"}
    (hit,) = response["hits"]["hits"]
    assert "inner_hits" in hit  # the SPLADE side's hit, with its passages
    assert (
        hit["_score"]
        == response["hits"]["max_score"]
        == engine_float(F32(rrf_term(1, 60) + rrf_term(1, 60)))
    )


def test_msearch_item_errors_raise():
    with pytest.raises(ClusterError, match="index_not_found"):
        msearch_responses(
            {"responses": [{"error": {"type": "index_not_found_exception", "reason": "x"}}]}, "i"
        )
    assert msearch_responses({"responses": [{"hits": {}}]}, "i") == [{"hits": {}}]


def test_sum_hybrids_are_not_fused_by_the_client():
    with pytest.raises(ConfigurationError, match="nothing to fuse"):
        client_fusion(
            opensearch_builder(), {"tax": 1.0}, text="tax", k=3, hybrid=Hybrid(method="sum")
        )


# ---------------------------------------------------------------------- the migration gate
def test_gate_rows_name_a_fused_hybrid_method():
    from splade_es.migrate.config import Gate
    from splade_es.migrate.gate import gate_runs

    gate = Gate(queries={"q": "tax"}, min_overlap=0.5, hybrid_weight=0.3)
    assert gate_runs("s", "t", gate)[2].label == "hybrid 0.3 BM25 (new)"  # sum: as before
    rrf_row = gate_runs("s", "t", gate, "rrf")[2]
    assert rrf_row.label == "hybrid rrf 0.3 BM25 (new)" and rrf_row.mode == "hybrid"


# ---------------------------------------------------------------------- L2 linear hybrids
def test_l2_linear_hybrid_bodies():
    """OpenSearch ``normalization-processor`` technique ``l2`` (L2ScoreNormalizationTechnique
    TECHNIQUE_NAME); Elasticsearch linear retriever normalizer ``l2_norm``
    (L2ScoreNormalizer.NAME), 8.19 / 9.1+."""
    hybrid = Hybrid(method="linear", normalizer="l2", bm25_weight=0.3)
    assert hybrid.pipeline_name == "splade-es-hybrid-linear-l2-0300"
    assert Hybrid(method="linear", bm25_weight=0.3).pipeline_name == "splade-es-hybrid-linear-0300"
    body = dialect_for("opensearch", "2.19.6").hybrid_pipeline_body(hybrid)
    assert body is not None
    processor = body["phase_results_processors"][0]["normalization-processor"]
    assert processor["normalization"] == {"technique": "l2"}
    es = dialect_for("elasticsearch", "9.1.0").search_request(
        {"match_all": {}}, k=5, lexical={"match": {"text": "a"}}, hybrid=hybrid
    )
    retrievers = es.body["retriever"]["linear"]["retrievers"]
    assert [r["normalizer"] for r in retrievers] == ["l2_norm", "l2_norm"]
    old = dialect_for("elasticsearch", "8.18.0")
    reason = old.engine_fusion_refusal(hybrid, plugins=(), license="trial (active)")
    assert reason is not None and "l2_norm" in reason
    with pytest.raises(UnsupportedFeatureError, match="l2_norm"):
        old.check_hybrid(hybrid)
    assert (
        dialect_for("elasticsearch", "8.19.2").engine_fusion_refusal(
            hybrid, plugins=(), license="trial (active)"
        )
        is None
    )
    with pytest.raises(ConfigurationError):
        Hybrid(method="linear", normalizer="z_score")  # type: ignore[arg-type]


def test_client_l2_fusion_uses_the_hybrid_normalizer():
    client = FakeClient(BM25, SPLADE)
    hybrid = Hybrid(method="linear", normalizer="l2", bm25_weight=0.5)
    result = search_vector(
        client,
        "docs",
        {"tax": 1.5},
        builder=opensearch_builder(),
        text="tax",
        k=3,
        hybrid=hybrid,
        fusion="client",
    )
    expected = linear([BM25, SPLADE], [0.5, 0.5], normalizer="l2", size=3)
    assert [(h.id, h.score) for h in result.hits] == [(f.id, f.score) for f in expected]
    assert [h.id for h in result.hits] != [
        f.id for f in linear([BM25, SPLADE], [0.5, 0.5], size=3)
    ] or [h.score for h in result.hits] != [
        f.score for f in linear([BM25, SPLADE], [0.5, 0.5], size=3)
    ]
