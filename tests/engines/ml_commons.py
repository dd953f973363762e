"""REST helpers for OpenSearch ml-commons remote models, for tests.

What ``splade-es register`` has to do on OpenSearch, step by step, with the request bodies that
OpenSearch 2.19.6 (ml-commons 2.19.6.0, neural-search 2.19.6.0) accepts; the real-node test
``tests/integration/test_node_ml_commons.py`` runs them all against a stand-in model server::

    allow_connector_endpoints(client, [r"^http://127\\.0\\.0\\.1:9280/.*$"], private_ip=True)
    group_id = create_model_group(client, "splade-es")
    connector_id = create_connector(client, http_connector("doc", url, api_key, max_retry_times=5))
    model_id = register_remote_model(client, "doc", connector_id, model_group_id=group_id)
    deploy_model(client, model_id)
    client.ingest.put_pipeline(id="p", body=sparse_encoding_pipeline(model_id, {"text": "vec"}))

Every call goes through ``client.transport.perform_request`` with the literal path and body, so
what is sent is exactly what is written here. Nothing here logs or returns an API key.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opensearchpy import NotFoundError, OpenSearch, TransportError

ML = "/_plugins/_ml"

# ml-commons dynamic cluster settings (MLCommonsSettings.java, 2.19.6.0: Property.NodeScope +
# Property.Dynamic): a connector URL must fully match one of the regexes when the connector is
# created (Connector.validateConnectorURL, TransportCreateConnectorAction), and a host that
# resolves to a loopback / private address is refused at every predict unless private IPs are
# enabled (MLHttpClientFactory.validate, HttpJsonConnectorExecutor).
TRUSTED_ENDPOINTS = "plugins.ml_commons.trusted_connector_endpoints_regex"
PRIVATE_IP_ENABLED = "plugins.ml_commons.connector.private_ip_enabled"


class MlCommonsError(RuntimeError):
    """An ml-commons task failed or did not finish in time."""


def available(client: OpenSearch) -> bool:
    """Whether the cluster answers the ml-commons API (the plugin is installed)."""
    try:
        client.transport.perform_request("GET", f"{ML}/stats")
    except TransportError:
        return False
    return True


def allow_connector_endpoints(
    client: OpenSearch, endpoint_regexes: Sequence[str], *, private_ip: bool
) -> None:
    """Persistently trust connector URLs matching ``endpoint_regexes`` (this replaces the
    default list of cloud endpoints) and allow or refuse private / loopback hosts."""
    body = {
        "persistent": {TRUSTED_ENDPOINTS: list(endpoint_regexes), PRIVATE_IP_ENABLED: private_ip}
    }
    client.transport.perform_request("PUT", "/_cluster/settings", body=body)


def reset_connector_endpoints(client: OpenSearch) -> None:
    """Back to ml-commons' defaults (cloud endpoints only, no private IPs)."""
    body = {"persistent": {TRUSTED_ENDPOINTS: None, PRIVATE_IP_ENABLED: None}}
    client.transport.perform_request("PUT", "/_cluster/settings", body=body)


def http_connector(
    name: str,
    url: str,
    api_key: str,
    *,
    max_retry_times: int = 0,
    retry_backoff_millis: int = 200,
    retry_timeout_seconds: int = 30,
    connection_timeout_s: int = 10,
    read_timeout_s: int = 60,
    max_connection: int = 30,
) -> dict[str, Any]:
    """The body of ``POST /_plugins/_ml/connectors/_create`` for a model server that takes
    ``{"inputs": [text, ...]}`` and answers a JSON array with one ``{token: weight}`` per text.

    - ``credential`` must be a non-empty map (MLCreateConnectorInput, 2.19.6.0); ml-commons
      stores it encrypted and puts the decrypted value into ``${credential.api_key}`` of the
      headers at predict time (AbstractConnector.createDecryptedHeaders).
    - No ``pre_process_function``: for a text-docs input (what neural-search sends) ml-commons
      applies ``connector.pre_process.default.embedding``, which sets ``parameters.input`` to
      the texts as a JSON array (MLPreProcessFunction, OpenAIEmbeddingPreProcessFunction), so
      ``${parameters.input}`` renders as ``["text 1", "text 2"]``.
    - No ``post_process_function``: a JSON array answer becomes a tensor whose ``dataAsMap`` is
      ``{"response": <the array>}`` (AbstractConnector.parseResponse, StringUtils.fromJson), which
      is what neural-search's TokenWeightUtil.fetchListOfTokenWeightMap reads.
    - ``client_config``: ``max_retry_times`` > 0 turns on retries, and only answers whose
      ``x-amzn-ErrorType`` header starts with ``ThrottlingException`` are retried
      (MLSdkAsyncHttpResponseHandler.handleThrottlingInHeader, RemoteConnectorExecutor), every
      ``retry_backoff_millis`` (constant policy by default) for at most
      ``retry_timeout_seconds``. ``connection_timeout`` and ``read_timeout`` are in *seconds*
      (HttpJsonConnectorExecutor: Duration.ofSeconds), although their defaults are 30000.
    """
    return {
        "name": name,
        "description": f"splade-es model server: {url}",
        "version": "1",
        "protocol": "http",
        "parameters": {},
        "credential": {"api_key": api_key},
        "client_config": {
            "max_connection": max_connection,
            "connection_timeout": connection_timeout_s,
            "read_timeout": read_timeout_s,
            "max_retry_times": max_retry_times,
            "retry_backoff_millis": retry_backoff_millis,
            "retry_timeout_seconds": retry_timeout_seconds,
        },
        "actions": [
            {
                "action_type": "predict",
                "method": "POST",
                "url": url,
                "headers": {
                    "Authorization": "Bearer ${credential.api_key}",
                    "Content-Type": "application/json",
                },
                "request_body": '{"inputs": ${parameters.input}}',
            }
        ],
    }


def create_connector(client: OpenSearch, body: Mapping[str, Any]) -> str:
    response = client.transport.perform_request("POST", f"{ML}/connectors/_create", body=body)
    return str(response["connector_id"])


def create_model_group(client: OpenSearch, name: str, description: str = "") -> str:
    """A model group; without the security plugin it needs no access settings. Group names are
    unique in a cluster."""
    body = {"name": name, "description": description or name}
    response = client.transport.perform_request("POST", f"{ML}/model_groups/_register", body=body)
    return str(response["model_group_id"])


def register_remote_model(
    client: OpenSearch,
    name: str,
    connector_id: str,
    *,
    model_group_id: str | None = None,
    description: str = "",
    timeout: float = 60,
) -> str:
    """Register a remote model on a connector and return its id once the task is done."""
    body: dict[str, Any] = {
        "name": name,
        "function_name": "remote",
        "description": description or name,
        "connector_id": connector_id,
    }
    if model_group_id is not None:
        body["model_group_id"] = model_group_id
    response = client.transport.perform_request("POST", f"{ML}/models/_register", body=body)
    task = wait_for_task(client, str(response["task_id"]), timeout=timeout)
    return str(task["model_id"])


def deploy_model(client: OpenSearch, model_id: str, *, timeout: float = 60) -> None:
    """Deploy a model and wait until its state is DEPLOYED."""
    response = client.transport.perform_request("POST", f"{ML}/models/{model_id}/_deploy")
    wait_for_task(client, str(response["task_id"]), timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        model = client.transport.perform_request("GET", f"{ML}/models/{model_id}")
        if model.get("model_state") == "DEPLOYED":
            return
        if time.monotonic() > deadline:
            raise MlCommonsError(f"model {model_id} is {model.get('model_state')}, not DEPLOYED")
        time.sleep(0.2)


def wait_for_task(client: OpenSearch, task_id: str, *, timeout: float = 60) -> dict[str, Any]:
    """Poll ``GET /_plugins/_ml/tasks/<id>`` until COMPLETED; raise on FAILED or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        task = dict(client.transport.perform_request("GET", f"{ML}/tasks/{task_id}"))
        state = task.get("state")
        if state == "COMPLETED":
            return task
        if state in ("FAILED", "CANCELLED", "COMPLETED_WITH_ERROR"):
            raise MlCommonsError(f"ml-commons task {task_id} {state}: {task.get('error')}")
        if time.monotonic() > deadline:
            raise MlCommonsError(f"ml-commons task {task_id} still {state} after {timeout}s")
        time.sleep(0.2)


def predict_texts(client: OpenSearch, model_id: str, texts: Sequence[str]) -> dict[str, Any]:
    """Predict with a text-docs input, the input neural-search sends. The algorithm in the path
    makes ml-commons parse ``text_docs`` (TextDocsInputDataSet); ``/models/<id>/_predict`` of a
    remote model would expect ``{"parameters": {...}}`` instead (RestMLPredictionAction)."""
    body = {"text_docs": list(texts)}
    response = client.transport.perform_request(
        "POST", f"{ML}/_predict/text_embedding/{model_id}", body=body
    )
    return dict(response)


def sparse_encoding_pipeline(
    model_id: str, field_map: Mapping[str, str], *, batch_size: int | None = None
) -> dict[str, Any]:
    """An ingest pipeline body whose ``sparse_encoding`` processor writes the model's
    ``{token: weight}`` of each source field into its target (a ``rank_features`` field).
    ``batch_size`` > 1 sends the texts of that many documents of a bulk in one model request
    (InferenceProcessor.subBatchExecute, neural-search 2.19.6.0: sorted by length)."""
    processor: dict[str, Any] = {"model_id": model_id, "field_map": dict(field_map)}
    if batch_size is not None:
        processor["batch_size"] = batch_size
    return {
        "description": "splade-es: sparse vectors from a remote model",
        "processors": [{"sparse_encoding": processor}],
    }


def neural_sparse_query(field: str, text: str, model_id: str) -> dict[str, Any]:
    """A ``neural_sparse`` query: neural-search encodes ``text`` with the (query) model and
    scores each document by the dot product with its ``rank_features`` (FeatureField linear
    queries, NeuralSparseQueryBuilder.doToQuery)."""
    return {"neural_sparse": {field: {"query_text": text, "model_id": model_id}}}


def undeploy_model(client: OpenSearch, model_id: str) -> None:
    client.transport.perform_request("POST", f"{ML}/models/{model_id}/_undeploy")


def delete_model(client: OpenSearch, model_id: str) -> None:
    """Undeploy (a deployed model cannot be deleted) and delete a model; gone already is fine."""
    with contextlib.suppress(NotFoundError):
        undeploy_model(client, model_id)
        client.transport.perform_request("DELETE", f"{ML}/models/{model_id}")


def delete_connector(client: OpenSearch, connector_id: str) -> None:
    with contextlib.suppress(NotFoundError):
        client.transport.perform_request("DELETE", f"{ML}/connectors/{connector_id}")


def delete_model_group(client: OpenSearch, group_id: str) -> None:
    with contextlib.suppress(NotFoundError):
        client.transport.perform_request("DELETE", f"{ML}/model_groups/{group_id}")


@dataclass(frozen=True)
class RemoteModel:
    connector_id: str
    model_id: str


@contextlib.contextmanager
def deployed_remote_model(
    client: OpenSearch, name: str, connector_body: Mapping[str, Any], *, model_group_id: str
) -> Iterator[RemoteModel]:
    """Create a connector, register and deploy a remote model on it; remove both on exit."""
    connector_id = create_connector(client, connector_body)
    model_id = ""
    try:
        model_id = register_remote_model(client, name, connector_id, model_group_id=model_group_id)
        deploy_model(client, model_id)
        yield RemoteModel(connector_id, model_id)
    finally:
        if model_id:
            delete_model(client, model_id)
        delete_connector(client, connector_id)
