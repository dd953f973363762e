"""Columns from a synchronous client (``splade-es compare``): each configuration's search
sent as ``search`` sends it (``search.send``), then its hits' stored vectors.

Builders (one per index and sparse field: three cluster reads each), encoders (one
per model) and each hybrid's fusion (``search.prepare_fusion``: who fuses it, the engine's
pipeline made where the engine does) are made once and kept."""

from __future__ import annotations

from collections.abc import Callable

from .. import defaults
from ..connect import ClientOrCluster, client_of
from ..encoding.protocol import Encoder
from ..engines import Dialect, Hybrid, dialect_of
from ..exceptions import (
    ClusterError,
    ConfigurationError,
    ConnectionFailedError,
    InputError,
)
from ..query import QueryBuilder, QueryVector
from ..search import Fusion, FusionChoice, choose_fusion, prepare_fusion, send, send_msearch
from .columns import (
    Column,
    column_of,
    failed_column,
    fused_response,
    plan_column,
    vectors_request,
)
from .configurations import Configuration

# What stops one column only: its index, its query, its hybrid (not the cluster's absence).
COLUMN_ERRORS = (InputError, ClusterError, ConfigurationError)
EncoderFor = Callable[[str | None], Encoder]  # a configuration's model (None: the default)


class ClusterSearcher:
    """Runs configurations on one cluster: ``index`` unless a configuration names its own;
    ``shown`` hits explained of ``depth`` retrieved (Recall@100 needs 100)."""

    def __init__(
        self,
        cluster: ClientOrCluster,
        index: str,
        *,
        encoder_for: EncoderFor | None = None,
        shown: int = defaults.TOP_K,
        depth: int = defaults.TOP_K,
        create_pipelines: bool = True,
        fusion: Fusion = "auto",
    ) -> None:
        self.cluster = cluster
        self.client = client_of(cluster)
        self.index = index
        self.encoder_for = encoder_for
        self.shown = shown
        self.depth = max(depth, shown)
        self.create_pipelines = create_pipelines
        self.fusion = fusion  # a hybrid's unless its configuration says fusion=...
        self._dialect: Dialect | None = None
        self._builders: dict[tuple[str, str], QueryBuilder] = {}
        self._fusions: dict[tuple[Hybrid, str], FusionChoice] = {}
        self._vectors: dict[tuple[str | None, str], QueryVector] = {}

    @property
    def dialect(self) -> Dialect:
        if self._dialect is None:
            self._dialect = dialect_of(self.cluster)
        return self._dialect

    def column(self, configuration: Configuration, text: str) -> Column:
        """The configuration's column; an error (a missing index, a query pruned to nothing,
        a hybrid the cluster lacks) becomes the column's message, not the comparison's end."""
        index = configuration.index_or(self.index)
        try:
            return self._column(configuration, index, text)
        except ConnectionFailedError:
            raise  # no column can run: the comparison stops
        except COLUMN_ERRORS as exc:
            return failed_column(configuration, index, exc)

    def _column(self, configuration: Configuration, index: str, text: str) -> Column:
        builder = vector = fusion = None
        if configuration.encodes:
            builder = self.builder(index, configuration)
            vector = self.vector(configuration.model, text)
            fusion = self.fusion_of(configuration, builder)
        plan = plan_column(
            configuration,
            index,
            text,
            dialect=self.dialect,
            builder=builder,
            vector=vector,
            k=self.depth,
            fusion=fusion,
        )
        if plan.fused is not None:
            responses, _ = send_msearch(self.client, index, plan.fused.requests)
            response = fused_response(plan, responses)
        else:
            response, _ = send(self.client, index, plan.request)
        shown = [str(h["_id"]) for h in response.get("hits", {}).get("hits", [])[: self.shown]]
        fetch = vectors_request(plan, shown)
        stored = send(self.client, index, fetch)[0] if fetch is not None else None
        return column_of(plan, response, stored, shown=self.shown)

    def builder(self, index: str, configuration: Configuration) -> QueryBuilder:
        """The builder of the index's sparse field (each request passes its pruning)."""
        key = (index, configuration.sparse_field)
        if key not in self._builders:
            self._builders[key] = QueryBuilder.for_index(self.cluster, index, field=key[1])
        return self._builders[key]

    def vector(self, model: str | None, text: str) -> QueryVector:
        """The query encoded by ``model``'s encoder (kept for the other columns)."""
        key = (model, text)
        if key not in self._vectors:
            if self.encoder_for is None:
                raise ConfigurationError("a SPLADE or hybrid configuration needs a model")
            if len(self._vectors) > 64:
                self._vectors.clear()
            self._vectors[key] = self.encoder_for(model).encode_queries([text])
        return self._vectors[key]

    def fusion_of(self, configuration: Configuration, builder: QueryBuilder) -> FusionChoice:
        """Who fuses a hybrid (``search.prepare_fusion``, as ``search --fusion`` decides, the
        engine's pipeline made where the engine fuses), decided once per hybrid."""
        hybrid = configuration.hybrid()
        fusion: Fusion = configuration.fusion or self.fusion  # type: ignore[assignment]
        if hybrid is None:
            return choose_fusion(self.cluster, None, fusion)
        key = (hybrid, fusion)
        if key not in self._fusions:
            self._fusions[key] = prepare_fusion(
                self.cluster,
                hybrid,
                fusion,
                dialect=builder.dialect,
                create_pipeline=self.create_pipelines,
            )
        return self._fusions[key]


def cached_encoders(load: Callable[[str], Encoder], default: str | None) -> EncoderFor:
    """``encoder_for``: ``load(model)`` once per model; None means ``default``."""
    loaded: dict[str, Encoder] = {}

    def encoder_for(model: str | None) -> Encoder:
        name = model or default
        if name is None:
            raise ConfigurationError("a SPLADE or hybrid configuration needs --model")
        if name not in loaded:
            loaded[name] = load(name)
        return loaded[name]

    return encoder_for
