"""Elasticsearch: one ``sparse_embedding`` inference endpoint per kind, calling serve.

What register creates: ``PUT _inference/sparse_embedding/<name>-document`` and
``<name>-query``, with

* the ``custom`` service on 8.19+ within 8.x and on 9.1+ (absent from 9.0): the request
  template ``{"inputs": ${input}}`` (``${input}`` expands to the JSON array of the texts), the
  key in ``secret_parameters`` and used as ``Authorization: Bearer ${api_key}``, the answer
  read from serve's ``format=pairs`` by ``json_parser.token_path`` / ``weight_path``;
* the ``hugging_face`` service before that (8.15 to 8.18, 9.0): it posts ``{"inputs": [...]}``
  with ``Authorization: Bearer <api_key>`` and reads a JSON array of token -> weight objects,
  serve's default ``format=maps``.

Facts (elastic/elasticsearch-specification branches 8.17, 8.19, 9.0, 9.1; elasticsearch
x-pack/plugin/inference sources, see tests/unit/test_es_inference_shapes.py):

* ``inference.put_custom`` is "@availability stack since=8.19.0" (spec 8.19
  ``specification/inference/put_custom/PutCustomRequest.ts``); the 9.0 branch has no
  ``put_custom`` and 9.1 has it.
* The inference API needs an enterprise (or trial) license, enforced from 8.18 / 9.0
  (elasticsearch #119893 "Add enterprise license check for Inference API actions", backported to
  8.x as #120066; #122293: "As of 8.18/9.0 we are enforcing this license requirement").
  ``InferencePlugin.INFERENCE_API_FEATURE`` is ``License.OperationMode.ENTERPRISE``.
* ``semantic_text.search_inference_id`` exists from 8.17 (spec ``_types/mapping/core.ts``);
  the ``sparse_vector`` query takes ``inference_id`` + ``query`` from 8.15.
* Creating an endpoint calls it once to validate it: serve must be up and reachable from the
  cluster when register runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..connect import Version
from ..exceptions import UnsupportedFeatureError
from .plan import (
    KINDS,
    Check,
    Existing,
    Kind,
    Plan,
    PlannedObject,
    Problem,
    RegisterConfig,
    Request,
    Secret,
    embed_url,
)

MIN_VERSION = (8, 15)
LICENSE_ENFORCED_SINCE = (8, 18)
SEARCH_INFERENCE_ID_SINCE = (8, 17)
LICENSES = ("enterprise", "trial")
TOKEN_PATH = "$.embeddings[*].embedding[*].token"
WEIGHT_PATH = "$.embeddings[*].embedding[*].weight"
REQUEST_TEMPLATE = '{"inputs": ${input}}'


def has_custom_service(version: Version) -> bool:
    """Whether ``version`` has the ``custom`` inference service (8.19.x, 9.1+)."""
    return (8, 19) <= version[:2] < (9, 0) or version >= (9, 1)


def registration_plan(config: RegisterConfig, version: Version, *, private_host: bool) -> Plan:
    """The license check and the two endpoints (``private_host`` matters only to OpenSearch)."""
    serve_url, api_key = config.require_serve()
    shown = ".".join(map(str, version))
    if version < MIN_VERSION:
        raise UnsupportedFeatureError(
            f"register needs Elasticsearch 8.15+ (sparse_embedding endpoints queried by "
            f"sparse_vector / semantic_text); this cluster runs {shown}"
        )
    custom = has_custom_service(version)
    objects = tuple(
        _endpoint(config, kind, endpoint_body(serve_url, kind, api_key, custom=custom))
        for kind in KINDS
    )
    notes: tuple[str, ...] = ()
    if version < LICENSE_ENFORCED_SINCE:
        notes = (
            f"Elastic licenses the inference API to enterprise (or trial) clusters; {shown} "
            "does not enforce it, 8.18 / 9.0 do",
        )
    return Plan(
        engine="elasticsearch",
        checks=(
            Check(Request("GET", "/_license"), lambda answer: license_problems(answer, version)),
        ),
        objects=objects,
        notes=notes,
        usage=lambda outputs: usage(config, version, outputs),
    )


def removal_plan(config: RegisterConfig, version: Version) -> Plan:
    """The two endpoints, found by id."""
    return Plan(
        engine="elasticsearch",
        checks=(),
        objects=tuple(_endpoint(config, kind, None) for kind in KINDS),
    )


def license_problems(answer: Mapping[str, Any], version: Version) -> list[Problem]:
    """A license that refuses inference endpoints on ``version`` (``GET _license``)."""
    if version < LICENSE_ENFORCED_SINCE:
        return []
    found = answer.get("license") or {}
    kind, status = str(found.get("type", "")).lower(), str(found.get("status", "")).lower()
    if kind in LICENSES and status == "active":
        return []
    return [
        Problem(
            f"Elasticsearch {'.'.join(map(str, version))} creates inference endpoints only "
            f"under an active enterprise or trial license; this cluster's is {kind or 'unknown'} "
            f"({status or 'unknown'}) (POST _license/start_trial?acknowledge=true starts a trial)"
        )
    ]


def endpoint_body(serve_url: str, kind: Kind, api_key: str, *, custom: bool) -> dict[str, Any]:
    """The ``PUT _inference/sparse_embedding/<id>`` body for serve's ``kind`` endpoint."""
    if not custom:
        return {
            "service": "hugging_face",
            "service_settings": {"url": embed_url(serve_url, kind), "api_key": Secret(api_key)},
        }
    return {
        "service": "custom",
        "service_settings": {
            "url": embed_url(serve_url, kind, {"format": "pairs"}),
            "headers": {"Authorization": "Bearer ${api_key}"},
            "request": REQUEST_TEMPLATE,
            "response": {"json_parser": {"token_path": TOKEN_PATH, "weight_path": WEIGHT_PATH}},
            "secret_parameters": {"api_key": Secret(api_key)},
        },
    }


def endpoint_definition(endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What register compares of an endpoint (its PUT body, or what GET answers): the service
    and its non-secret settings."""
    settings = endpoint.get("service_settings") or {}
    found: dict[str, Any] = {"service": endpoint.get("service"), "url": settings.get("url")}
    if endpoint.get("service") == "custom":
        found["headers"] = dict(settings.get("headers") or {})
        found["request"] = settings.get("request")
        found["json_parser"] = (settings.get("response") or {}).get("json_parser")
    return found


def _endpoint(config: RegisterConfig, kind: Kind, body: dict[str, Any] | None) -> PlannedObject:
    name = config.named(kind)
    path = f"/_inference/sparse_embedding/{name}"
    return PlannedObject(
        key=f"endpoint:{kind}",
        what="inference endpoint",
        name=name,
        find=Request("GET", path, missing_ok=True),
        existing=_endpoints,
        create=Request("PUT", path, body=body) if body else None,
        created_id=lambda answer: name,
        definition=endpoint_definition(body) if body else None,
        delete=(Request("DELETE", "/_inference/sparse_embedding/{id}"),),
        output=f"{kind}_inference_id",
    )


def _endpoints(answer: Any) -> list[Existing]:
    """The endpoint ``GET _inference/sparse_embedding/<id>`` found (None: 404). Before 8.15 the
    list was named ``models``."""
    if not answer:
        return []
    found = []
    for endpoint in answer.get("endpoints") or answer.get("models") or []:
        url = str((endpoint.get("service_settings") or {}).get("url", ""))
        ident = str(endpoint.get("inference_id") or endpoint.get("model_id"))
        found.append(Existing(ident, endpoint_definition(endpoint), "/_splade/embed/" in url))
    return found


def usage(
    config: RegisterConfig, version: Version, outputs: Mapping[str, str | None]
) -> dict[str, Any]:
    """The mapping and queries that use the endpoints."""
    field = config.sparse_field
    semantic: dict[str, Any] = {
        "type": "semantic_text",
        "inference_id": outputs.get("document_inference_id"),
    }
    if version >= SEARCH_INFERENCE_ID_SINCE:
        semantic["search_inference_id"] = outputs.get("query_inference_id")
    return {
        "mapping": {"mappings": {"properties": {field: semantic}}},
        "text": f"write the text to encode into {field!r}: splade-es joins "
        f"{', '.join(config.text_fields)} with one space",
        "query": {"query": {"semantic": {"field": field, "query": "<the query>"}}},
        "sparse_vector_query": {
            "query": {
                "sparse_vector": {
                    "field": field,
                    "inference_id": outputs.get("query_inference_id"),
                    "query": "<the query>",
                }
            }
        },
    }
