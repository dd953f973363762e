"""What one column of a comparison runs: a ``Configuration`` parsed from a short spec.

A spec is a kind, optionally followed by comma-separated ``key=value`` options::

    bm25                       BM25 on the text fields
    splade                     the SPLADE dot product (the default kind)
    hybrid                     BM25 + SPLADE, method sum, BM25 weight 0.5
    hybrid:rrf                 reciprocal rank fusion
    hybrid:linear:0.3          min-max normalised, BM25 weight 0.3
    splade,index=docs-v2       another index or alias (a migration's target)
    model=/models/new,index=docs-new   another model (its index); the kind defaults to splade
    splade,top_k=20,name=pruned        query pruning, and the column's label

Options: ``index``, ``model``, ``field`` (the sparse field), ``text_fields`` (``title+text``),
``top_k``, ``min_weight``, ``mass``, ``fusion`` (``engine|client|auto``, hybrids) and
``name``. Pure: no cluster, no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .. import defaults
from ..engines import Hybrid
from ..engines.base import HYBRID_METHODS
from ..exceptions import ConfigurationError
from ..query import QueryPruning
from ..search import FUSIONS

Kind = Literal["splade", "bm25", "hybrid"]
KINDS: tuple[Kind, ...] = ("splade", "bm25", "hybrid")
MIN_CONFIGURATIONS, MAX_CONFIGURATIONS = 2, 4
OPTIONS = ("index", "model", "field", "text_fields", "top_k", "min_weight", "mass", "fusion")


@dataclass(frozen=True)
class Configuration:
    """One side of a comparison. ``index``/``model`` None: the comparison's own."""

    spec: str
    kind: Kind = "splade"
    method: str = "sum"  # hybrids: sum | linear | rrf
    bm25_weight: float = 0.5
    index: str | None = None
    model: str | None = None
    sparse_field: str = defaults.VECTOR_FIELD
    text_fields: tuple[str, ...] = defaults.TEXT_FIELDS
    pruning: QueryPruning = field(default_factory=QueryPruning)
    fusion: str | None = None  # None: what search() does by default
    name: str | None = None

    @property
    def label(self) -> str:
        """The column's title: ``name``, else the spec as written."""
        return self.name or self.spec

    @property
    def encodes(self) -> bool:
        """Whether the query is encoded (every kind but BM25)."""
        return self.kind != "bm25"

    def hybrid(self) -> Hybrid | None:
        """The ``Hybrid`` of a hybrid configuration (None for the others)."""
        if self.kind != "hybrid":
            return None
        return Hybrid(
            bm25_weight=self.bm25_weight,
            method=self.method,  # type: ignore[arg-type]  # checked by parse_configuration
            text_fields=self.text_fields,
        )

    def index_or(self, default: str) -> str:
        return self.index or default


def parse_configuration(spec: str) -> Configuration:
    """A ``Configuration`` from its spec (module docstring); ``ConfigurationError`` naming
    the part that is wrong.

    >>> parse_configuration("hybrid:linear:0.3").bm25_weight
    0.3
    >>> parse_configuration("index=docs-v2").kind
    'splade'
    """
    text = spec.strip()
    if not text:
        raise _bad(spec, "must not be empty")
    head, *rest = [part.strip() for part in text.split(",")]
    if "=" in head:  # options only: a SPLADE configuration
        head, rest = "splade", [head, *rest]
    kind, method, weight = _kind_of(head, spec)
    options = _options_of(rest, spec)
    return Configuration(
        spec=text,
        kind=kind,
        method=method,
        bm25_weight=weight,
        index=options.get("index"),
        model=options.get("model"),
        sparse_field=options.get("field", defaults.VECTOR_FIELD),
        text_fields=_fields_of(options.get("text_fields"), spec),
        pruning=_pruning_of(options, spec),
        fusion=_fusion_of(options.get("fusion"), kind, spec),
        name=options.get("name"),
    )


def parse_configurations(specs: Sequence[str]) -> tuple[Configuration, ...]:
    """2 to 4 configurations with distinct labels (columns are named by them)."""
    configurations = tuple(parse_configuration(spec) for spec in specs)
    if not MIN_CONFIGURATIONS <= len(configurations) <= MAX_CONFIGURATIONS:
        raise ConfigurationError.bad_value(
            "config",
            len(configurations),
            f"compare {MIN_CONFIGURATIONS} to {MAX_CONFIGURATIONS} configurations",
        )
    labels = [c.label for c in configurations]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigurationError.bad_value(
            "config", twice[0], "is given twice: add name=... to tell the columns apart"
        )
    return configurations


def _kind_of(head: str, spec: str) -> tuple[Kind, str, float]:
    """(kind, hybrid method, BM25 weight) of ``kind[:method[:weight]]``."""
    name, *parts = head.split(":")
    kind = next((k for k in KINDS if k == name), None)
    if kind is None:
        raise _bad(spec, f"must start with one of {KINDS}")
    if kind != "hybrid" and parts:
        raise _bad(spec, f"{kind} takes no ':' arguments")
    if len(parts) > 2:
        raise _bad(spec, "is hybrid[:METHOD[:WEIGHT]]")
    method = parts[0] if parts else "sum"
    if method not in HYBRID_METHODS:
        raise _bad(spec, f"method is one of {HYBRID_METHODS}")
    weight = _number(parts[1], "weight", spec) if len(parts) == 2 else 0.5
    if not 0.0 <= weight <= 1.0:
        raise _bad(spec, "the BM25 weight is in [0, 1]")
    return kind, method, weight


def _options_of(parts: Sequence[str], spec: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise _bad(spec, f"{part!r} is not KEY=VALUE")
        if key not in (*OPTIONS, "name"):
            raise _bad(spec, f"{key!r} is not an option ({', '.join((*OPTIONS, 'name'))})")
        if key in options:
            raise _bad(spec, f"{key!r} is given twice")
        options[key] = value
    return options


def _fields_of(value: str | None, spec: str) -> tuple[str, ...]:
    if value is None:
        return defaults.TEXT_FIELDS
    fields = tuple(f.strip() for f in value.split("+") if f.strip())
    if not fields:
        raise _bad(spec, "text_fields is FIELD+FIELD")
    return fields


def _pruning_of(options: Mapping[str, str], spec: str) -> QueryPruning:
    top_k = options.get("top_k")
    min_weight = options.get("min_weight")
    mass = options.get("mass")
    if top_k is not None and not top_k.isdigit():
        raise _bad(spec, f"top_k {top_k!r} is not a whole number")
    try:
        return QueryPruning(
            top_k=None if top_k is None else int(top_k),
            min_weight=None if min_weight is None else _number(min_weight, "min_weight", spec),
            mass=None if mass is None else _number(mass, "mass", spec),
        )
    except ConfigurationError as exc:
        raise _bad(spec, str(exc)) from None


def _fusion_of(value: str | None, kind: Kind, spec: str) -> str | None:
    if value is None:
        return None
    if kind != "hybrid":
        raise _bad(spec, "fusion applies to hybrids")
    if value not in FUSIONS:
        raise _bad(spec, f"fusion is one of {FUSIONS}")
    return value


def _number(text: str, what: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _bad(spec, f"{what} {text!r} is not a number") from None


def _bad(spec: str, why: str) -> ConfigurationError:
    """A spec that cannot be read, naming it and why (``--config`` on the command line)."""
    return ConfigurationError(f"config {spec!r}: {why}", option="config", value=spec, rule=why)
