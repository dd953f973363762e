"""``doctor``: prove on the user's own cluster that every capability splade-es claims for it
scores the exact SPLADE dot product.

::

    report = doctor(client)          # a few seconds
    report.ok                        # False only when something the dialect claims failed

Steps: detect the engine, version, distribution, license (Elasticsearch), plugins and the
clause limit; create temporary, uniquely named indices (deleted afterwards, even on an error
or Ctrl-C), index a handful of documents with known vectors, then for every field type and
query style the dialect offers on this version run queries and check that each ``_score`` is
the dot product at the engines' storage precision (9 significant bits) and that exactly the
matching documents come back; read the documents back as a migration would; try each hybrid
method. A capability the cluster lacks (a plugin, a license, a version) is reported as
``unsupported`` with the engine's own words, not as a failure.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import elasticsearch
import opensearchpy

from . import defaults
from .connect import ClientOrCluster, Cluster, call
from .engines import (
    FIELD_TYPES,
    HYBRID_METHODS,
    Dialect,
    FieldType,
    Hybrid,
    QueryStyle,
    dialect_of,
)
from .engines.base import rank_feature_query
from .exceptions import SpladeEsError
from .ingest.index_source import read_index
from .query import clause_limit_of
from .sparse import Vocabulary, stored_precision
from .tokens import TokenCodec

Status = Literal["ok", "unsupported", "FAILED"]

FIELD = defaults.VECTOR_FIELD  # the sparse field of the doctor's indices

# Known vectors. Weights such as 0.7 and 0.001 are not exact in 9 bits, so a score computed
# without the storage precision differs by far more than the tolerance; "." and "%" exercise
# the key escaping; "zebra" is in the query and in no document.
VOCAB = Vocabulary(
    ["[PAD]", "tax", "depreciation", "##s", ".", "garlic", "u.s", "brain", "vector", "%", "zebra"],
    special_ids={0},
)
DOCUMENTS: dict[str, dict[str, Any]] = {
    "d1": {
        "title": "tax depreciation",
        "text": "the tax code",
        "vector": {"tax": 0.7, "depreciation": 1.3, "##s": 2.9, ".": 0.33},
    },
    "d2": {"title": "tax", "text": "garlic tax", "vector": {"tax": 3.3, "garlic": 0.11}},
    "d3": {
        "title": "depreciation",
        "text": "brain",
        "vector": {"depreciation": 0.05, "u.s": 7.77, "brain": 1.1, "%": 0.6},
    },
    "d4": {"title": "garlic powder", "text": "brain", "vector": {"garlic": 1.0, "brain": 0.42}},
    "d5": {"title": "vectors", "text": "search", "vector": {"vector": 0.9, "tax": 0.001}},
    "d6": {"title": "unrelated", "text": "nothing here", "vector": {"brain": 0.5}},
}
QUERY = {"tax": 2.0, "depreciation": 0.5, "##s": 1.25, "u.s": 0.375, ".": 3.0, "zebra": 1.0}
FILTER_IDS = ("d1", "d3", "d4")
LEXICAL_TEXT = "tax garlic"
HYBRID = {"bm25_weight": 0.25, "rank_constant": 20, "rank_window_size": 10}
SIZE = 10
REL_TOL = 1e-5  # the engines sum float32 products
PROBE_CAP = 65_536  # the largest clause count the Elasticsearch probe tries
_CLAUSE_LIMIT_RE = re.compile(r"maxClauseCount is set to (\d+)")
_CLAUSES_RE = re.compile(r"too.many.(nested.)?clauses|maxClauseCount", re.IGNORECASE)
_LICENSE_RE = re.compile(r"license", re.IGNORECASE)
_UNKNOWN_RE = re.compile(
    r"unknown query|no \[query\] registered|unsupported_operation|no handler found|"
    r"No mapper found|No handler for type|Invalid processor type|unknown retriever|"
    r"no such processor|not supported",
    re.IGNORECASE,
)
_ENGINE_ERRORS = (elasticsearch.ApiError, elasticsearch.TransportError, opensearchpy.TransportError)


@dataclass(frozen=True)
class Check:
    """One capability: ``ok``, ``unsupported`` (the cluster lacks it: version, plugin,
    license) or ``FAILED`` (it runs but is wrong, or errs where it should work)."""

    capability: str
    status: Status
    detail: str
    engine_error: str | None = None
    claimed: bool = True  # whether the dialect claims it for this engine version
    ms: float = 0.0


@dataclass(frozen=True)
class ClusterFacts:
    engine: str
    version: str
    distribution: str
    license: str | None  # Elasticsearch license type and status; None where none applies
    plugins: tuple[str, ...] | None  # None when the list could not be read
    clause_limit: int  # what splade-es prunes queries to (cluster settings)
    clause_limit_probed: int | None  # what the engine enforces, where it was measured


@dataclass(frozen=True)
class DoctorReport:
    facts: ClusterFacts
    checks: tuple[Check, ...]
    index_prefix: str
    left_behind: tuple[str, ...] = field(default=())  # what could not be deleted

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "FAILED")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class CheckFailed(Exception):
    """Inside a check: what came back is wrong (the message says how)."""


# ---------------------------------------------------------------------- pure helpers
def expected_scores(
    query: Mapping[str, float], documents: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Per document that shares a key with ``query``: the dot product with the document's
    weights at storage precision. Pure."""
    out = {}
    for doc_id, vector in documents.items():
        common = [k for k in query if k in vector]
        if common:
            stored = stored_precision([vector[k] for k in common])
            out[doc_id] = math.fsum(
                query[k] * float(s) for k, s in zip(common, stored, strict=True)
            )
    return out


def compare_hits(hits: Sequence[tuple[str, float]], expected: Mapping[str, float]) -> None:
    """``CheckFailed`` unless ``hits`` are exactly the expected documents with their scores."""
    got = {doc_id for doc_id, _ in hits}
    if got != set(expected):
        raise CheckFailed(f"documents {sorted(got)} came back, expected exactly {sorted(expected)}")
    for doc_id, score in hits:
        if not math.isclose(score, expected[doc_id], rel_tol=REL_TOL, abs_tol=1e-9):
            raise CheckFailed(
                f"{doc_id}: _score {score!r}, dot product at stored precision {expected[doc_id]!r}"
            )


def rrf_scores(lists: Sequence[Sequence[str]], rank_constant: int) -> dict[str, float]:
    """Reciprocal rank fusion: sum over the lists of ``1 / (rank_constant + rank)``, ranks
    from 1. Pure."""
    out: dict[str, float] = {}
    for ranked in lists:
        for rank, doc_id in enumerate(ranked, start=1):
            out[doc_id] = out.get(doc_id, 0.0) + 1.0 / (rank_constant + rank)
    return out


def has_ties(hits: Sequence[tuple[str, float]]) -> bool:
    scores = [s for _, s in hits]
    return len(set(scores)) != len(scores)


def clause_limit_in(text: str) -> int | None:
    """The limit Lucene names when it refuses a query ("maxClauseCount is set to N")."""
    match = _CLAUSE_LIMIT_RE.search(text)
    return int(match.group(1)) if match else None


def engine_error(exc: BaseException) -> str:
    """The engine's own error, in one line: type and reason of the root cause."""
    body = getattr(exc, "body", None)
    if body is None:
        body = getattr(exc, "info", None)
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        text = body["error"]  # a bare message (no handler for a URL, ...)
    elif isinstance(body, str) and body.strip():
        text = body
    elif isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error = body["error"]
        causes = error.get("root_cause") or [error]
        cause = causes[0] if isinstance(causes[0], Mapping) else error
        text = f"{cause.get('type', '')}: {cause.get('reason', '')}".strip(": ")
        if error.get("caused_by") and isinstance(error["caused_by"], Mapping):
            deeper = error["caused_by"].get("reason")
            if deeper and deeper not in text:
                text += f" ({deeper})"
    else:
        text = str(exc)
    return " ".join(text.split())[:400] or type(exc).__name__


# ---------------------------------------------------------------------- the run
def doctor(target: ClientOrCluster, *, prefix: str = "splade-es-doctor") -> DoctorReport:
    """Check every capability splade-es claims for the cluster of ``target`` (a client or a
    ``Cluster``). Creates and deletes temporary indices named ``<prefix>-<random>-...``."""
    cluster = target if isinstance(target, Cluster) else Cluster.from_client(target)
    return _Doctor(cluster, f"{prefix}-{uuid.uuid4().hex[:12]}").run()


class _Doctor:
    def __init__(self, cluster: Cluster, base: str) -> None:
        self.client = cluster.client
        self.cluster = cluster
        self.dialect: Dialect = dialect_of(cluster)
        self.base = base
        self.plugins: tuple[str, ...] | None = None
        self.created: list[tuple[str, str]] = []  # ("index" | "pipeline", name)
        self.checks: list[Check] = []
        self.probed: int | None = None

    # ------------------------------------------------------------------ orchestration
    def run(self) -> DoctorReport:
        facts = self._facts()
        left_behind: tuple[str, ...] = ()
        try:
            indices = {ft: self._field_type(ft) for ft in FIELD_TYPES}
            rank_index = indices.get("rank_features")
            if rank_index:
                self._clause_limit(rank_index, facts.clause_limit)
                for method in HYBRID_METHODS:
                    self._hybrid(rank_index, method)
        finally:
            left_behind = self._cleanup()
        return DoctorReport(
            facts=replace(facts, clause_limit_probed=self.probed),
            checks=tuple(self.checks),
            index_prefix=self.base,
            left_behind=left_behind,
        )

    def _facts(self) -> ClusterFacts:
        """What the cluster says about itself (the clause limit is probed later)."""
        info = call(self.client.info, "reading cluster info")
        self.plugins = plugins = self._plugins()
        return ClusterFacts(
            engine=self.cluster.engine,
            version=str(info.get("version", {}).get("number", self.dialect.version_text)),
            distribution=_distribution(info),
            license=self._license(),
            plugins=plugins,
            clause_limit=clause_limit_of(self.client, self.dialect),
            clause_limit_probed=None,
        )

    @contextlib.contextmanager
    def _check(self, capability: str, requirement: str) -> Iterator[dict[str, str]]:
        """Record one check. The body sets ``note["detail"]`` on success; an engine error
        becomes ``unsupported`` when ``requirement`` (a plugin or license the cluster lacks,
        or an engine that says it does not know the feature) explains it, else ``FAILED``."""
        note = {"detail": ""}
        started = time.perf_counter()

        def add(status: Status, detail: str, error: str | None = None) -> None:
            ms = (time.perf_counter() - started) * 1000
            self.checks.append(Check(capability, status, detail, error, True, round(ms, 1)))

        try:
            yield note
        except CheckFailed as exc:
            add("FAILED", str(exc))
        except _ENGINE_ERRORS as exc:
            text = engine_error(exc)
            reason = self._unsupported_reason(requirement, text)
            add("unsupported" if reason else "FAILED", reason or "the engine refused it", text)
        except SpladeEsError as exc:
            add("FAILED", str(exc))
        else:
            add("ok", note["detail"])

    def _unsupported_reason(self, capability: str, error: str) -> str | None:
        license_level = self.dialect.required_license(capability)
        if license_level and _LICENSE_RE.search(error):
            return f"needs an {license_level} (or trial) license"
        plugin = self.dialect.required_plugin(capability)
        if plugin and (self.plugins is None or plugin not in self.plugins):
            return f"needs plugin {plugin}"
        return None

    def _skip(self, capability: str, detail: str, *, claimed: bool = False) -> None:
        self.checks.append(Check(capability, "unsupported", detail, None, claimed))

    # ------------------------------------------------------------------ field types
    def _field_type(self, field_type: FieldType) -> str | None:
        """Create, fill and read back an index of ``field_type``, then check its queries.
        Returns the index name when it holds the documents."""
        capability = f"{field_type} field"
        if field_type not in self.dialect.field_types():
            self._skip(capability, self._why_not(lambda: self.dialect.check_field_type(field_type)))
            return None
        index = f"{self.base}-{field_type.replace('_', '-')}"
        codec = TokenCodec(VOCAB, scheme=self.dialect.key_scheme(field_type))
        vectors = {d: codec.encode_tokens(doc["vector"]) for d, doc in DOCUMENTS.items()}
        stored = False
        with self._check(capability, f"field:{field_type}") as note:
            body = self.dialect.index_body(field_type, sparse_field=FIELD, replicas=0)
            self._create(
                ("index", index), lambda: self.client.indices.create(index=index, body=body)
            )
            for doc_id, doc in DOCUMENTS.items():
                source = {"id": doc_id, "title": doc["title"], "text": doc["text"]}
                self.client.index(index=index, id=doc_id, body={**source, FIELD: vectors[doc_id]})
            self.client.indices.refresh(index=index)
            stored = True
            self._read_back(index, vectors)
            note["detail"] = (
                f"{len(DOCUMENTS)} documents indexed; get and the migration reader return "
                "every vector"
            )
        styles = self.dialect.query_styles(field_type)
        if not stored:
            for style in styles:
                self._skip(
                    f"{field_type} · {style} query", f"no {field_type} field here", claimed=True
                )
            return None
        if not styles:
            self._skip(
                f"{field_type} · query",
                self._why_not(lambda: self.dialect.style_for(field_type, None)),
            )
        query = codec.encode_tokens(QUERY)
        for style in styles:
            self._query(index, field_type, style, query, vectors)
        return index

    def _read_back(self, index: str, vectors: Mapping[str, Mapping[str, float]]) -> None:
        """Documents come back with their vectors through mget and the migration reader."""
        source = self.dialect.full_source()
        docs = [{"_id": d, "_source": source} for d in DOCUMENTS]
        found = self.client.mget(index=index, body={"docs": docs})["docs"]
        by_mget = {d["_id"]: (d.get("_source") or {}).get(FIELD) for d in found}
        by_reader = {
            str(r.doc["_id"]): r.doc.get(FIELD)
            for r in read_index(self.client, index, dialect=self.dialect, page_size=4)
            if r.doc is not None  # the index reader yields documents only, no error records
        }
        for how, got in (("mget", by_mget), ("the migration reader", by_reader)):
            if set(got) != set(vectors):
                raise CheckFailed(f"{how} returned {sorted(got)}, expected {sorted(vectors)}")
            for doc_id, vector in vectors.items():
                if not _same_vector(got[doc_id], vector):
                    raise CheckFailed(f"{how} returned {doc_id} without its vector as indexed")

    def _query(
        self,
        index: str,
        field_type: FieldType,
        style: QueryStyle,
        query: Mapping[str, float],
        vectors: Mapping[str, Mapping[str, float]],
    ) -> None:
        capability = f"{field_type} · {style} query"
        with self._check(capability, f"query:{style}") as note:
            sparse = self.dialect.sparse_query(
                query, field=FIELD, field_type=field_type, style=style
            )
            expected = expected_scores(query, vectors)
            compare_hits(self._search(index, self.dialect.search_request(sparse, k=SIZE)), expected)
            filters = [{"terms": {"id": list(FILTER_IDS)}}]
            filtered = self.dialect.search_request(sparse, k=SIZE, filters=filters)
            compare_hits(
                self._search(index, filtered),
                {d: s for d, s in expected.items() if d in FILTER_IDS},
            )
            note["detail"] = (
                f"_score = dot product at 9-bit precision for {len(expected)} matching "
                "documents, none other; also filtered"
            )
            approximation = self.dialect.approximation(field_type)
            if approximation:
                note["detail"] += f" ({approximation})"

    # ------------------------------------------------------------------ clause limit
    def _clause_limit(self, index: str, assumed: int) -> None:
        """Elasticsearch derives its limit from heap and search threads: measure it (Lucene
        names the limit when it refuses a query). OpenSearch enforces its setting: confirm
        that a query of exactly that many clauses runs."""
        with self._check("clause limit", "clause-limit") as note:
            self._search_clauses(index, assumed)  # what we prune to must run
            if self.dialect.derives_clause_limit:
                limit = self._probe_clause_limit(index, assumed)
                self.probed = limit if limit <= PROBE_CAP else None
                note["detail"] = (
                    f"the engine enforces {limit}"
                    if self.probed
                    else f"the engine accepts more than {PROBE_CAP}"
                ) + f"; splade-es prunes queries to {assumed} (max_clauses raises it)"
            else:
                self.probed = self._refused_at(index, assumed + 1)
                note["detail"] = f"a query of {assumed} clauses runs; " + (
                    f"{assumed + 1} is refused"
                    if self.probed
                    else f"{assumed + 1} runs too (this engine does not enforce the setting)"
                )

    def _probe_clause_limit(self, index: str, start: int) -> int:
        """Double the clause count until the engine refuses; it names its limit then."""
        count = start
        while count <= PROBE_CAP:
            limit = self._refused_at(index, count + 1)
            if limit is not None:
                return limit
            count *= 2
        return PROBE_CAP + 1

    def _refused_at(self, index: str, count: int) -> int | None:
        """None if a ``count``-clause query runs; if it is refused for its clauses, the limit
        (as the engine names it, else ``count - 1``). Any other error is raised."""
        try:
            self._search_clauses(index, count)
        except _ENGINE_ERRORS as exc:
            body = getattr(exc, "body", None) or getattr(exc, "info", None) or ""
            text = f"{body} {exc}"
            if not _CLAUSES_RE.search(text):
                raise
            return clause_limit_in(text) or count - 1
        return None

    def _search_clauses(self, index: str, count: int) -> None:
        features = {f"probe{i}": 1.0 for i in range(count)}
        self.client.search(
            index=index, body={"query": rank_feature_query(features, FIELD), "size": 0}
        )

    # ------------------------------------------------------------------ hybrids
    def _hybrid(self, index: str, method: str) -> None:
        capability = f"hybrid {method}"
        hybrid = Hybrid(method=method, pipeline=f"{self.base}-{method}", **HYBRID)  # type: ignore[arg-type]
        if method not in self.dialect.hybrid_methods():
            self._skip(capability, self._why_not(lambda: self.dialect.check_hybrid(hybrid)))
            return
        codec = TokenCodec(VOCAB, scheme=self.dialect.key_scheme("rank_features"))
        query = codec.encode_tokens(QUERY)
        vectors = {d: codec.encode_tokens(doc["vector"]) for d, doc in DOCUMENTS.items()}
        with self._check(capability, f"hybrid:{method}") as note:
            sparse = self.dialect.sparse_query(query, field=FIELD)
            lexical = self.dialect.lexical_query(LEXICAL_TEXT, hybrid.text_fields)
            pipeline = self.dialect.hybrid_pipeline_body(hybrid)
            if pipeline is not None:
                self._create(
                    ("pipeline", hybrid.pipeline_name),
                    lambda: self.client.search_pipeline.put(id=hybrid.pipeline_name, body=pipeline),
                )
            request = self.dialect.search_request(sparse, k=SIZE, lexical=lexical, hybrid=hybrid)
            hits = self._search(index, request)
            splade_hits = self._search(index, self.dialect.search_request(sparse, k=SIZE))
            bm25_hits = self._search(index, self.dialect.search_request(lexical, k=SIZE))
            compare_hits(splade_hits, expected_scores(query, vectors))
            note["detail"] = _check_fusion(method, hybrid, hits, splade_hits, bm25_hits)

    # ------------------------------------------------------------------ cluster calls
    def _search(self, index: str, request: Any) -> list[tuple[str, float]]:
        response = self.client.search(index=index, body=request.body, **dict(request.params))
        return [(str(h["_id"]), float(h["_score"])) for h in response["hits"]["hits"]]

    def _plugins(self) -> tuple[str, ...] | None:
        try:
            rows = self.client.cat.plugins(format="json")
        except _ENGINE_ERRORS:
            return None  # reading the list may need a privilege the user lacks
        return tuple(sorted({str(r.get("component")) for r in rows if r.get("component")}))

    def _license(self) -> str | None:
        try:
            return self.dialect.read_license(self.client)
        except (*_ENGINE_ERRORS, KeyError):
            return None  # no license API (serverless), or no privilege to read it

    def _why_not(self, attempt: Callable[[], Any]) -> str:
        try:
            attempt()
        except SpladeEsError as exc:
            return str(exc)
        return "not offered on this version"

    def _create(self, resource: tuple[str, str], create: Callable[[], Any]) -> None:
        """Create something to delete afterwards. Recorded first, so that a Ctrl-C while the
        request is under way still deletes it; forgotten again if the engine refused it."""
        self.created.append(resource)
        try:
            create()
        except _ENGINE_ERRORS:
            self.created.remove(resource)
            raise

    def _cleanup(self) -> tuple[str, ...]:
        """Delete what this run created. A Ctrl-C during cleanup does not stop it; it is
        re-raised once everything was tried."""
        left: list[str] = []
        interrupted: KeyboardInterrupt | None = None
        for kind, name in reversed(self.created):
            for _ in range(2):  # a second try after a Ctrl-C in the middle of a delete
                try:
                    if kind == "index":
                        self.client.indices.delete(index=name, ignore_unavailable=True)
                    else:
                        self.client.search_pipeline.delete(id=name)
                    break
                except KeyboardInterrupt as exc:
                    interrupted = exc
                except Exception as exc:  # reported, never hides the checks' results
                    if "not_found" not in engine_error(exc) and "404" not in str(exc):
                        left.append(f"{kind} {name}: {engine_error(exc)}")
                    break
            else:
                left.append(f"{kind} {name}: interrupted")
        self.created.clear()
        if interrupted is not None:
            raise interrupted
        return tuple(left)


def _check_fusion(
    method: str,
    hybrid: Hybrid,
    hits: Sequence[tuple[str, float]],
    splade_hits: Sequence[tuple[str, float]],
    bm25_hits: Sequence[tuple[str, float]],
) -> str:
    """What a fused result must be, given the two lists it fuses. Pure; ``CheckFailed``."""
    union = {d for d, _ in splade_hits} | {d for d, _ in bm25_hits}
    got = {d for d, _ in hits}
    if got != union:
        raise CheckFailed(
            f"documents {sorted(got)}, expected those of either query {sorted(union)}"
        )
    if method == "sum":
        splade, bm25 = dict(splade_hits), dict(bm25_hits)
        w = hybrid.bm25_weight
        expected = {d: (1 - w) * splade.get(d, 0.0) + w * bm25.get(d, 0.0) for d in union}
        compare_hits(hits, expected)
        return f"_score = {1 - w:g} x SPLADE + {w:g} x BM25 for all {len(union)} documents"
    if method == "rrf":
        if has_ties(splade_hits) or has_ties(bm25_hits):
            return f"the {len(union)} documents of either query (tied scores: ranks not checked)"
        ranked = [[d for d, _ in bm25_hits], [d for d, _ in splade_hits]]
        compare_hits(hits, rrf_scores(ranked, hybrid.rank_constant))
        return f"_score = RRF with rank_constant {hybrid.rank_constant} over both result lists"
    outside = [(d, s) for d, s in hits if not -1e-6 <= s <= 1 + 1e-6]
    if outside:
        raise CheckFailed(f"min-max normalised scores outside [0, 1]: {outside}")
    return f"the {len(union)} documents of either query, normalised scores in [0, 1]"


def _same_vector(got: Any, sent: Mapping[str, float]) -> bool:
    """The vector as indexed, or as the engine stores it (synthetic source)."""
    if not isinstance(got, Mapping) or set(got) != set(sent):
        return False
    return all(
        float(got[k]) in (float(sent[k]), float(stored_precision([sent[k]])[0])) for k in sent
    )


def _distribution(info: Mapping[str, Any]) -> str:
    version = info.get("version", {})
    parts = [version.get("distribution") or version.get("build_flavor"), version.get("build_type")]
    return " ".join(str(p) for p in parts if p) or "unknown"
