"""``splade-es register``: point a cluster's own inference at ``splade-es serve``.

::

    from splade_es.register import RegisterConfig, register, unregister

    config = RegisterConfig(serve_url="http://10.0.0.5:9280", api_key=key)
    done = register(cluster, config)        # idempotent: a second run creates nothing
    done.outputs["document_model_id"]       # OpenSearch; "document_inference_id" on Elasticsearch
    unregister(cluster, config)             # deletes exactly what register created

OpenSearch: ml-commons HTTP connectors and remote models, an ingest pipeline with
``sparse_encoding`` (and, with ``two_phase``, a two-phase search pipeline). Elasticsearch:
``sparse_embedding`` inference endpoints (``custom`` service on 8.19+ / 9.1+, ``hugging_face``
before). Both call serve's ``/_splade/embed/<kind>`` with ``Authorization: Bearer <key>``.

    plan.py           pure: requests as values (secrets marked), the objects to create
    opensearch.py     the OpenSearch plan and the facts it rests on
    elasticsearch.py  the Elasticsearch plan and the facts it rests on
    run.py            the executor: checks, find-or-create, deploy, unregister, dry runs
"""

from .plan import RegisterConfig, Request, Secret
from .run import Registration, Unregistration, first_api_key, register, unregister

__all__ = [
    "RegisterConfig",
    "Registration",
    "Request",
    "Secret",
    "Unregistration",
    "first_api_key",
    "register",
    "unregister",
]
