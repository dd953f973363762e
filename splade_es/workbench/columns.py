"""One configuration's results for one query, with each hit's token contributions. Pure.

A column is made in three steps, so that the synchronous runner (``compare``) and serve's
page (``ui``) send the same requests with their own clients:

    plan_column       the search request: ``QueryBuilder.search_request`` for SPLADE and hybrid
                      configurations, the dialect's BM25 request for ``bm25`` (what ``search``
                      sends in each mode); a linear / rrf hybrid fused by the client: the two
                      searches of ``search.client_fusion``, fused by ``fused_response``
    vectors_request   the stored vectors of the hits shown (what ``explain`` reads)
    column_of         the hits, each with its contributions: query weight x stored document
                      weight per shared token (``search.contributions``, the numbers
                      ``explain`` prints), which add up to a SPLADE hit's score; the tokens
                      the query's pruning removed are listed apart and add nothing
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..engines import Dialect, SearchRequest
from ..query import PruneReport, QueryBuilder, QueryVector
from ..search import (
    ClientFusion,
    FusionChoice,
    Hit,
    Passage,
    TokenContribution,
    best_passage,
    client_fusion,
    contributions,
    hits_of,
    token_namer,
)
from ..sparse import SparseBatch
from .configurations import Configuration

TITLE_CHARS = 200


@dataclass(frozen=True)
class ColumnPlan:
    """A configuration's search for one query, ready to send to ``index``."""

    configuration: Configuration
    index: str
    request: SearchRequest
    dialect: Dialect
    builder: QueryBuilder | None = None  # None for BM25
    features: Mapping[str, float] = field(default_factory=dict)  # the query as sent
    all_features: Mapping[str, float] = field(default_factory=dict)  # before pruning
    prune: PruneReport | None = None
    token_of: Callable[[str], str] = str
    fused: ClientFusion | None = None  # a hybrid the client fuses: its two searches
    fusion_note: str = ""  # who fuses a linear / rrf hybrid, and why


@dataclass(frozen=True)
class QueryToken:
    token: str
    weight: float
    kept: bool  # False: pruning removed it from the query


@dataclass(frozen=True)
class ColumnHit:
    id: str
    rank: int  # 1-based
    score: float
    title: str
    contributions: tuple[TokenContribution, ...] = ()
    pruned: tuple[TokenContribution, ...] = ()  # tokens pruned from the query it also holds
    passage: Passage | None = None  # passages index: the passage explained

    @property
    def explained(self) -> float:
        """The sum of the contributions (the score of a SPLADE hit)."""
        return math.fsum(c.contribution for c in self.contributions)


@dataclass(frozen=True)
class Column:
    """One configuration's answer: the hits shown (with contributions), and the whole
    ranking retrieved (``run``, for the measures and rank changes)."""

    label: str
    index: str
    kind: str
    hits: tuple[ColumnHit, ...] = ()
    run: Mapping[str, float] = field(default_factory=dict)  # doc id -> score, best first
    query_tokens: tuple[QueryToken, ...] = ()
    prune: PruneReport | None = None
    error: str | None = None  # the column could not be run (its message)
    fusion_note: str = ""

    @property
    def ranking(self) -> list[str]:
        return list(self.run)

    @property
    def scores_are_contributions(self) -> bool:
        """Whether each hit's score is the sum of its contributions: SPLADE alone (a
        hybrid's score mixes in BM25; its contributions are its SPLADE part)."""
        return self.kind == "splade"


def plan_column(
    configuration: Configuration,
    index: str,
    text: str,
    *,
    dialect: Dialect,
    builder: QueryBuilder | None,
    vector: QueryVector | None,
    k: int,
    fusion: FusionChoice | None = None,
) -> ColumnPlan:
    """The request ``search`` sends for ``configuration`` (``EmptyQueryError`` when a SPLADE
    query has no token left); with ``fusion`` "client", a linear / rrf hybrid's two
    searches (``search.client_fusion``: ``fused``), whose answers ``fused_response`` fuses."""
    if builder is None or vector is None or not configuration.encodes:
        lexical = dialect.lexical_query(text, configuration.text_fields)
        request = dialect.search_request(lexical, k=k)
        return ColumnPlan(configuration, index, request, dialect)
    hybrid = configuration.hybrid()
    vocab = vector.vocab if isinstance(vector, SparseBatch) else None
    sparse = replace(
        ColumnPlan(configuration, index, SearchRequest({}), dialect),
        builder=builder,
        all_features=builder.features(vector),
        token_of=token_namer(builder, vocab),
        fusion_note=fusion.note if fusion is not None and fusion.fusion else "",
    )
    if hybrid is not None and fusion is not None and fusion.fusion == "client":
        fused = client_fusion(
            builder, vector, text=text, k=k, hybrid=hybrid, pruning=configuration.pruning
        )
        return replace(
            sparse, request=fused.sparse, features=fused.features, prune=fused.prune, fused=fused
        )
    prepared = builder.search_request(
        vector, k=k, text=text, hybrid=hybrid, pruning=configuration.pruning
    )
    return replace(
        sparse, request=prepared.request, features=prepared.features, prune=prepared.prune
    )


def fused_response(plan: ColumnPlan, responses: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The search response of a client-fused plan from its two searches' answers."""
    assert plan.fused is not None
    return plan.fused.response(responses)


def vectors_request(plan: ColumnPlan, ids: Sequence[str]) -> SearchRequest | None:
    """The search that reads the stored vectors of documents ``ids`` (as ``explain`` reads
    one); None when there is nothing to explain (BM25, no hits)."""
    if plan.builder is None or not ids:
        return None
    body = {
        "query": {"ids": {"values": list(ids)}},
        "_source": plan.dialect.source_with_vectors([plan.builder.field]),
        "size": len(ids),
    }
    return SearchRequest(body)


def column_of(
    plan: ColumnPlan,
    response: Mapping[str, Any],
    vectors: Mapping[str, Any] | None,
    *,
    shown: int,
) -> Column:
    """The column of a search ``response`` and the ``vectors_request``'s response: the first
    ``shown`` hits with their contributions, the whole ranking as ``run``."""
    hits = hits_of(response, passages_field=_passages_field(plan))
    stored = _stored_vectors(plan, vectors)
    return Column(
        label=plan.configuration.label,
        index=plan.index,
        kind=plan.configuration.kind,
        hits=tuple(
            _column_hit(plan, hit, rank, stored.get(hit.id))
            for rank, hit in enumerate(hits[:shown], 1)
        ),
        run={hit.id: hit.score for hit in hits},
        query_tokens=query_tokens(plan),
        prune=plan.prune,
        fusion_note=plan.fusion_note,
    )


def failed_column(configuration: Configuration, index: str, error: Exception) -> Column:
    """A column that could not be run, saying why (the other columns still show)."""
    return Column(configuration.label, index, configuration.kind, error=str(error))


def query_tokens(plan: ColumnPlan) -> tuple[QueryToken, ...]:
    """The query vector, heaviest first: kept tokens and those pruning removed."""
    ranked = sorted(plan.all_features.items(), key=lambda kv: (-kv[1], kv[0]))
    return tuple(QueryToken(plan.token_of(key), w, key in plan.features) for key, w in ranked)


def title_of(source: Mapping[str, Any]) -> str:
    """A hit's title, else the first line of its text (cut to ``TITLE_CHARS``).

    >>> title_of({"text": "first line\\nsecond"})
    'first line'
    """
    title = source.get("title")
    if not isinstance(title, str) or not title.strip():
        text = source.get("text")
        title = text.strip().split("\n", 1)[0] if isinstance(text, str) else ""
    return title[:TITLE_CHARS]


def _column_hit(plan: ColumnPlan, hit: Hit, rank: int, stored: Any) -> ColumnHit:
    parts, pruned, passage = _contributions(plan, stored)
    return ColumnHit(
        id=hit.id,
        rank=rank,
        score=hit.score,
        title=title_of(hit.source),
        contributions=parts,
        pruned=pruned,
        passage=passage,
    )


def _contributions(
    plan: ColumnPlan, stored: Any
) -> tuple[tuple[TokenContribution, ...], tuple[TokenContribution, ...], Passage | None]:
    """(contributions, pruned tokens' would-be contributions, passage) of a stored vector
    (or a passages index's passages: the best one's, as ``explain``)."""
    if plan.builder is None or stored is None:
        return (), (), None
    if plan.builder.passages:
        # One passage may be stored as an object rather than a one-element list.
        passages = [stored] if isinstance(stored, Mapping) else list(stored)
        passage, parts = best_passage(plan.features, passages, token_of=plan.token_of)
        return parts, (), passage
    if not isinstance(stored, Mapping):
        return (), (), None
    removed = {k: w for k, w in plan.all_features.items() if k not in plan.features}
    parts = contributions(plan.features, stored, token_of=plan.token_of)
    return parts, contributions(removed, stored, token_of=plan.token_of), None


def _stored_vectors(plan: ColumnPlan, response: Mapping[str, Any] | None) -> dict[str, Any]:
    if plan.builder is None or response is None:
        return {}
    field = plan.builder.field
    return {hit.id: hit.source.get(field) for hit in hits_of(response)}


def _passages_field(plan: ColumnPlan) -> str | None:
    builder = plan.builder
    return builder.field if builder is not None and builder.passages else None
