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

With ``serve=ServeTarget(url=..., api_key=...)`` (``splade-es doctor --serve-url``) three rows
more, on whether the cluster's own inference reaches ``splade-es serve`` (``serve_checks``):

* ``cluster may call serve``: ``register``'s own checks (OpenSearch: ml-commons, its trusted
  endpoint regex, private IPs; Elasticsearch: the version and the license), each failure naming
  the setting and the fix;
* ``serve answers``: doctor calls ``<url>/_splade/embed/document|query`` itself, with the key;
* ``cluster's vectors equal splade-es's``: sample texts through what ``register`` created
  (found by its names, never created here) equal what serve answers directly; ``skipped``
  ("not registered: run splade-es register") when those objects do not exist.

They create nothing on the cluster, and the key is never shown.

Passages (issue 24, ``long_documents="passages"``): for every field type that holds the
documents, doctor also indexes them as passages (a ``nested`` field, one object per window,
``index_body(passages=True)``) and checks, through ``QueryBuilder`` (``passages=True``: a
``nested`` query, ``score_mode: max``), that each ``_score`` is the best passage's exact dot
product and the first inner hit is that passage; it reads the new index's
``index.mapping.nested_objects.limit`` (default 10,000 objects per document), which a
document of more than that many passages exceeds (``max_windows`` above it: a warning).
With ``index=`` (``--index``) it looks at the user's own index, read-only: which layout its
sparse field has (one vector per document, or nested passages), whether the top hit of a
query made from one of its own vectors scores that vector's exact dot product (for
passages: its best passage's), and for passages its nested-objects limit against
``max_windows``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

import elasticsearch
import opensearchpy

from . import defaults
from .connect import ClientOrCluster, Cluster, call
from .documents import document_text
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
from .exceptions import SpladeEsError, UnsupportedFeatureError
from .ingest.index_source import read_index
from .query import QueryBuilder, clause_limit_of, field_layout_of
from .register import elasticsearch as es_plan
from .register import opensearch as os_plan
from .register.plan import (
    KINDS,
    REDACTED,
    Existing,
    Kind,
    Problem,
    RegisterConfig,
    Request,
    embed_url,
    serve_host,
)
from .register.run import (  # register's reads: its transports, finds and secret scrubbing
    Resolve,
    Session,
    is_private_host,
    resolve_host,
    settings_fix,
)
from .search import passages_of
from .sparse import VECTOR_TOLERANCE, SparseBatch, Vocabulary, same_vector, stored_precision
from .tokens import TokenCodec

Status = Literal["ok", "unsupported", "skipped", "FAILED"]

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
# The documents as passages: (start, end, vector) each, in text order. d1's best passage is
# its second; d2's passages add up to more than d1's best one, so a sum (or a first-passage
# score) would rank them otherwise than the best passage does; d4 shares no query token.
PASSAGE_DOCUMENTS: dict[str, list[tuple[int, int, dict[str, float]]]] = {
    "d1": [
        (0, 48, {"tax": 0.7, "##s": 2.9}),
        (40, 96, {"depreciation": 1.3, ".": 2.33, "tax": 0.2}),
        (88, 130, {"brain": 0.5}),
    ],
    "d2": [(0, 50, {"tax": 3.3}), (44, 95, {"tax": 1.1, "garlic": 0.11}), (90, 140, {"tax": 3.0})],
    "d3": [(0, 30, {"u.s": 7.77, "%": 0.6}), (25, 70, {"depreciation": 0.05, "brain": 1.1})],
    "d4": [(0, 60, {"garlic": 1.0, "brain": 0.42})],
    "d5": [(0, 35, {"vector": 0.9}), (30, 64, {"tax": 0.001})],
}
NESTED_LIMIT_SETTING = "index.mapping.nested_objects.limit"
NESTED_LIMIT_DEFAULT = 10_000  # both engines' default: nested objects per document
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
    license), ``skipped`` (nothing to check yet: what it checks was not set up) or ``FAILED``
    (it runs but is wrong, or errs where it should work)."""

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
    warnings: tuple[str, ...] = field(default=())  # what works now but may not later

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


def best_passage_scores(
    query: Mapping[str, float], documents: Mapping[str, Sequence[Mapping[str, float]]]
) -> dict[str, tuple[float, int]]:
    """Per document with a passage that shares a key with ``query``: its best passage's dot
    product at storage precision (what a ``nested`` query with ``score_mode: max`` scores)
    and that passage's place. Pure.

    >>> best_passage_scores({"a": 2.0}, {"d": [{"b": 1.0}, {"a": 0.5}, {"a": 0.25}]})
    {'d': (1.0, 1)}
    """
    out: dict[str, tuple[float, int]] = {}
    for doc_id, passages in documents.items():
        scores = expected_scores(query, {str(i): vector for i, vector in enumerate(passages)})
        if scores:
            place = max(scores, key=lambda i: scores[i])
            out[doc_id] = (scores[place], int(place))
    return out


def nested_limit_in(settings: Mapping[str, Any]) -> tuple[int, bool]:
    """An index's nested-objects limit from ``GET <index>/_settings?include_defaults&
    flat_settings`` (one index's entry), and whether it was set there (False: the engines'
    default, also when the answer does not name it). Pure.

    >>> nested_limit_in({"settings": {"index.mapping.nested_objects.limit": "50"}})
    (50, True)
    >>> nested_limit_in({"settings": {}})
    (10000, False)
    """
    for part, explicit in (("settings", True), ("defaults", False)):
        value = (settings.get(part) or {}).get(NESTED_LIMIT_SETTING)
        if value is not None:
            return int(value), explicit
    return NESTED_LIMIT_DEFAULT, False


def nested_limit_warning(limit: int, max_windows: int | None, where: str) -> str | None:
    """The warning when a document of ``max_windows`` passages (None: no bound) could exceed
    ``limit`` nested objects (the engine refuses such a document), else None. Pure.

    >>> nested_limit_warning(10_000, 64, "new indices") is None
    True
    >>> print(nested_limit_warning(50, 64, "index docs")[:76])
    index docs: a document of up to 64 passages (max_windows) exceeds index.mapp
    """
    if max_windows is not None and max_windows <= limit:
        return None
    bound = "any number of" if max_windows is None else f"up to {max_windows}"
    return (
        f"{where}: a document of {bound} passages (max_windows) exceeds "
        f"{NESTED_LIMIT_SETTING} {limit}: the engine refuses it; lower --max-windows to "
        f"{limit} or raise the setting"
    )


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
def doctor(
    target: ClientOrCluster,
    *,
    prefix: str = "splade-es-doctor",
    serve: ServeTarget | None = None,
    resolve: Resolve | None = None,
    index: str | None = None,
    sparse_field: str = FIELD,
    max_windows: int | None = defaults.MAX_WINDOWS,
) -> DoctorReport:
    """Check every capability splade-es claims for the cluster of ``target`` (a client or a
    ``Cluster``). Creates and deletes temporary indices named ``<prefix>-<random>-...``.
    With ``serve``, also whether the cluster can call ``splade-es serve`` (``serve_checks``;
    ``resolve`` as there). With ``index``, also that index's ``sparse_field``: its layout, a
    query's top hit against its exact dot product, and for passages its nested-objects
    limit against ``max_windows`` (read-only). ``max_windows``: the bound a passages job
    indexes with (None: none), checked against the nested-objects limits."""
    cluster = target if isinstance(target, Cluster) else Cluster.from_client(target)
    passages = _PassageTarget(index, sparse_field, max_windows)
    report = _Doctor(cluster, f"{prefix}-{uuid.uuid4().hex[:12]}", passages).run()
    if serve is None:
        return report
    return replace(report, checks=report.checks + serve_checks(cluster, serve, resolve=resolve))


@dataclass(frozen=True)
class _PassageTarget:
    """What the passages rows look at besides doctor's own indices."""

    index: str | None = None  # the user's index (read-only)
    field: str = FIELD
    max_windows: int | None = defaults.MAX_WINDOWS


class _Doctor:
    def __init__(self, cluster: Cluster, base: str, passages: _PassageTarget | None = None) -> None:
        self.passage_target = passages or _PassageTarget()
        self.warnings: list[str] = []
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
            for field_type, stored in indices.items():
                if stored:
                    self._passages(field_type)
            rank_index = indices.get("rank_features")
            if rank_index:
                self._clause_limit(rank_index, facts.clause_limit)
                for method in HYBRID_METHODS:
                    self._hybrid(rank_index, method)
            if self.passage_target.index:
                self._user_index(self.passage_target.index)
        finally:
            left_behind = self._cleanup()
        return DoctorReport(
            facts=replace(facts, clause_limit_probed=self.probed),
            checks=tuple(self.checks),
            index_prefix=self.base,
            left_behind=left_behind,
            warnings=tuple(self.warnings),
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

    # ------------------------------------------------------------------ passages (issue 24)
    def _passages(self, field_type: FieldType) -> None:
        """``field_type`` as passages: a nested field, each style's nested max query scoring
        every document by its best passage's exact dot product, the first inner hit being
        that passage; and the nested-objects limit a new index gets."""
        capability = f"{field_type} · passages (nested)"
        try:
            self.dialect.check_passages(field_type)
        except SpladeEsError as exc:
            self._skip(capability, str(exc))
            return
        index = f"{self.base}-{field_type.replace('_', '-')}-passages"
        codec = TokenCodec(VOCAB, scheme=self.dialect.key_scheme(field_type))
        passages = {
            d: [codec.encode_tokens(vector) for _, _, vector in parts]
            for d, parts in PASSAGE_DOCUMENTS.items()
        }
        with self._check(capability, f"field:{field_type}") as note:
            body = self.dialect.index_body(
                field_type, sparse_field=FIELD, replicas=0, passages=True
            )
            self._create(
                ("index", index), lambda: self.client.indices.create(index=index, body=body)
            )
            for doc_id, parts in PASSAGE_DOCUMENTS.items():
                objects = [
                    {
                        defaults.PASSAGE_VECTOR: vector,
                        defaults.PASSAGE_START: start,
                        defaults.PASSAGE_END: end,
                    }
                    for (start, end, _), vector in zip(parts, passages[doc_id], strict=True)
                ]
                doc = DOCUMENTS[doc_id]
                source = {"id": doc_id, "title": doc["title"], "text": doc["text"]}
                self.client.index(index=index, id=doc_id, body={**source, FIELD: objects})
            self.client.indices.refresh(index=index)
            layout = field_layout_of(self.client, index, FIELD)
            if not layout.passages or layout.field_type != field_type:
                raise CheckFailed(f"the engine mapped {FIELD} as {layout}, not nested passages")
            count = sum(len(p) for p in passages.values())
            note["detail"] = (
                f"{len(PASSAGE_DOCUMENTS)} documents as {count} nested passages; "
                + self._nested_limit(index, "new indices")
            )
        if not any(c.capability == capability and c.status == "ok" for c in self.checks):
            return
        for style in self.dialect.query_styles(field_type):
            self._passage_query(index, field_type, style, passages)

    def _passage_query(
        self,
        index: str,
        field_type: FieldType,
        style: QueryStyle,
        passages: Mapping[str, Sequence[Mapping[str, float]]],
    ) -> None:
        capability = f"{field_type} · {style} query on passages"
        with self._check(capability, f"query:{style}") as note:
            builder = QueryBuilder(
                self.dialect, field=FIELD, field_type=field_type, style=style, passages=True
            )
            query = SparseBatch.from_rows(
                [([list(VOCAB).index(t) for t in QUERY], list(QUERY.values()))], vocab=VOCAB
            )
            features = builder.features(query)
            best = best_passage_scores(features, passages)
            response = self._search_response(index, builder.search_request(query, k=SIZE).request)
            hits = response["hits"]["hits"]
            compare_hits(
                [(str(h["_id"]), float(h["_score"])) for h in hits],
                {d: score for d, (score, _) in best.items()},
            )
            for hit in hits:
                doc_id = str(hit["_id"])
                start, end, _ = PASSAGE_DOCUMENTS[doc_id][best[doc_id][1]]
                found = passages_of(hit, FIELD)
                if not found or (found[0].start, found[0].end) != (start, end):
                    raise CheckFailed(
                        f"{doc_id}: the first inner hit is "
                        f"{(found[0].start, found[0].end) if found else 'missing'}, its best "
                        f"passage is ({start}, {end})"
                    )
            ranked = [str(h["_id"]) for h in hits]
            if ranked != sorted(best, key=lambda d: -best[d][0]):
                raise CheckFailed(f"ranked {ranked}: not by each document's best passage")
            note["detail"] = (
                f"_score = the best passage's dot product (nested, score_mode max) for "
                f"{len(best)} documents, none other; inner hits name that passage"
            )
            approximation = self.dialect.approximation(field_type, passages=True)
            if approximation:
                note["detail"] += f" ({approximation})"

    def _nested_limit(self, index: str, where: str) -> str:
        """The nested-objects limit of ``index`` as a detail; a warning when a document of
        ``max_windows`` passages exceeds it."""
        answer = self.client.indices.get_settings(
            index=index, include_defaults=True, flat_settings=True
        )
        limit, explicit = nested_limit_in(next(iter(answer.values()), {}))
        max_windows = self.passage_target.max_windows
        warning = nested_limit_warning(limit, max_windows, where)
        if warning:
            self.warnings.append(warning)
        how = "" if explicit else " (default)"
        bound = "no max_windows" if max_windows is None else f"max_windows {max_windows}"
        verdict = "exceeds it" if warning else "fits"
        return f"{NESTED_LIMIT_SETTING} {limit}{how} per document, {bound} {verdict}"

    def _user_index(self, index: str) -> None:
        """The user's index, read-only: its sparse field's layout, the top hit of a query
        made of one of its stored vectors against that hit's exact dot product (its best
        passage's, for passages), and for passages the nested-objects limit."""
        field_name = self.passage_target.field
        capability = f"index {index}"
        with self._check(capability, "index") as note:
            builder = QueryBuilder.for_index(self.client, index, field=field_name)
            layout = (
                f"nested passages of {builder.field_type} vectors ({field_name}."
                f"{defaults.PASSAGE_VECTOR}, one object per window; queried with nested, "
                "score_mode max)"
                if builder.passages
                else f"one {builder.field_type} vector per document"
            )
            note["detail"] = f"{field_name}: {layout}; " + self._top_hit(index, builder)
            if builder.passages:
                note["detail"] += "; " + self._nested_limit(index, f"index {index}")

    def _top_hit(self, index: str, builder: QueryBuilder) -> str:
        """The top hit of a query made of a stored vector scores its exact dot product."""
        # rank_features fields answer no exists query: the first documents, whatever they hold.
        sample = self.client.search(index=index, body={"size": 50})["hits"]["hits"]
        vectors = [_stored_vectors(h.get("_source") or {}, builder) for h in sample]
        if not sample:
            return "no document holds a vector: nothing to score"
        seed = next((v[0] for v in vectors if v), None)
        if seed is None:
            return "the vectors are not in _source: the score is not checked here"
        # The query: the sample's strongest keys (at most 8), with its own weights.
        top = sorted(seed.items(), key=lambda kv: -float(kv[1]))[:8]
        features = {str(k): float(w) for k, w in top}
        sparse = self.dialect.sparse_query(
            features,
            field=builder.vector_field,
            field_type=builder.field_type,
            style=builder.style,
        )
        clause = (
            self.dialect.passage_query(sparse, field=builder.field, inner_hits=1)
            if builder.passages
            else sparse
        )
        response = self._search_response(index, self.dialect.search_request(clause, k=1))
        hits = response["hits"]["hits"]
        if not hits:
            raise CheckFailed(f"a query of {len(features)} keys of a stored vector found nothing")
        hit = hits[0]
        stored = _stored_vectors(hit.get("_source") or {}, builder)
        best = best_passage_scores(features, {"top": stored}).get("top")
        if best is None:
            raise CheckFailed(f"the top hit {hit['_id']} shares no key with the query")
        score = float(hit["_score"])
        what = "its best passage's" if builder.passages else "its"
        if not math.isclose(score, best[0], rel_tol=REL_TOL, abs_tol=1e-9):
            approximation = self.dialect.approximation(
                builder.field_type, passages=builder.passages
            )
            raise CheckFailed(
                f"top hit {hit['_id']}: _score {score!r}, {what} dot product at stored "
                f"precision {best[0]!r}" + (f" ({approximation})" if approximation else "")
            )
        if builder.passages:
            found = passages_of(hit, builder.field)
            objects = (hit.get("_source") or {}).get(builder.field) or []
            span = objects[best[1]] if best[1] < len(objects) else {}
            want = (span.get(defaults.PASSAGE_START), span.get(defaults.PASSAGE_END))
            if found and (found[0].start, found[0].end) != want:
                raise CheckFailed(
                    f"top hit {hit['_id']}: the first inner hit is "
                    f"({found[0].start}, {found[0].end}), its best passage is {want}"
                )
        return (
            f"the top hit of a {len(features)}-key query scores {what} exact dot product "
            f"({len(stored)} {'passages' if builder.passages else 'vector'})"
        )

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

    def _search_response(self, index: str, request: Any) -> Any:
        return self.client.search(index=index, body=request.body, **dict(request.params))

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


def _stored_vectors(source: Mapping[str, Any], builder: QueryBuilder) -> list[dict[str, float]]:
    """The vectors of a document's ``_source`` in ``builder``'s field: its passages' in
    order, or its one vector (none when the field is not in ``_source``)."""
    value = source.get(builder.field)
    if builder.passages:
        objects = value if isinstance(value, list) else [value] if value else []
        vectors = [o.get(defaults.PASSAGE_VECTOR) for o in objects if isinstance(o, Mapping)]
        return [dict(v) for v in vectors if isinstance(v, Mapping)]
    return [dict(value)] if isinstance(value, Mapping) and value else []


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


# ---------------------------------------------------------------------- serve
CAN_CALL = "cluster may call serve"
SERVE_ANSWERS = "serve answers"
SAME_VECTORS = "cluster's vectors equal splade-es's"

SERVE_DOCUMENTS: tuple[tuple[str, ...], ...] = (
    ("Tax depreciation", "of U.S. property, 100% deductible"),
    ("  garlic powder, one ounce  ",),
    ("Ünïcödé wörds: naïve café",),
)
"""Sample documents, as the values of their text fields in order: a text split over two
fields and a padded one show that the cluster joins fields as ``splade-es ingest`` does."""
SERVE_QUERIES: tuple[str, ...] = ("what is tax depreciation", "garlic", "u.s. brain 100%")

_NO_KEY = "no-key-given"
"""Fills the key slot of register's plan when serve takes no key: doctor sends only the plan's
read-only checks, never a body that holds the key."""


@dataclass(frozen=True, kw_only=True)
class ServeTarget:
    """What the serve rows need, in ``register``'s terms: ``url``, where the cluster's nodes
    reach serve (doctor calls it from here too); ``api_key``, what the cluster sends serve (the
    first key of serve's ``--api-key-file``; None when serve takes none); ``name`` and
    ``field_type``, what register was given (its objects' names, the URLs they call)."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    name: str = defaults.REGISTER_NAME
    field_type: FieldType = defaults.FIELD_TYPE

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.register_config().serve_url)  # register's rules

    def register_config(self) -> RegisterConfig:
        """The ``RegisterConfig`` these name (a stand-in key when there is none)."""
        return RegisterConfig(
            serve_url=self.url,
            api_key=self.api_key or _NO_KEY,
            name=self.name,
            field_type=self.field_type,
        )


@dataclass(frozen=True)
class Relayed:
    """What the cluster answered for ``texts`` through register's ``kind`` object
    (``through`` names it), and the serve URL that object calls."""

    kind: Kind
    texts: tuple[str, ...]
    vectors: tuple[Any, ...]
    url: str
    through: str


def serve_checks(
    target: ClientOrCluster,
    serve: ServeTarget,
    *,
    resolve: Resolve | None = None,
    timeout: float = defaults.CONNECTOR_READ_TIMEOUT_S,
) -> tuple[Check, ...]:
    """The three serve rows (see the module's docstring) for the cluster of ``target``.
    ``resolve`` names a host's addresses, to tell whether serve's is private (default: this
    machine's resolver); ``timeout``: seconds doctor waits for serve, as long as a connector
    does. Read-only on the cluster; the key is redacted from every row."""
    cluster = target if isinstance(target, Cluster) else Cluster.from_client(target)
    return _ServeDoctor(cluster, serve, resolve or resolve_host, timeout).run()


def relay_difference(got: Any, sent: Mapping[str, float]) -> str | None:
    """None when ``got`` is the vector ``sent`` as an engine relays it, else what differs.

    The same vector by the project's one rule (``sparse.same_vector``): serve's answer to
    doctor comes from another batch than the engine's call did, and float32 results depend on
    a batch's shape (a model on transformers' forward pads it), so the last bits of a weight
    may differ; anything an engine would change on the way (a weight scaled, stored at 9
    bits, a key dropped or added) is far past that. (Nothing the serve rows compare is
    stored, so the storage precision of ``sparse.stored_precision`` does not enter.)

    >>> relay_difference({"tax": 1.2345679}, {"tax": 1.2345678806304932}) is None
    True
    >>> relay_difference({"tax": 1.5}, {"tax": 1.5, "law": 0.25})
    "keys differ: missing ['law'], extra []"
    >>> relay_difference({"tax": 1.5, "law": 0.26}, {"tax": 1.5, "law": 0.25})
    "'law' weighs 0.26 there, 0.25 in serve's answer"
    """
    if not isinstance(got, Mapping):
        return f"not a vector: {json.dumps(got)[:80]}"
    for key, value in got.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{key!r} weighs {value!r} there, {sent.get(key)!r} in serve's answer"
    values = {str(k): float(v) for k, v in got.items()}
    expected = {str(k): float(v) for k, v in sent.items()}
    if same_vector(values, expected):
        return None
    scale = max((abs(w) for w in (*values.values(), *expected.values())), default=0.0)

    def off(key: str) -> bool:
        return abs(values.get(key, 0.0) - expected.get(key, 0.0)) > VECTOR_TOLERANCE * scale

    missing = sorted(k for k in set(expected) - set(values) if off(k))
    extra = sorted(k for k in set(values) - set(expected) if off(k))
    if missing or extra:
        return f"keys differ: missing {missing[:5]}, extra {extra[:5]}"
    key = max(expected, key=lambda k: abs(values.get(k, 0.0) - expected[k]))
    return f"{key!r} weighs {got[key]!r} there, {sent[key]!r} in serve's answer"


def sample_text(parts: Sequence[str]) -> str:
    """The text ``splade-es ingest`` encodes for a document whose text fields hold ``parts``."""
    names = [str(i) for i in range(len(parts))]
    return document_text(dict(zip(names, parts, strict=True)), names, 0)


class _Skipped(Exception):
    """Nothing to check (yet): the row is ``skipped`` with this reason."""


class _Lacking(Exception):
    """The cluster lacks what the row needs (version, plugin, license): ``unsupported``."""


class _ServeEngine(Protocol):
    """What differs between the engines in the serve rows."""

    planner: Any  # register.opensearch or register.elasticsearch
    required: tuple[str, ...]  # the keys of register's objects the vectors row uses

    def lacking(self, answer: Any) -> str | None:
        """What the cluster lacks to call any model server, read from a check's answer."""

    def allowed(self, private: bool) -> str:
        """The detail of a passing ``cluster may call serve``."""

    def relayed(self, session: Session, found: Mapping[str, Existing]) -> list[Relayed]:
        """The sample texts through the objects ``found`` (by key)."""


class _OpenSearchServe:
    """ml-commons remote models: documents through the ingest pipeline (simulated: nothing is
    indexed), queries through the query model's predict API (what ``neural_sparse`` sends)."""

    planner: Any = os_plan
    required: tuple[str, ...] = (
        "connector:document",
        "connector:query",
        "model:document",
        "model:query",
        "ingest_pipeline",
    )

    def lacking(self, answer: Any) -> str | None:
        settings = isinstance(answer, Mapping) and "defaults" in answer
        if settings and os_plan.setting(answer, os_plan.TRUSTED)[0] is None:
            return (
                f"ml-commons is not installed (the cluster has no {os_plan.TRUSTED} "
                "setting): install the opensearch-ml and opensearch-neural-search plugins"
            )
        return None

    def allowed(self, private: bool) -> str:
        return "ml-commons present; its trusted endpoint regex matches serve's embed URLs" + (
            "; private addresses allowed" if private else ""
        )

    def relayed(self, session: Session, found: Mapping[str, Existing]) -> list[Relayed]:
        pipeline = found["ingest_pipeline"]
        fields, target = _pipeline_fields(pipeline.definition, pipeline.id)
        sources = [_sample_source(parts, fields) for parts in SERVE_DOCUMENTS]
        simulate = Request(
            "POST",
            f"/_ingest/pipeline/{pipeline.id}/_simulate",
            body={"docs": [{"_source": source} for source in sources]},
        )
        answer = session.read(simulate, f"simulating the ingest pipeline {pipeline.id}")
        documents = tuple(_simulated(doc, target) for doc in (answer or {}).get("docs") or [])
        query_model = found["model:query"]
        predict = Request(
            "POST",
            f"{os_plan.ML}/_predict/text_embedding/{query_model.id}",
            body={"text_docs": list(SERVE_QUERIES)},
        )
        predicted = session.read(predict, f"predicting with the model {query_model.id}")
        return [
            Relayed(
                "document",
                tuple(sample_text(parts) for parts in SERVE_DOCUMENTS),
                documents,
                _action_url(found["connector:document"]),
                f"the ingest pipeline {pipeline.id}",
            ),
            Relayed(
                "query",
                SERVE_QUERIES,
                _predictions(predicted),
                _action_url(found["connector:query"]),
                f"the model {query_model.id} (predict)",
            ),
        ]


class _ElasticsearchServe:
    """``sparse_embedding`` inference endpoints, called with the sample texts
    (``POST _inference/sparse_embedding/<id>`` with ``{"input": [...]}``, answered
    ``{"sparse_embedding": [{"is_truncated": ..., "embedding": {token: weight}}]}``)."""

    planner: Any = es_plan
    required: tuple[str, ...] = ("endpoint:document", "endpoint:query")

    def lacking(self, answer: Any) -> str | None:
        return None  # the version and the license are register's checks

    def allowed(self, private: bool) -> str:
        return "the version and the license allow inference endpoints"

    def relayed(self, session: Session, found: Mapping[str, Existing]) -> list[Relayed]:
        texts = {
            "document": tuple(sample_text(parts) for parts in SERVE_DOCUMENTS),
            "query": SERVE_QUERIES,
        }
        out = []
        for kind in KINDS:
            endpoint = found[f"endpoint:{kind}"]
            infer = Request(
                "POST",
                f"/_inference/sparse_embedding/{endpoint.id}",
                body={"input": list(texts[kind])},
            )
            answer = session.read(infer, f"calling the inference endpoint {endpoint.id}")
            results = (answer or {}).get("sparse_embedding") or []
            vectors = tuple(r.get("embedding") if isinstance(r, Mapping) else r for r in results)
            url = str(endpoint.definition.get("url") or "")
            out.append(
                Relayed(kind, texts[kind], vectors, url, f"the inference endpoint {endpoint.id}")
            )
        return out


_SERVE_ENGINES: dict[str, _ServeEngine] = {
    "opensearch": _OpenSearchServe(),
    "elasticsearch": _ElasticsearchServe(),
}


class _ServeDoctor:
    def __init__(
        self, cluster: Cluster, serve: ServeTarget, resolve: Resolve, timeout: float
    ) -> None:
        self.cluster = cluster
        self.serve = serve
        self.resolve = resolve
        self.engine = _SERVE_ENGINES[cluster.engine]
        self.config = serve.register_config()
        self.session = Session(cluster, self.config, time.sleep)  # reads only
        self.client = _ServeClient(serve.url, serve.api_key, timeout)
        self.checks: list[Check] = []

    def run(self) -> tuple[Check, ...]:
        may_call = self._row(CAN_CALL, self._may_call)
        answers = self._row(SERVE_ANSWERS, self._answers)
        if may_call == "unsupported":
            self._add(SAME_VECTORS, "skipped", "the cluster cannot call serve (above)")
        elif answers != "ok":
            self._add(SAME_VECTORS, "skipped", "serve does not answer (above)")
        else:
            self._row(SAME_VECTORS, self._same_vectors)
        return tuple(self.checks)

    def _row(self, capability: str, body: Callable[[], str]) -> Status:
        """Run one row: ``body`` returns the detail of a pass, or raises what the row is."""
        started = time.perf_counter()
        error: str | None = None
        status: Status
        try:
            status, detail = "ok", body()
        except _Skipped as exc:
            status, detail = "skipped", str(exc)
        except _Lacking as exc:
            status, detail = "unsupported", str(exc)
        except CheckFailed as exc:
            status, detail = "FAILED", str(exc)
        except SpladeEsError as exc:
            status, detail = "FAILED", str(exc)
            error = engine_error(exc.__cause__) if exc.__cause__ is not None else None
        self._add(capability, status, detail, error, (time.perf_counter() - started) * 1000)
        return status

    def _add(
        self, capability: str, status: Status, detail: str, error: str | None = None, ms: float = 0
    ) -> None:
        key = self.serve.api_key
        if key:  # an engine or serve may echo what it was sent
            detail = detail.replace(key, REDACTED)
            error = error.replace(key, REDACTED) if error else error
        claimed = status != "skipped"
        self.checks.append(Check(capability, status, detail, error, claimed, round(ms, 1)))

    # ------------------------------------------------------------------ the rows
    def _may_call(self) -> str:
        """register's checks for this serve URL; settings problems fail, naming the fix."""
        private = is_private_host(serve_host(self.serve.url), self.resolve)
        try:
            plan = self.engine.planner.registration_plan(
                self.config, self.cluster.version, private_host=private
            )
        except UnsupportedFeatureError as exc:
            raise _Lacking(str(exc)) from None
        problems: list[Problem] = []
        for check in plan.checks:
            answer = self.session.read(check.request, "reading the cluster's state")
            lacking = self.engine.lacking(answer)
            if lacking:
                raise _Lacking(lacking)
            problems += check.judge(answer)
        fatal = [p.message for p in problems if p.settings is None]
        if fatal:
            raise _Lacking("; ".join(fatal))
        if problems:
            said = "; ".join(p.message for p in problems)
            raise CheckFailed(
                f"{said}: fix with PUT _cluster/settings {json.dumps(settings_fix(problems))} "
                "or run splade-es register with --apply-settings"
            )
        return "; ".join((self.engine.allowed(private), *plan.notes))

    def _answers(self) -> str:
        """serve's two embed endpoints answer one text each, with the key."""
        found = []
        samples: tuple[tuple[Kind, str], ...] = (
            ("document", sample_text(SERVE_DOCUMENTS[0])),
            ("query", SERVE_QUERIES[0]),
        )
        for kind, text in samples:
            [vector] = self.client.embed(kind, [text])
            found.append(f"{kind}: {len(vector)} features")
        how = "with the key" if self.serve.api_key else "without a key"
        return f"{self.serve.url}/_splade/embed/* answered {how} ({', '.join(found)})"

    def _same_vectors(self) -> str:
        found = self._registered()
        relayed = self.engine.relayed(self.session, found)
        for each in relayed:
            self._compare(each)
        said = "; ".join(f"{len(r.texts)} {r.kind} texts through {r.through}" for r in relayed)
        detail = (
            f"{said}: every vector is serve's, key for key and weight for weight (up to the "
            "last bits a batch's shape moves)"
        )
        elsewhere = sorted({_base_url(r.url) for r in relayed} - {self.serve.url})
        if elsewhere:
            detail += f" (the cluster calls serve at {', '.join(elsewhere)})"
        return detail

    def _registered(self) -> dict[str, Existing]:
        """register's objects the vectors row uses, found by their names; ``_Skipped`` when
        some are missing (or are not register's)."""
        plan = self.engine.planner.removal_plan(self.config, self.cluster.version)
        found, missing = {}, []
        for planned in plan.objects:
            if planned.key not in self.engine.required:
                continue
            ours = [e for e in self.session.find(planned) if e.ours]
            if ours:
                found[planned.key] = ours[0]
            else:
                missing.append(f"{planned.what} {planned.name}")
        if missing:
            raise _Skipped(f"not registered: run splade-es register (no {', '.join(missing)})")
        return found

    def _compare(self, relayed: Relayed) -> None:
        """``CheckFailed`` unless each vector the cluster gave is serve's own for its text."""
        params = [(k, v) for k, v in parse_qsl(urlsplit(relayed.url).query) if k != "format"]
        expected = self.client.embed(relayed.kind, relayed.texts, params)
        if len(relayed.vectors) != len(expected):
            raise CheckFailed(
                f"{relayed.through} gave {len(relayed.vectors)} vectors for "
                f"{len(relayed.texts)} {relayed.kind} texts"
            )
        for text, got, sent in zip(relayed.texts, relayed.vectors, expected, strict=True):
            difference = relay_difference(got, sent)
            if difference:
                raise CheckFailed(
                    f"{relayed.kind} {text!r} through {relayed.through}: {difference}"
                )


class _ServeClient:
    """doctor's own calls to serve's embed endpoint (format ``maps``)."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.url = url
        self._api_key = api_key
        self.timeout = timeout

    def embed(
        self, kind: Kind, texts: Sequence[str], params: Sequence[tuple[str, str]] = ()
    ) -> list[dict[str, float]]:
        """serve's vectors for ``texts``; ``CheckFailed`` saying why there are none."""
        target = embed_url(self.url, kind, dict(params) or None)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps({"inputs": list(texts)}).encode()
        request = urllib.request.Request(target, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise CheckFailed(self._refusal(exc.code, _error_reason(exc), target)) from None
        except OSError as exc:  # URLError, timeouts, resets
            raise CheckFailed(_unreachable(target, exc)) from None
        except ValueError:
            raise CheckFailed(f"{target} did not answer JSON: is splade-es serve there?") from None
        return _maps(answer, len(texts), target)

    def _refusal(self, status: int, reason: str, target: str) -> str:
        if status == 401:
            if not self._api_key:
                return (
                    f"serve wants an API key (401): give the first key of its --api-key-file "
                    f"(api_key / --serve-api-key-file); {reason}"
                )
            return f"serve did not take the key (401): {reason}"
        if status == 403:
            return (
                "serve refused the key (403): it is not one of the keys of serve's --api-key-file"
            )
        if status == 404:
            return f"no embed endpoint at {target} (404): is this splade-es serve's URL?"
        return f"serve answered {status} at {target}: {reason}"


def _unreachable(target: str, exc: OSError) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused at {target}: serve is down, or not listening there"
    if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
        return f"no answer from {target} in time: serve is overloaded or unreachable"
    return f"cannot reach serve at {target}: {reason}"


def _error_reason(exc: urllib.error.HTTPError) -> str:
    """The reason in an error answer (serve's ``{"error": {"reason": ...}}``), else its text."""
    try:
        raw = exc.read()
    except OSError:
        return exc.reason if isinstance(exc.reason, str) else ""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return " ".join(raw.decode(errors="replace").split())[:200]
    if isinstance(error, Mapping):
        return str(error.get("reason") or error.get("type") or "")
    return str(error or "")


def _maps(answer: Any, count: int, target: str) -> list[dict[str, float]]:
    """serve's ``format=maps`` answer, checked: one ``{key: weight}`` per text."""
    ok = isinstance(answer, list) and len(answer) == count
    if ok and all(isinstance(v, dict) for v in answer):
        return [dict(v) for v in answer]
    raise CheckFailed(
        f"{target} answered {json.dumps(answer)[:120]}, not one vector per text: is "
        "splade-es serve there?"
    )


def _pipeline_fields(body: Any, name: str) -> tuple[list[str], str]:
    """(the text fields, the sparse field) of register's ingest pipeline ``body``: the join
    script's ``fields`` and the ``sparse_encoding`` target."""
    fields: list[str] = []
    targets: list[str] = []
    for processor in (body or {}).get("processors") or []:
        if not isinstance(processor, Mapping):
            continue
        script = processor.get("script") or {}
        fields += list((script.get("params") or {}).get("fields") or [])
        targets += list(((processor.get("sparse_encoding") or {}).get("field_map") or {}).values())
    if not fields or len(targets) != 1:
        raise CheckFailed(
            f"the ingest pipeline {name} is not what splade-es register creates (no join "
            "script or not one sparse_encoding target): run splade-es register again"
        )
    return [str(f) for f in fields], str(targets[0])


def _sample_source(parts: Sequence[str], fields: Sequence[str]) -> dict[str, str]:
    """A sample document for text ``fields``: one part per field, or all (joined) in the
    first."""
    if len(parts) <= len(fields):
        return dict(zip(fields, parts, strict=False))
    return {fields[0]: sample_text(parts)}


def _simulated(doc: Any, target: str) -> Any:
    """The vector one document of ``_simulate`` got; ``CheckFailed`` with its error."""
    if isinstance(doc, Mapping) and doc.get("error"):
        raise CheckFailed(f"the ingest pipeline failed a sample document: {_reason(doc)}")
    source = ((doc or {}).get("doc") or {}).get("_source") or {}
    return source.get(target)


def _reason(answer: Mapping[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('type', '')}: {error.get('reason', '')}".strip(": ")
    return str(error)


def _predictions(answer: Any) -> tuple[Any, ...]:
    """The vectors of an ml-commons predict answer: each output's ``dataAsMap.response``
    (a JSON array answer, wrapped by ml-commons), in order."""
    out: list[Any] = []
    for result in (answer or {}).get("inference_results") or []:
        for output in result.get("output") or []:
            out += list((output.get("dataAsMap") or {}).get("response") or [])
    return tuple(out)


def _action_url(connector: Existing) -> str:
    actions = (connector.definition or {}).get("actions") or []
    predict = [a for a in actions if a.get("action_type") == "PREDICT"]
    return str((predict or actions or [{}])[0].get("url") or "")


def _base_url(url: str) -> str:
    """serve's URL in an embed URL (what precedes ``/_splade/embed/``)."""
    return url.split("/_splade/embed/")[0].rstrip("/") if url else url
