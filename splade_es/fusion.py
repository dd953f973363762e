"""Client-side fusion of ranked lists: reciprocal rank fusion and normalised linear
combination, with the engines' own formulas, so that a hybrid ranks the same whether the
engine or the client fuses it.

Pure functions, no cluster. Each input is one ranked list, best first, of ``(doc id, score)``
(for a hybrid: the BM25 list, then the SPLADE list). Scores follow the engines' arithmetic:
``float32`` (Java ``float``) throughout, so the fused scores equal the engine's ``_score`` to
the last bit where the engine's inputs are the same lists.

What the engines do, and where it is written (the two ``FusionRules`` below):

OpenSearch, neural-search plugin (tags ``2.19.6.0`` and ``3.3.2.0``,
``src/main/java/org/opensearch/neuralsearch/processor/``):

* ``score-ranker-processor`` (RRF): ``normalization/RRFNormalizationTechnique.java``
  ``calculateNormalizedScore``: each document of each sub-query list gets
  ``BigDecimal.ONE.divide(rank_constant + rank, 10, HALF_UP).floatValue()``, rank from 1;
  ``combination/RRFScoreCombinationTechnique.java`` sums them (``float``).
* ``normalization-processor``: ``normalization/MinMaxScoreNormalizationTechnique.java``:
  ``(score - min) / (max - min)`` per sub-query, min and max over that sub-query's list;
  a result of exactly 0 becomes ``MIN_SCORE = 0.001``; ``max == min == score`` gives
  ``SINGLE_RESULT_SCORE = 1.0``. (3.x adds opt-in ``lower_bounds`` / ``upper_bounds``; without
  them it is the same formula.) ``normalization/L2ScoreNormalizationTechnique.java``:
  ``score / sqrt(sum of squares)`` (the sum in ``float``), 0 when the norm is 0.
  ``combination/ArithmeticMeanScoreCombinationTechnique.java``:
  ``sum(w_i * s_i) / sum(w_i)`` over every sub-query whose score is ``>= 0``; a document
  missing from a sub-query has score 0 there (``ScoreCombiner.getNormalizedScoresPerDocument``
  starts from ``new float[n]``), so it counts with its weight.
* Window: every sub-query returns its top ``size`` documents per shard, or
  ``pagination_depth`` where the request gives one (``search/query/HybridCollectorManager.java``
  ``getSubqueryResultsRetrievalSize``); splade-es sends none, so the window is ``size``.
  Ranks (RRF) are per shard and the combination runs per shard (``ScoreCombiner
  .combineShardScores``): on an index of one shard that is the whole list, as here.

Elasticsearch, x-pack ``rank-rrf`` (``x-pack/plugin/rank-rrf/src/main/java/org/
elasticsearch/xpack/rank/``, elastic/elasticsearch as stored: ``rrf/RRFRetrieverBuilder.java``
at commit 0050ad5d, ``linear/LinearRetrieverBuilder.java`` at 030968aa,
``linear/MinMaxScoreNormalizer.java`` at 05d51c19, ``linear/L2ScoreNormalizer.java`` at
2ddd3e9b; the RRF formula is the one documented since 8.8,
https://www.elastic.co/guide/en/elasticsearch/reference/8.14/rrf.html:
``score += 1.0 / (k + rank(result(q), d))``, rank from 1):

* ``rrf`` retriever: ``rrf/RRFRetrieverBuilder.java`` ``combineInnerRetrieverResults``:
  ``score += 1.0f / (rankConstant + rank)`` (``float``), rank from 1, over each child's top
  ``rank_window_size``.
* ``linear`` retriever (8.18+): ``linear/LinearRetrieverBuilder.java``
  ``combineInnerRetrieverResults``: ``score += weight * normalized`` (no division by the
  weights); ``linear/MinMaxScoreNormalizer.java``: ``(score - min) / (max - min)``, and every
  score becomes ``min`` when ``|max - min| < 1e-6``; ``linear/L2ScoreNormalizer.java``:
  ``(float) (score / sqrt(sum of squares))`` (the sum in ``double``), scores unchanged when
  the norm is below ``1e-6``. A document missing from a child contributes nothing.

Ties: the engines break them by Lucene's internal document number, which a client never
sees; here equal scores keep the best rank any list gave the document, then list order,
then the id.

>>> bm25 = [("a", 12.0), ("b", 9.5), ("c", 3.0)]
>>> splade = [("c", 30.1), ("a", 22.4)]
>>> [(f.id, f.score) for f in rrf([bm25, splade], rank_constant=60)]
[('a', 0.032522473), ('c', 0.03226646), ('b', 0.016129032)]
>>> [(f.id, f.score) for f in linear([bm25, splade], [0.5, 0.5])]
[('a', 0.5005), ('c', 0.5005), ('b', 0.3611111)]
>>> linear([bm25, splade], [0.5, 0.5], rules=ELASTICSEARCH)[1].score   # no 0.001 floor
0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

import numpy as np

from .exceptions import ConfigurationError

Ranking = Sequence[tuple[str, float]]
"""One ranked list, best first: ``(doc id, score)``."""

Normalizer = Literal["min_max", "l2"]
NORMALIZERS: tuple[Normalizer, ...] = ("min_max", "l2")
FusionMethod = Literal["rrf", "linear"]

_F32 = np.float32


@dataclass(frozen=True, kw_only=True)
class FusionRules:
    """How one engine fuses: the details where OpenSearch and Elasticsearch differ.

    ``rrf_decimal_places``: the RRF term is ``1 / (rank_constant + rank)`` rounded half up to
    this many decimals before it becomes a ``float`` (None: computed in ``float``).
    ``min_max_floor``: a min-max score of exactly 0 becomes this (None: stays 0).
    ``min_max_flat``: when a list's scores are all equal (within ``min_max_epsilon``):
    ``"one"`` gives 1.0 to a document scoring the max, ``"min"`` gives every score the min.
    ``l2_sum_float``: the sum of squares is accumulated in ``float`` (else ``double``).
    ``l2_zero_norm``: a zero norm gives ``"zero"`` scores, or ``"keep"`` the raw scores.
    ``mean``: the linear combination divides by the sum of the weights.
    """

    engine: str
    rrf_decimal_places: int | None
    min_max_floor: float | None
    min_max_flat: Literal["one", "min"]
    min_max_epsilon: float
    l2_sum_float: bool
    l2_zero_norm: Literal["zero", "keep"]
    mean: bool


OPENSEARCH = FusionRules(
    engine="opensearch",
    rrf_decimal_places=10,
    min_max_floor=0.001,
    min_max_flat="one",
    min_max_epsilon=0.0,
    l2_sum_float=True,
    l2_zero_norm="zero",
    mean=True,
)
ELASTICSEARCH = FusionRules(
    engine="elasticsearch",
    rrf_decimal_places=None,
    min_max_floor=None,
    min_max_flat="min",
    min_max_epsilon=1e-6,
    l2_sum_float=False,
    l2_zero_norm="keep",
    mean=False,
)


@dataclass(frozen=True)
class Fused:
    """One fused document: its score, and its rank (from 1) and raw score in each input
    list (None where the list does not hold it, or it fell outside the window)."""

    id: str
    score: float
    ranks: tuple[int | None, ...]
    scores: tuple[float | None, ...]


def engine_float(value: np.float32) -> float:
    """A ``float32`` as the engine prints it in JSON (the shortest decimal that reads back as
    the same ``float32``), read as a Python float: what a client parses from ``_score``.

    >>> engine_float(np.float32(1) / np.float32(3))
    0.33333334
    """
    return float(np.format_float_positional(value, unique=True, trim="-"))


def rrf_term(rank: int, rank_constant: int, rules: FusionRules = OPENSEARCH) -> np.float32:
    """One list's RRF contribution for a document at ``rank`` (from 1).

    >>> float(rrf_term(1, 60)), float(rrf_term(1, 60, ELASTICSEARCH))
    (0.016393441706895828, 0.016393441706895828)
    """
    if rank < 1:
        raise ConfigurationError.bad_value("rank", rank, "ranks start at 1")
    if rules.rrf_decimal_places is None:
        return _F32(1.0) / _F32(rank_constant + rank)
    quantum = Decimal(1).scaleb(-rules.rrf_decimal_places)
    exact = (Decimal(1) / Decimal(rank_constant + rank)).quantize(quantum, ROUND_HALF_UP)
    return _F32(str(exact))


def normalize(
    scores: Sequence[float], normalizer: Normalizer = "min_max", rules: FusionRules = OPENSEARCH
) -> list[np.float32]:
    """The scores of one list, normalised the way ``rules``' engine does.

    >>> [float(s) for s in normalize([4.0, 2.0, 1.0])]
    [1.0, 0.3333333432674408, 0.0010000000474974513]
    >>> [float(s) for s in normalize([2.0, 2.0])]
    [1.0, 1.0]
    >>> [float(s) for s in normalize([2.0], rules=ELASTICSEARCH)]
    [2.0]
    >>> [float(s) for s in normalize([3.0, 4.0], "l2")]
    [0.6000000238418579, 0.800000011920929]
    """
    values = [_F32(s) for s in scores]
    if not values:
        return []
    if normalizer == "min_max":
        return _min_max(values, rules)
    if normalizer == "l2":
        return _l2(values, rules)
    raise ConfigurationError.bad_value("normalizer", normalizer, f"must be one of {NORMALIZERS}")


def _min_max(values: list[np.float32], rules: FusionRules) -> list[np.float32]:
    low, high = min(values), max(values)
    flat = abs(float(high) - float(low)) < rules.min_max_epsilon or high == low
    out = []
    for value in values:
        if flat:
            if rules.min_max_flat == "min":
                out.append(low)
                continue
            if value == high:
                out.append(_F32(1.0))
                continue
        normalized = (value - low) / (high - low)
        if normalized == 0 and rules.min_max_floor is not None:
            normalized = _F32(rules.min_max_floor)
        out.append(_F32(normalized))
    return out


def _l2(values: list[np.float32], rules: FusionRules) -> list[np.float32]:
    if rules.l2_sum_float:
        total = _F32(0.0)
        for value in values:
            total = _F32(total + value * value)
        norm = _F32(math.sqrt(float(total)))
        if norm == 0:
            return [_F32(0.0) for _ in values] if rules.l2_zero_norm == "zero" else values
        return [_F32(value / norm) for value in values]
    squares = 0.0
    for value in values:
        squares += float(_F32(value * value))
    norm64 = math.sqrt(squares)
    if norm64 < 1e-6:
        return [_F32(0.0) for _ in values] if rules.l2_zero_norm == "zero" else values
    return [_F32(float(value) / norm64) for value in values]


def rrf(
    rankings: Sequence[Ranking],
    *,
    rank_constant: int = 60,
    window: int | None = None,
    size: int | None = None,
    rules: FusionRules = OPENSEARCH,
) -> list[Fused]:
    """Reciprocal rank fusion: each document scores the sum over the lists holding it of
    ``1 / (rank_constant + rank)``, rank from 1 within that list's first ``window`` entries;
    best first, the first ``size`` (all when None).

    >>> [(f.id, f.ranks) for f in rrf([[("x", 5.0), ("y", 1.0)], [("y", 0.7)]])]
    [('y', (2, 1)), ('x', (1, None))]
    """
    if not 1 <= rank_constant <= 10_000:
        raise ConfigurationError.bad_value("rank_constant", rank_constant, "must be in [1, 10000]")
    lists = _windowed(rankings, window)

    def terms(ranking: list[tuple[str, np.float32]]) -> list[np.float32]:
        return [rrf_term(rank, rank_constant, rules) for rank in range(1, len(ranking) + 1)]

    return _combine(lists, [terms(ranking) for ranking in lists], None, size, rules)


def linear(
    rankings: Sequence[Ranking],
    weights: Sequence[float],
    *,
    normalizer: Normalizer = "min_max",
    window: int | None = None,
    size: int | None = None,
    rules: FusionRules = OPENSEARCH,
) -> list[Fused]:
    """Linear combination of normalised scores: each list's first ``window`` scores
    normalised (``normalize``), then ``sum(w_i * s_i)`` (divided by ``sum(w_i)`` where the
    engine takes the arithmetic mean), a document missing from a list scoring 0 there; best
    first, the first ``size`` (all when None).

    >>> [(f.id, f.score) for f in linear([[("x", 5.0), ("y", 1.0)], [("y", 0.7)]], [0.3, 0.7])]
    [('y', 0.7003), ('x', 0.3)]
    """
    if len(weights) != len(rankings):
        raise ConfigurationError(
            f"{len(weights)} weights for {len(rankings)} ranked lists: give one per list"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ConfigurationError.bad_value("weights", list(weights), "must be finite and >= 0")
    lists = _windowed(rankings, window)
    normalized = [normalize([float(s) for _, s in ranking], normalizer, rules) for ranking in lists]
    return _combine(lists, normalized, [_F32(w) for w in weights], size, rules)


def fuse(
    rankings: Sequence[Ranking],
    method: FusionMethod,
    *,
    weights: Sequence[float] | None = None,
    rank_constant: int = 60,
    normalizer: Normalizer = "min_max",
    window: int | None = None,
    size: int | None = None,
    rules: FusionRules = OPENSEARCH,
) -> list[Fused]:
    """``rrf`` or ``linear`` (equal weights unless given) by name."""
    if method == "rrf":
        return rrf(rankings, rank_constant=rank_constant, window=window, size=size, rules=rules)
    if method == "linear":
        given = list(weights) if weights is not None else [1.0] * len(rankings)
        return linear(rankings, given, normalizer=normalizer, window=window, size=size, rules=rules)
    raise ConfigurationError.bad_value("method", method, "must be rrf or linear")


def _windowed(
    rankings: Sequence[Ranking], window: int | None
) -> list[list[tuple[str, np.float32]]]:
    if window is not None and window < 1:
        raise ConfigurationError.bad_value("window", window, "must be >= 1")
    lists = []
    for ranking in rankings:
        seen: set[str] = set()
        kept = []
        for doc_id, score in ranking[:window]:
            if doc_id in seen:
                raise ConfigurationError(f"document {doc_id!r} appears twice in one ranked list")
            seen.add(doc_id)
            kept.append((str(doc_id), _F32(score)))
        lists.append(kept)
    return lists


def _combine(
    lists: list[list[tuple[str, np.float32]]],
    per_list: list[list[np.float32]],
    weights: list[np.float32] | None,
    size: int | None,
    rules: FusionRules,
) -> list[Fused]:
    """Per document: its value in each list (0 where absent), summed (weighted: RRF has no
    weights), in list order and ``float`` arithmetic; best first."""
    n = len(lists)
    values: dict[str, list[np.float32]] = {}
    ranks: dict[str, list[int | None]] = {}
    raw: dict[str, list[float | None]] = {}
    order: dict[str, tuple[int, int]] = {}  # (best rank, first list holding it)
    for j, ranking in enumerate(lists):
        for position, ((doc_id, score), value) in enumerate(zip(ranking, per_list[j], strict=True)):
            if doc_id not in values:
                values[doc_id] = [_F32(0.0)] * n
                ranks[doc_id] = [None] * n
                raw[doc_id] = [None] * n
                order[doc_id] = (position + 1, j)
            values[doc_id][j] = value
            ranks[doc_id][j] = position + 1
            raw[doc_id][j] = float(score)
            order[doc_id] = min(order[doc_id], (position + 1, j))
    scores = {doc_id: _sum(parts, weights, rules) for doc_id, parts in values.items()}
    ranked = sorted(scores, key=lambda d: (-float(scores[d]), order[d], d))
    if size is not None:
        ranked = ranked[:size]
    return [Fused(d, engine_float(scores[d]), tuple(ranks[d]), tuple(raw[d])) for d in ranked]


def _sum(
    parts: list[np.float32], weights: list[np.float32] | None, rules: FusionRules
) -> np.float32:
    total = _F32(0.0)
    if weights is None:
        for part in parts:
            total = _F32(total + part)
        return total
    weight_sum = _F32(0.0)
    for part, weight in zip(parts, weights, strict=True):
        if rules.mean and part < 0:  # OpenSearch's arithmetic_mean skips negative scores
            continue
        total = _F32(total + _F32(part * weight))
        weight_sum = _F32(weight_sum + weight)
    if not rules.mean:
        return total
    return _F32(0.0) if weight_sum == 0 else _F32(total / weight_sum)
