"""``splade-es serve``: query translation for any search app, in front of the cluster.

    app (any language, official client) --> splade-es serve --> cluster
            search with a ``splade`` clause     rewrite: clause -> QueryBuilder body (pure)
            anything else                       forwarded unchanged

    app.py        create_app: the stages below, composed into a Starlette app
    lifecycle.py  the model checked when the app is made; the service started and stopped
    middleware.py requests refused before any route; per-client concurrency
    routes.py     the API: /_splade/health, metrics, query, encode, embed/*; /embed_sparse
    embed.py      pure: the engines' embed requests and answer shapes (maps, pairs)
    proxy.py      everything else, to the cluster: searches rewritten, writes enriched
    exchange.py   request bodies, headers, the deadline; answers and the access log
    errors.py     the one table from an error to its HTTP answer
    service.py    the process: model + batcher, upstream, facts; rewriting and translating
    rewrite.py    pure: locate ``splade`` clauses in search / msearch bodies, replace them
    facts.py      per-index engine, version, field type and clause limit, cached
    batcher.py    micro-batching in front of the encoder, off the event loop; LRU cache
    upstream.py   the one async HTTP client to the cluster (aiohttp)
    metrics.py    Prometheus metrics

``serve`` needs the ``serve`` extra: ``pip install 'splade-es[serve]'``.
"""

from .app import create_app
from .service import ServeConfig

__all__ = ["ServeConfig", "create_app"]
