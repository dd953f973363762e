"""Pure: find ``splade`` clauses in ``_search`` / ``_msearch`` requests and replace them.

A ``splade`` clause may stand wherever a query may stand: the top-level ``query`` and
``post_filter``, rescorers, ``filter``/``filters`` aggregations, kNN filters, retrievers, and
inside the compound queries (``bool``, ``function_score``, ``constant_score``, ``dis_max``,
``nested``, ``boosting``, ``has_child``/``has_parent``, ``script_score``, ``pinned``, OpenSearch
``hybrid``). Long and short forms::

    {"splade": {"<field>": {"query": "text", "top_k": 64, "min_weight": 0.0, "mass": 0.9,
                            "boost": 1.0}}}
    {"splade": {"<field>": "text"}}

With ``hybrid`` (``{"method": "rrf" | "linear" | "sum", "bm25_weight", "text_fields",
"rank_constant", "rank_window_size", "normalizer": "min_max" | "l2", "fusion": "engine" |
"client" | "auto"}``) the clause's
text also runs as BM25 and the two are combined as ``search()`` combines them: such a clause
must be the whole ``query`` of a ``_search`` (``hybrid_search``), because a fused hybrid is a
whole request (the engine's ``hybrid`` query / retriever, or two searches fused client-side).

The walk follows the query grammar, not every key: ``{"term": {"splade": "x"}}`` (a field that
happens to be called ``splade``) is left alone. Replacement queries come from ``QueryBuilder``
(``clause_query``), the same code ``search()`` uses, so the proxy has no query implementation
of its own. Nothing here does I/O.

>>> found = find_clauses({"query": {"bool": {"must": {"splade": {"body": "tax"}}}}, "size": 3})
>>> [(c.path, c.clause.field, c.clause.text) for c in found.clauses]
[(('query', 'bool', 'must'), 'body', 'tax')]
>>> replace_clauses({"query": {"bool": {"must": {"splade": {"body": "tax"}}}}}, found, [{"x": 1}])
{'query': {'bool': {'must': {'x': 1}}}}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engines import HYBRID_METHODS, Hybrid
from ..exceptions import ConfigurationError, InputError
from ..fusion import NORMALIZERS
from ..query import QueryBuilder, QueryPruning, QueryVector
from ..search import FUSIONS, Fusion

CLAUSE = "splade"
# JSON nesting the proxy parses (``serve --max-json-depth``): real search bodies nest a few
# dozen levels; Python's parser and the clause walk recurse, so deeper bodies are refused
# with a 400 before they are parsed.
MAX_DEPTH = 200
Path = tuple[str | int, ...]

# Compound queries: where their sub-queries are. "some" = one query or a list of them.
_COMPOUND: dict[str, tuple[tuple[str, str], ...]] = {
    "bool": (("must", "some"), ("should", "some"), ("filter", "some"), ("must_not", "some")),
    "function_score": (("query", "some"), ("functions", "functions")),
    "constant_score": (("filter", "some"),),
    "dis_max": (("queries", "some"),),
    "nested": (("query", "some"),),
    "boosting": (("positive", "some"), ("negative", "some")),
    "has_child": (("query", "some"),),
    "has_parent": (("query", "some"),),
    "script_score": (("query", "some"),),
    "pinned": (("organic", "some"),),
    "rule": (("organic", "some"),),
    "hybrid": (("queries", "some"),),  # OpenSearch
}
_CLAUSE_KEYS = frozenset({"query", "top_k", "min_weight", "mass", "boost", "hybrid"})
_HYBRID_KEYS = frozenset(
    {
        "method",
        "bm25_weight",
        "text_fields",
        "rank_constant",
        "rank_window_size",
        "normalizer",
        "fusion",
    }
)
# What a search body with a hybrid splade clause may hold besides its query.
_HYBRID_BODY_KEYS = frozenset({"query", "size", "from", "_source", "timeout"})
_SEARCH_PATH = re.compile(r"^/(?:(?P<index>[^/]+)/)?(?P<api>_search|_msearch)/?$")


class RewriteError(InputError):
    """A malformed ``splade`` clause (or one the index cannot take). ``error_type`` is the
    Elasticsearch exception name clients see in the 400 body."""

    def __init__(self, message: str, *, error_type: str = "parsing_exception") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class SpladeClause:
    field: str
    text: str
    pruning: QueryPruning
    boost: float = 1.0
    hybrid: Hybrid | None = None  # the text also runs as BM25, combined as search() does
    fusion: Fusion = "auto"  # who fuses a linear / rrf hybrid


@dataclass(frozen=True)
class Located:
    path: Path
    clause: SpladeClause


@dataclass
class Found:
    """The ``splade`` clauses of one search body, and how many other query nodes it has
    (they count against the cluster's clause limit too)."""

    clauses: list[Located] = field(default_factory=list)
    other_nodes: int = 0

    def reserve(self, max_clauses: int | None) -> int:
        """Clauses to leave free for the rest of the body when pruning each splade clause,
        so that all of them together stay within ``max_clauses``."""
        if max_clauses is None or not self.clauses:
            return 0
        each = max(1, (max_clauses - self.other_nodes) // len(self.clauses))
        return max(0, max_clauses - each)


# ---------------------------------------------------------------------- requests
@dataclass(frozen=True)
class SearchPath:
    api: str  # "_search" | "_msearch"
    index: str | None  # the index expression in the path (may be a list, pattern or alias)


def search_path(path: str) -> SearchPath | None:
    """``/docs/_search`` -> ``SearchPath("_search", "docs")``; None for any other API.

    >>> search_path("/a,b/_msearch"), search_path("/_search"), search_path("/a/_doc/1")
    (SearchPath(api='_msearch', index='a,b'), SearchPath(api='_search', index=None), None)
    """
    match = _SEARCH_PATH.match(path)
    if match is None:
        return None
    index = match.group("index")
    if index is not None and index.startswith("_") and index not in ("_all",):
        return None  # /_cluster/_search and the like are not searches
    return SearchPath(match.group("api"), index)


def may_have_clause(raw: bytes) -> bool:
    """Cheap pre-check: a body without the word cannot hold a clause (no parsing needed)."""
    return b'"splade"' in raw


def parse_json_body(raw: bytes, where: str = "request body", *, max_depth: int = MAX_DEPTH) -> Any:
    """``raw`` parsed as JSON; ``RewriteError`` for bytes that are not UTF-8 JSON, and for
    JSON whose arrays and objects nest deeper than ``max_depth`` (the clause walk recurses
    per level; a body 3,000 levels deep exhausted the interpreter's stack in the parser)."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = f"{where}: not valid JSON ({exc})"
        raise RewriteError(message, error_type="parse_exception") from None
    except RecursionError:  # deeper than Python's parser goes: far past any limit
        value = None
        deep = True
    else:
        # Only a body with more brackets than the limit can nest past it.
        deep = raw.count(b"[") + raw.count(b"{") > max_depth and deeper_than(value, max_depth)
    if deep:
        raise RewriteError(
            f"{where}: JSON nested more than {max_depth} levels deep, the proxy's limit "
            "(--max-json-depth)"
        )
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels in ``value`` (parsed JSON),
    found without recursion.

    >>> deeper_than({"a": [1, {"b": "[[["}]}, 3), deeper_than({"a": [1, {"b": "[[["}]}, 2)
    (False, True)
    """
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


@dataclass(frozen=True)
class MsearchItem:
    header_line: bytes
    body_line: bytes
    header: Mapping[str, Any]


def split_msearch(raw: bytes, *, max_depth: int = MAX_DEPTH) -> list[MsearchItem]:
    """An ``_msearch`` NDJSON body as (header, body) pairs, lines kept as they came."""
    lines = raw.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 2:
        raise RewriteError(
            "msearch body: expected header and body lines in pairs, "
            f"got {len(lines)} lines (the last header has no body)",
            error_type="illegal_argument_exception",
        )
    items = []
    for n in range(0, len(lines), 2):
        header_line, body_line = lines[n], lines[n + 1]
        header = (
            parse_json_body(header_line, f"msearch line {n + 1}", max_depth=max_depth)
            if header_line.strip()
            else {}
        )
        if not isinstance(header, dict):
            raise RewriteError(f"msearch line {n + 1}: the header is not a JSON object")
        items.append(MsearchItem(header_line, body_line, header))
    return items


def join_msearch(lines: Sequence[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def msearch_index(header: Mapping[str, Any], default: str | None) -> str | None:
    """The index expression one msearch item targets."""
    index = header.get("index", default)
    if isinstance(index, list):
        return ",".join(str(i) for i in index)
    return None if index is None else str(index)


# ---------------------------------------------------------------------- finding
def find_clauses(body: Any) -> Found:
    """Every ``splade`` clause of a search body (raises ``RewriteError`` on a malformed one)."""
    found = Found()
    if isinstance(body, dict):
        _walk_search_body(body, (), found)
    return found


def _some(value: Any, path: Path) -> Iterator[tuple[Any, Path]]:
    """One item or each item of a list, with its path."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield item, (*path, i)
    elif value is not None:
        yield value, path


def _walk_search_body(body: Mapping[str, Any], path: Path, found: Found) -> None:
    for key in ("query", "post_filter"):
        if key in body:
            _walk_query(body[key], (*path, key), found)
    for rescore, where in _some(body.get("rescore"), (*path, "rescore")):
        query = rescore.get("query") if isinstance(rescore, dict) else None
        if isinstance(query, dict) and "rescore_query" in query:
            _walk_query(query["rescore_query"], (*where, "query", "rescore_query"), found)
    for key in ("aggs", "aggregations"):
        _walk_aggs(body.get(key), (*path, key), found)
    for knn, where in _some(body.get("knn"), (*path, "knn")):
        if isinstance(knn, dict):
            for query, at in _some(knn.get("filter"), (*where, "filter")):
                _walk_query(query, at, found)
    if "retriever" in body:
        _walk_retriever(body["retriever"], (*path, "retriever"), found)


def _walk_query(query: Any, path: Path, found: Found) -> None:
    if not isinstance(query, dict) or len(query) != 1:
        found.other_nodes += 1  # malformed or empty: the engine will say what is wrong
        return
    ((kind, spec),) = query.items()
    if kind == CLAUSE:
        found.clauses.append(Located(path, parse_clause(spec, path)))
        return
    found.other_nodes += 1
    children = _COMPOUND.get(kind)
    if children is None or not isinstance(spec, dict):
        return
    for key, shape in children:
        if key not in spec:
            continue
        if shape == "functions":
            for function, at in _some(spec[key], (*path, kind, key)):
                if isinstance(function, dict) and "filter" in function:
                    _walk_query(function["filter"], (*at, "filter"), found)
        else:
            for sub, at in _some(spec[key], (*path, kind, key)):
                _walk_query(sub, at, found)


def _walk_aggs(aggs: Any, path: Path, found: Found) -> None:
    if not isinstance(aggs, dict):
        return
    for name, agg in aggs.items():
        if not isinstance(agg, dict):
            continue
        where = (*path, name)
        if "filter" in agg:
            _walk_query(agg["filter"], (*where, "filter"), found)
        for kind in ("filters", "adjacency_matrix"):
            spec = agg.get(kind)
            filters = spec.get("filters") if isinstance(spec, dict) else None
            if isinstance(filters, dict):
                for key, query in filters.items():
                    _walk_query(query, (*where, kind, "filters", key), found)
            else:
                for query, at in _some(filters, (*where, kind, "filters")):
                    _walk_query(query, at, found)
        for key in ("aggs", "aggregations"):
            _walk_aggs(agg.get(key), (*where, key), found)


def _walk_retriever(retriever: Any, path: Path, found: Found) -> None:
    if not isinstance(retriever, dict) or len(retriever) != 1:
        return
    ((kind, spec),) = retriever.items()
    if not isinstance(spec, dict):
        return
    where = (*path, kind)
    if "query" in spec:
        _walk_query(spec["query"], (*where, "query"), found)
    for query, at in _some(spec.get("filter"), (*where, "filter")):
        _walk_query(query, at, found)
    if "retriever" in spec:
        _walk_retriever(spec["retriever"], (*where, "retriever"), found)
    for sub, at in _some(spec.get("retrievers"), (*where, "retrievers")):
        if isinstance(sub, dict) and "retriever" in sub:  # linear: {"retriever": R, "weight"}
            _walk_retriever(sub["retriever"], (*at, "retriever"), found)
        else:
            _walk_retriever(sub, at, found)


# ---------------------------------------------------------------------- parsing a clause
def parse_clause(spec: Any, path: Path = ()) -> SpladeClause:
    """A ``splade`` clause's field, text, pruning and boost; ``RewriteError`` naming what is
    wrong (and where) otherwise."""
    where = f"[{CLAUSE}] query at {_dotted(path)}" if path else f"[{CLAUSE}] query"
    if not isinstance(spec, dict) or len(spec) != 1:
        got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise RewriteError(f"{where} must name exactly one field ({{field: text}}), got {got}")
    ((field_name, value),) = spec.items()
    if not isinstance(value, dict):
        value = {"query": value}
    unknown = sorted(set(value) - _CLAUSE_KEYS)
    if unknown:
        raise RewriteError(
            f"{where} does not support [{unknown[0]}] (field [{field_name}]); "
            f"known: {', '.join(sorted(_CLAUSE_KEYS))}"
        )
    text = value.get("query")
    if not isinstance(text, str) or not text.strip():
        raise RewriteError(f"{where} needs a non-empty [query] string for field [{field_name}]")
    top_k = value.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise RewriteError(f"{where}: [top_k] must be an integer, got {json.dumps(top_k)}")
    min_weight = _number(value, "min_weight", where)
    mass = _number(value, "mass", where)
    boost = _number(value, "boost", where)
    try:
        pruning = QueryPruning(top_k=top_k, min_weight=min_weight, mass=mass)
    except ConfigurationError as exc:
        raise RewriteError(f"{where}: {exc}", error_type="illegal_argument_exception") from None
    if boost is not None and boost < 0:
        raise RewriteError(
            f"{where}: negative [boost] is not allowed", error_type="illegal_argument_exception"
        )
    hybrid, fusion = _hybrid(value.get("hybrid"), where)
    if hybrid is not None and boost not in (None, 1.0):
        raise RewriteError(f"{where}: [boost] does not apply to a [hybrid] clause")
    return SpladeClause(
        field=str(field_name),
        text=text,
        pruning=pruning,
        boost=1.0 if boost is None else boost,
        hybrid=hybrid,
        fusion=fusion,
    )


def _hybrid(spec: Any, where: str) -> tuple[Hybrid | None, Fusion]:
    """A clause's ``hybrid`` object as ``Hybrid`` and its ``fusion`` (default ``auto``)."""
    if spec is None:
        return None, "auto"
    if not isinstance(spec, dict):
        raise RewriteError(f"{where}: [hybrid] must be an object, got {json.dumps(spec)}")
    unknown = sorted(set(spec) - _HYBRID_KEYS)
    if unknown:
        raise RewriteError(
            f"{where}: [hybrid] does not support [{unknown[0]}]; known: "
            f"{', '.join(sorted(_HYBRID_KEYS))}"
        )
    options = dict(spec)
    fusion = options.pop("fusion", "auto")
    if fusion not in FUSIONS:
        raise RewriteError(
            f"{where}: [hybrid.fusion] must be one of {', '.join(FUSIONS)}, got "
            f"{json.dumps(fusion)}",
            error_type="illegal_argument_exception",
        )
    method = options.get("method", "sum")
    if method not in HYBRID_METHODS:
        raise RewriteError(
            f"{where}: [hybrid.method] must be one of {', '.join(HYBRID_METHODS)}, got "
            f"{json.dumps(method)}",
            error_type="illegal_argument_exception",
        )
    fields = options.get("text_fields")
    if fields is not None:
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise RewriteError(f"{where}: [hybrid.text_fields] must be a list of field names")
        options["text_fields"] = tuple(fields)
    for key in ("rank_constant", "rank_window_size"):
        number = options.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise RewriteError(f"{where}: [hybrid.{key}] must be an integer")
    normalizer = options.get("normalizer")
    if normalizer is not None and normalizer not in NORMALIZERS:
        raise RewriteError(
            f"{where}: [hybrid.normalizer] must be one of {', '.join(NORMALIZERS)}, got "
            f"{json.dumps(normalizer)}",
            error_type="illegal_argument_exception",
        )
    weight = options.get("bm25_weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
        raise RewriteError(f"{where}: [hybrid.bm25_weight] must be a number")
    try:
        return Hybrid(**options), fusion
    except ConfigurationError as exc:
        raise RewriteError(
            f"{where}: [hybrid] {exc}", error_type="illegal_argument_exception"
        ) from None


@dataclass(frozen=True)
class HybridSearch:
    """A ``_search`` body whose whole query is a ``splade`` clause with ``hybrid``."""

    clause: SpladeClause
    k: int
    source: Any


def hybrid_search(body: Any, found: Found) -> HybridSearch | None:
    """The hybrid search ``body`` asks for (its one ``splade`` clause with ``hybrid``), None
    when no clause has ``hybrid``; ``RewriteError`` when one has it anywhere but as the whole
    ``query`` of the body, or the body asks for what a fused hybrid cannot give.

    >>> clause = {"splade": {"body": {"query": "tax", "hybrid": {"method": "rrf"}}}}
    >>> body = {"query": clause, "size": 3}
    >>> found = hybrid_search(body, find_clauses(body))
    >>> found.clause.hybrid.method, found.clause.fusion, found.k
    ('rrf', 'auto', 3)
    """
    hybrids = [c for c in found.clauses if c.clause.hybrid is not None]
    if not hybrids:
        return None
    located = hybrids[0]
    if located.path != ("query",) or len(found.clauses) != 1 or found.other_nodes:
        raise RewriteError(
            f"a [{CLAUSE}] clause with [hybrid] must be the whole [query] of a _search body "
            f"(found at {_dotted(located.path)}): it becomes a whole hybrid request",
            error_type="illegal_argument_exception",
        )
    extra = sorted(set(body) - _HYBRID_BODY_KEYS)
    if extra:
        raise RewriteError(
            f"a _search with a [{CLAUSE}] [hybrid] clause takes only "
            f"{', '.join(sorted(_HYBRID_BODY_KEYS))}; got [{extra[0]}]",
            error_type="illegal_argument_exception",
        )
    if body.get("from", 0) != 0:
        raise RewriteError(
            f"[from] must be 0 with a [{CLAUSE}] [hybrid] clause (a fused list has no pages)",
            error_type="illegal_argument_exception",
        )
    size = body.get("size", 10)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise RewriteError(f"[size] must be a positive integer, got {json.dumps(size)}")
    return HybridSearch(located.clause, size, body.get("_source", True))


def _number(value: Mapping[str, Any], key: str, where: str) -> float | None:
    number = value.get(key)
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise RewriteError(f"{where}: [{key}] must be a number, got {json.dumps(number)}")
    return float(number)


def _dotted(path: Path) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")


# ---------------------------------------------------------------------- replacing
def clause_query(
    builder: QueryBuilder, clause: SpladeClause, vector: QueryVector, *, reserve: int = 0
) -> dict[str, Any]:
    """The dialect's query for one clause: ``QueryBuilder.sparse_query`` with the clause's
    pruning, boosted when asked (a ``bool`` wrapper multiplies the score, on every engine).
    A clause with ``hybrid`` is a whole request (``hybrid_search``), refused here."""
    if clause.hybrid is not None:
        raise RewriteError(
            f"a [{CLAUSE}] clause with [hybrid] is supported as the whole [query] of a _search "
            "only (not in _msearch, nor inside another query)",
            error_type="illegal_argument_exception",
        )
    query = builder.sparse_query(vector, pruning=clause.pruning, reserve=reserve)
    if clause.boost == 1.0:
        return query
    return {"bool": {"must": [query], "boost": clause.boost}}


def replace_clauses(body: Any, found: Found, queries: Sequence[dict[str, Any]]) -> Any:
    """``body`` with each found clause replaced by its query, in order. Containers on the way
    are copied; ``body`` itself is not changed."""
    if len(queries) != len(found.clauses):
        raise ValueError(f"{len(found.clauses)} clauses but {len(queries)} queries")
    for located, query in zip(found.clauses, queries, strict=True):
        body = _replace_at(body, located.path, query)
    return body


def _replace_at(node: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy: Any = list(node) if isinstance(node, list) else dict(node)
    copy[head] = _replace_at(node[head], rest, value)
    return copy


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
