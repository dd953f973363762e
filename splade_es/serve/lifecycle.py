"""How a ``splade-es serve`` app comes up and goes down: the model checked when the app is
made, loaded (with the batchers and the upstream pool) when it starts, all closed when it
stops."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from ..encoding.model_files import require_trusted_layout
from ..encoding.protocol import Encoder
from .service import ServeConfig, Service, read_checkpoint

Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def prepared_service(config: ServeConfig, encoder: Encoder | None = None) -> Service:
    """The service of an app; ``encoder`` skips loading ``config.model``.

    Without one, the checkpoint's files are checked here (no weights are read): a wrong
    model is a ``ModelLoadError`` now, not a failed server start (the model loads when the
    app starts). The layout read here is the one the service loads the model from.
    """
    if encoder is not None:
        return Service(config, encoder)
    layout = read_checkpoint(config.model)
    require_trusted_layout(layout, config.model, config.trust_remote_code)
    return Service(config, layout=layout)


def service_lifespan(service: Service) -> Lifespan:
    """The app's lifespan: ``service`` started before the first request, stopped after the
    last."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return lifespan
