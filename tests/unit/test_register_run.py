"""``splade_es.register.run`` against fake engines behind the real clients.

``FakeMlCommons`` answers the REST calls register makes the way ml-commons 2.19.6.0 does
(connector validation in ``MLCreateConnectorInput`` / ``Connector.validateConnectorURL``,
remote-model registration answering its ``model_id`` at once, deploy tasks, the refusals of
``DeleteModelTransportAction`` and ``DeleteConnectorTransportAction``); ``FakeInference`` answers
Elasticsearch's inference API (secrets kept, never shown by GET). Both sit behind the official
clients (opensearch-py's ``Connection``, elasticsearch-py's ``BaseNode``), so serialization,
404s and errors take the real path.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import re
from typing import Any

import elasticsearch
import opensearchpy
import pytest
from click.testing import CliRunner
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elastic_transport._node._base import NodeApiResponse

from splade_es.cli import main
from splade_es.connect import Cluster
from splade_es.exceptions import ClusterError, ConfigurationError, UnsupportedFeatureError
from splade_es.register import RegisterConfig, register, unregister
from splade_es.register.opensearch import PRIVATE_IP, REMOTE_INFERENCE, TRUSTED
from splade_es.register.run import POLLING, UNDEPLOY_AGAIN_EVERY
from splade_es.retry import RetryPolicy

KEY = "k-3f9a-very-secret"
SERVE = "http://127.0.0.1:9280"
# Two of ml-commons 2.19.6.0's defaults
# (MLCommonsSettings.ML_COMMONS_TRUSTED_CONNECTOR_ENDPOINTS_REGEX).
DEFAULT_TRUSTED = ["^https://api\\.openai\\.com/.*$", "^https://api\\.cohere\\.ai/.*$"]


def no_resolver(host: str) -> list[str]:
    raise AssertionError(f"{host} is an address: nothing to resolve")


# ------------------------------------------------------------------ fake ml-commons
class FakeMlCommons:
    def __init__(self, version: str = "2.19.6") -> None:
        self.version = version
        self.settings: dict[str, dict[str, Any]] = {
            "persistent": {},
            "transient": {},
            "defaults": {
                TRUSTED: list(DEFAULT_TRUSTED),
                PRIVATE_IP: "false",
                REMOTE_INFERENCE: "true",
            },
        }
        self.store: dict[str, dict[str, dict[str, Any]]] = {
            "connectors": {},
            "model_groups": {},
            "models": {},
        }
        self.pipelines: dict[str, dict[str, Any]] = {"_ingest": {}, "_search": {}}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any], Any]] = []
        self.counter = itertools.count(1)
        self.running_polls = 2  # a deploy task answers RUNNING this often before COMPLETED
        self.fail_deploy: str | None = None
        self.echo_body_in_errors = False

    # -------------------------------------------------------------- helpers
    def effective(self, key: str) -> Any:
        for section in ("transient", "persistent", "defaults"):
            if key in self.settings[section]:
                return self.settings[section][key]
        return None

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"

    def writes(self) -> list[tuple[str, str]]:
        return [
            (m, p)
            for m, p, _, _ in self.requests
            if m in ("PUT", "DELETE") or (m == "POST" and not p.endswith("/_search"))
        ]

    # -------------------------------------------------------------- routing
    def handle(self, method: str, path: str, params: dict[str, Any], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, params, body))
        if path == "/" and method == "GET":
            return 200, {"version": {"distribution": "opensearch", "number": self.version}}
        if path == "/_cluster/settings":
            return self.cluster_settings(method, body)
        if m := re.fullmatch(r"/(_ingest|_search)/pipeline/([^/]+)", path):
            return self.pipeline(method, m.group(1), m.group(2), body)
        if m := re.fullmatch(r"/_plugins/_ml/(connectors|model_groups|models)/_search", path):
            return self.search(m.group(1), body)
        if m := re.fullmatch(r"/_plugins/_ml/tasks/([^/]+)", path):
            return self.task(m.group(1))
        if m := re.fullmatch(r"/_plugins/_ml/models/([^/_][^/]*)/(_deploy|_undeploy)", path):
            return self.deployment(m.group(1), m.group(2))
        if m := re.fullmatch(r"/_plugins/_ml/(connectors|model_groups|models)/([^/_][^/]*)", path):
            return self.one(method, m.group(1), m.group(2))
        creators = {
            "/_plugins/_ml/connectors/_create": self.create_connector,
            "/_plugins/_ml/model_groups/_register": self.register_group,
            "/_plugins/_ml/models/_register": self.register_model,
        }
        if method == "POST" and path in creators:
            return creators[path](body)
        raise AssertionError(f"unexpected request {method} {path}")

    def error(self, status: int, kind: str, reason: str) -> tuple[int, Any]:
        cause = {"type": kind, "reason": reason}
        return status, {"error": {**cause, "root_cause": [cause]}, "status": status}

    def cluster_settings(self, method: str, body: Any) -> tuple[int, Any]:
        if method == "PUT":
            for section in ("persistent", "transient"):
                self.settings[section].update((body or {}).get(section, {}))
            return 200, {"acknowledged": True}
        return 200, {section: dict(values) for section, values in self.settings.items()}

    def search(self, kind: str, body: Any) -> tuple[int, Any]:
        if kind == "connectors" and not self.store["connectors"]:
            # ml-commons before 2.19 answered a search of a missing index with a 404.
            return self.error(
                404, "index_not_found_exception", "no such index [.plugins-ml-connector]"
            )
        name = body["query"]["term"]["name.keyword"]
        hits = [
            {"_id": ident, "_source": {k: v for k, v in doc.items() if k != "credential"}}
            for ident, doc in self.store[kind].items()
            if doc["name"] == name
        ]
        return 200, {"hits": {"total": {"value": len(hits)}, "hits": hits}}

    def create_connector(self, body: dict[str, Any]) -> tuple[int, Any]:
        for required in ("name", "version", "protocol"):
            if not body.get(required):
                return self.error(
                    400, "illegal_argument_exception", f"Connector {required} is null"
                )
        if not body.get("credential"):
            return self.error(
                400, "illegal_argument_exception", "Connector credential is null or empty list"
            )
        if self.echo_body_in_errors:
            return self.error(400, "parse_exception", f"cannot parse {json.dumps(body)}")
        for action in body["actions"]:
            if not any(re.fullmatch(p, action["url"]) for p in self.effective(TRUSTED)):
                reason = "Connector URL is not matching the trusted connector endpoint regex"
                return self.error(
                    400, "illegal_argument_exception", f"{reason}, URL is: {action['url']}"
                )
        stored = dict(body)
        stored["credential"] = {k: f"encrypted:{v}" for k, v in body["credential"].items()}
        stored["parameters"] = {k: str(v) for k, v in body.get("parameters", {}).items()}
        stored["actions"] = [dict(a, action_type=a["action_type"].upper()) for a in body["actions"]]
        if "client_config" in body:  # ConnectorClientConfig.parse fills the defaults in
            stored["client_config"] = {
                "max_connection": 30,
                "connection_timeout": 30000,
                "read_timeout": 30000,
                "retry_backoff_millis": 200,
                "retry_timeout_seconds": 30,
                "max_retry_times": 0,
                "retry_backoff_policy": "constant",
                **body["client_config"],
            }
        ident = self.new_id("conn-")
        self.store["connectors"][ident] = stored
        return 200, {"connector_id": ident}

    def register_group(self, body: dict[str, Any]) -> tuple[int, Any]:
        if any(g["name"] == body["name"] for g in self.store["model_groups"].values()):
            return self.error(
                400, "illegal_argument_exception", "The name you provided is already being used"
            )
        if "access_mode" in body:
            return self.error(
                400,
                "illegal_argument_exception",
                "You cannot specify model access control parameters",
            )
        ident = self.new_id("group-")
        self.store["model_groups"][ident] = dict(body)
        return 200, {"model_group_id": ident, "status": "CREATED"}

    def register_model(self, body: dict[str, Any]) -> tuple[int, Any]:
        assert body["function_name"] == "remote"
        if body["connector_id"] not in self.store["connectors"]:
            return self.error(400, "illegal_argument_exception", "Failed to find connector")
        if body["model_group_id"] not in self.store["model_groups"]:
            return self.error(404, "status_exception", "Failed to find model group")
        ident = self.new_id("model-")
        stored = {k: v for k, v in body.items() if k != "function_name"}
        self.store["models"][ident] = {**stored, "algorithm": "REMOTE", "model_state": "REGISTERED"}
        return 200, {"task_id": self.new_id("task-"), "status": "CREATED", "model_id": ident}

    def deployment(self, ident: str, action: str) -> tuple[int, Any]:
        model = self.store["models"][ident]
        if action == "_undeploy":
            model["model_state"] = "UNDEPLOYED"
            return 200, {}
        task = self.new_id("task-")
        self.tasks[task] = {"model": ident, "polls": self.running_polls}
        model["model_state"] = "DEPLOYING"
        return 200, {"task_id": task, "task_type": "DEPLOY_MODEL", "status": "CREATED"}

    def task(self, ident: str) -> tuple[int, Any]:
        task = self.tasks[ident]
        model = self.store["models"][task["model"]]
        if task["polls"] > 0:
            task["polls"] -= 1
            return 200, {"model_id": task["model"], "state": "RUNNING"}
        if self.fail_deploy:
            model["model_state"] = "DEPLOY_FAILED"
            return 200, {"model_id": task["model"], "state": "FAILED", "error": self.fail_deploy}
        model["model_state"] = "DEPLOYED"
        return 200, {"model_id": task["model"], "state": "COMPLETED"}

    def one(self, method: str, kind: str, ident: str) -> tuple[int, Any]:
        doc = self.store[kind].get(ident)
        if doc is None:
            return self.error(404, "status_exception", f"Failed to find {kind} {ident}")
        if method == "GET":
            return 200, {k: v for k, v in doc.items() if k != "credential"}
        refusal = self.refuse_delete(kind, ident, doc)
        if refusal:
            return self.error(400, "illegal_argument_exception", refusal)
        del self.store[kind][ident]
        return 200, {"_id": ident, "result": "deleted"}

    def refuse_delete(self, kind: str, ident: str, doc: dict[str, Any]) -> str | None:
        models = self.store["models"].values()
        if kind == "models" and doc["model_state"] in (
            "DEPLOYED",
            "DEPLOYING",
            "PARTIALLY_DEPLOYED",
        ):
            return (
                "Model cannot be deleted in deploying or deployed state. Try undeploy model first"
            )
        if kind == "connectors" and any(m["connector_id"] == ident for m in models):
            return "1 models are still using this connector, please undeploy the models first"
        if kind == "model_groups" and any(m["model_group_id"] == ident for m in models):
            return "Cannot delete the model group when it has associated model versions"
        return None

    def pipeline(self, method: str, kind: str, name: str, body: Any) -> tuple[int, Any]:
        store = self.pipelines[kind]
        if method == "PUT":
            store[name] = body
            return 200, {"acknowledged": True}
        if name not in store:
            return 404, {}
        if method == "GET":
            return 200, {name: store[name]}
        del store[name]
        return 200, {"acknowledged": True}


def opensearch_client(fake: FakeMlCommons) -> opensearchpy.OpenSearch:
    class Connection(opensearchpy.Connection):
        def perform_request(
            self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None
        ):
            payload = json.loads(body) if body else None
            status, answer = fake.handle(method, url, dict(params or {}), payload)
            data = json.dumps(answer)
            if status >= 300:
                self._raise_error(status, data, "application/json")
            return status, {"content-type": "application/json"}, data

        def close(self) -> None:
            return None

    return opensearchpy.OpenSearch([{"host": "fake", "port": 9200}], connection_class=Connection)


@pytest.fixture
def ml() -> FakeMlCommons:
    return FakeMlCommons()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def run(fake: FakeMlCommons, sleeps: list[float] | None = None, **options: Any):
    config = RegisterConfig(serve_url=SERVE, api_key=KEY, **{"apply_settings": True, **options})
    waits = sleeps if sleeps is not None else []
    return register(opensearch_client(fake), config, resolve=no_resolver, sleep=waits.append)


# ------------------------------------------------------------------ OpenSearch
def test_a_first_run_creates_everything_deployed_and_fixes_the_settings(ml, sleeps):
    done = run(ml, sleeps)

    assert ml.settings["persistent"][PRIVATE_IP] is True
    # The trusted patterns were added to, not replaced.
    patterns = ml.settings["persistent"][TRUSTED]
    assert patterns[: len(DEFAULT_TRUSTED)] == DEFAULT_TRUSTED
    assert re.fullmatch(patterns[-1], f"{SERVE}/_splade/embed/document")
    assert not re.fullmatch(patterns[-1], "http://127.0.0.1:92800/_splade/embed/document")

    models = ml.store["models"]
    assert {m["name"] for m in models.values()} == {"splade-es-document", "splade-es-query"}
    assert all(m["model_state"] == "DEPLOYED" for m in models.values())
    assert done.outputs["document_model_id"] in models
    assert models[done.outputs["query_model_id"]]["name"] == "splade-es-query"
    pipeline = ml.pipelines["_ingest"]["splade-es-ingest"]
    assert (
        pipeline["processors"][1]["sparse_encoding"]["model_id"]
        == done.outputs["document_model_id"]
    )
    assert done.outputs["ingest_pipeline"] == "splade-es-ingest"
    # Each connector carries the key as its credential and calls its own kind's endpoint.
    connectors = {c["name"]: c for c in ml.store["connectors"].values()}
    query = connectors["splade-es-query-connector"]
    assert query["credential"] == {"api_key": f"encrypted:{KEY}"}
    assert query["actions"][0]["url"] == f"{SERVE}/_splade/embed/query"
    # Deploying waited on the task with RetryPolicy's growing backoff.
    assert sleeps == [POLLING.backoff(1), POLLING.backoff(2)] * 2
    assert (
        done.usage["query"]["query"]["neural_sparse"]["splade"]["model_id"]
        == done.outputs["query_model_id"]
    )
    assert done.usage["index"]["settings"]["index.default_pipeline"] == "splade-es-ingest"


def test_a_second_run_creates_nothing_and_answers_the_same_ids(ml):
    first = run(ml)
    before = len(ml.writes())
    second = run(ml)
    assert ml.writes()[before:] == []
    assert second.outputs == first.outputs
    assert all(a.startswith("reused") for a in second.actions), second.actions


def test_without_apply_settings_it_names_the_settings_and_changes_nothing(ml):
    with pytest.raises(ConfigurationError) as raised:
        run(ml, apply_settings=False)
    message = str(raised.value)
    assert TRUSTED in message and PRIVATE_IP in message and "PUT _cluster/settings" in message
    body = json.loads(message.split("PUT _cluster/settings ", 1)[1].split(" or run again")[0])
    assert body["persistent"][PRIVATE_IP] is True
    assert body["persistent"][TRUSTED][:2] == DEFAULT_TRUSTED
    assert ml.writes() == []


def test_a_transient_setting_is_fixed_where_it_is_set(ml):
    ml.settings["transient"][TRUSTED] = ["^https://example\\.com/.*$"]
    run(ml)
    assert ml.settings["transient"][TRUSTED][0] == "^https://example\\.com/.*$"
    assert len(ml.settings["transient"][TRUSTED]) == 2
    assert TRUSTED not in ml.settings["persistent"]


def test_settings_already_right_are_left_alone(ml):
    ml.settings["persistent"][TRUSTED] = ["^http://127\\.0\\.0\\.1:9280/.*$"]
    ml.settings["persistent"][PRIVATE_IP] = "true"
    run(ml, apply_settings=False)
    assert ("PUT", "/_cluster/settings") not in ml.writes()


def test_a_changed_connector_is_refused_before_anything_is_written(ml):
    run(ml)
    before = len(ml.writes())
    with pytest.raises(ConfigurationError) as raised:
        register(
            opensearch_client(ml),
            RegisterConfig(serve_url="http://127.0.0.1:9281", api_key=KEY, apply_settings=True),
            resolve=no_resolver,
        )
    message = str(raised.value)
    assert "splade-es-document-connector" in message and "actions[0].url" in message
    assert "--unregister" in message
    assert ml.writes()[before:] == []  # not even the settings


def test_a_changed_pipeline_is_updated_in_place(ml):
    first = run(ml)
    before = len(ml.writes())
    second = run(ml, text_fields=("title", "body"))
    assert ml.writes()[before:] == [("PUT", "/_ingest/pipeline/splade-es-ingest")]
    script = ml.pipelines["_ingest"]["splade-es-ingest"]["processors"][0]["script"]
    assert script["params"]["fields"] == ["title", "body"]
    assert second.outputs == first.outputs
    assert any(a.startswith("updated ingest pipeline") for a in second.actions)


def test_objects_register_did_not_create_are_refused_and_never_deleted(ml):
    ml.store["model_groups"]["theirs"] = {"name": "splade-es", "description": "someone's group"}
    ml.store["connectors"]["x"] = {"name": "other", "description": "x"}  # makes the index exist
    with pytest.raises(ConfigurationError, match="did not create"):
        run(ml)
    result = unregister(opensearch_client(ml), RegisterConfig())
    assert "theirs" in ml.store["model_groups"]
    assert result.kept == ("model group splade-es (theirs)",)


def test_two_objects_of_one_name_are_refused(ml):
    run(ml)
    group = next(iter(ml.store["model_groups"].values()))
    ml.store["model_groups"]["copy"] = dict(group)
    with pytest.raises(ConfigurationError, match="2 model groups are named 'splade-es'"):
        run(ml)


def test_unregister_deletes_exactly_what_register_created(ml):
    ml.store["connectors"]["unrelated"] = {"name": "unrelated", "description": "another app's"}
    ml.pipelines["_ingest"]["other-ingest"] = {"description": "another app's", "processors": []}
    run(ml, two_phase=True)
    created = {k: set(v) - {"unrelated"} for k, v in ml.store.items()}
    before = len(ml.requests)

    result = unregister(opensearch_client(ml), RegisterConfig(two_phase=False))

    deletes = [p for m, p, _, _ in ml.requests[before:] if m == "DELETE"]
    expected = {f"/_plugins/_ml/{kind}/{i}" for kind, ids in created.items() for i in ids}
    expected |= {"/_ingest/pipeline/splade-es-ingest", "/_search/pipeline/splade-es-two-phase"}
    assert set(deletes) == expected and len(deletes) == len(expected)
    # Models first (undeployed), then connectors, then the group; pipelines before all of them.
    assert deletes.index("/_ingest/pipeline/splade-es-ingest") < min(
        deletes.index(f"/_plugins/_ml/models/{i}") for i in created["models"]
    )
    assert ml.store["connectors"] == {
        "unrelated": {"name": "unrelated", "description": "another app's"}
    }
    assert ml.store["models"] == {} and ml.store["model_groups"] == {}
    assert ml.pipelines["_ingest"] == {
        "other-ingest": {"description": "another app's", "processors": []}
    }
    assert len(result.deleted) == len(expected) and result.absent == ()
    # A second unregister finds nothing and deletes nothing.
    again = unregister(opensearch_client(ml), RegisterConfig())
    assert again.deleted == () and len(again.absent) == 7


def test_a_dry_run_sends_no_writes_and_lists_them_redacted(ml, caplog):
    caplog.set_level(logging.DEBUG)
    done = run(ml, dry_run=True, apply_settings=False, two_phase=True)
    assert ml.writes() == []
    sent = [(r["method"], r["path"]) for r in done.requests]
    assert sent[0] == ("PUT", "/_cluster/settings")
    assert sent.count(("POST", "/_plugins/_ml/connectors/_create")) == 2
    assert ("PUT", "/_search/pipeline/splade-es-two-phase") in sent
    assert any(p.endswith("/_deploy") for _, p in sent)
    text = json.dumps(done.to_json())
    assert KEY not in text and "<redacted>" in text
    assert KEY not in caplog.text
    assert done.outputs["document_model_id"] is None
    assert any(a.startswith("needs cluster settings") for a in done.actions)


def test_a_dry_run_after_a_run_plans_nothing(ml):
    run(ml)
    done = run(ml, dry_run=True)
    assert done.requests == ()
    assert done.outputs["ingest_pipeline"] == "splade-es-ingest"


def test_an_engine_error_that_echoes_the_key_is_redacted(ml, caplog):
    caplog.set_level(logging.DEBUG)
    ml.echo_body_in_errors = True
    with pytest.raises(ClusterError) as raised:
        run(ml)
    assert KEY not in str(raised.value) and "<redacted>" in str(raised.value)
    # The original error (whose message holds the key) is not chained for a traceback to show.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert KEY not in caplog.text


def test_a_failed_deploy_stops_with_the_engines_reason(ml):
    ml.fail_deploy = "Connection refused: 127.0.0.1:9280"
    with pytest.raises(
        ClusterError, match=r"deploying the model splade-es-document .* failed: Connection refused"
    ):
        run(ml)


def test_opensearch_before_2_15_refuses_a_private_serve_outright():
    fake = FakeMlCommons("2.14.0")
    with pytest.raises(UnsupportedFeatureError, match=r"before 2\.15 refuses"):
        run(fake)
    assert fake.writes() == []


def test_a_public_serve_on_2_13_needs_no_private_ip_setting_and_no_client_config():
    fake = FakeMlCommons("2.13.0")
    fake.settings["persistent"][TRUSTED] = ["^https://serve\\.example\\.com/.*$"]
    register(
        opensearch_client(fake),
        RegisterConfig(serve_url="https://serve.example.com", api_key=KEY),
        resolve=lambda host: ["93.184.216.34"],
    )
    assert PRIVATE_IP not in fake.settings["persistent"]
    assert all("client_config" not in c for c in fake.store["connectors"].values())
    pipeline = fake.pipelines["_ingest"]["splade-es-ingest"]
    assert "batch_size" not in pipeline["processors"][1]["sparse_encoding"]


# ------------------------------------------------------------------ fake Elasticsearch inference
class FakeInference:
    def __init__(self, version: str = "9.1.0", license_type: str = "trial") -> None:
        self.version = version
        self.license = {"type": license_type, "status": "active"}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, Any] = {}
        self.requests: list[tuple[str, str, Any]] = []

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.requests if m in ("PUT", "DELETE", "POST")]

    def handle(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        path = target.split("?")[0]
        self.requests.append((method, path, body))
        if path == "/":
            return 200, {
                "version": {"number": self.version, "build_flavor": "default"},
                "tagline": "You Know, for Search",
            }
        if path == "/_license":
            return 200, {"license": self.license}
        m = re.fullmatch(r"/_inference/sparse_embedding/([^/]+)", path)
        assert m, target
        ident = m.group(1)
        if method == "PUT":
            return self.put(ident, body)
        if ident not in self.endpoints:
            return 404, {
                "error": {
                    "type": "resource_not_found_exception",
                    "reason": f"Inference endpoint not found [{ident}]",
                },
                "status": 404,
            }
        if method == "GET":
            return 200, {"endpoints": [self.endpoints[ident]]}
        del self.endpoints[ident]
        return 200, {"acknowledged": True, "pipelines": [], "indexes": []}

    def put(self, ident: str, body: dict[str, Any]) -> tuple[int, Any]:
        settings = dict(body["service_settings"])
        if body["service"] == "custom":
            self.secrets[ident] = settings.pop("secret_parameters")
            known = {"url", "headers", "request", "response", "query_parameters", "input_type"}
            assert isinstance(settings["request"], str)
            assert set(settings["response"]["json_parser"]) == {"token_path", "weight_path"}
        else:
            self.secrets[ident] = settings.pop("api_key")
            known = {"url", "rate_limit"}
        unknown = set(settings) - known
        if unknown:  # CustomServiceSettings.fromMap / throwIfNotEmptyMap
            return 400, {
                "error": {
                    "type": "status_exception",
                    "reason": f"unknown settings {sorted(unknown)}",
                },
                "status": 400,
            }
        stored = {
            "inference_id": ident,
            "task_type": "sparse_embedding",
            "service": body["service"],
            "service_settings": {**settings, "rate_limit": {"requests_per_minute": 10000}},
        }
        self.endpoints[ident] = stored
        return 200, stored


def elasticsearch_client(fake: FakeInference) -> elasticsearch.Elasticsearch:
    class Node(BaseNode):
        def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
            status, payload = fake.handle(method, target, json.loads(body) if body else None)
            response_headers = HttpHeaders(
                {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"}
            )
            meta = ApiResponseMeta(status, "1.1", response_headers, 0.0, self.config)
            return NodeApiResponse(meta, json.dumps(payload).encode())

    return elasticsearch.Elasticsearch("http://fake:9200", node_class=Node)


def es_run(fake: FakeInference, **options: Any):
    config = RegisterConfig(serve_url=SERVE, api_key=KEY, **options)
    return register(elasticsearch_client(fake), config, resolve=no_resolver)


def test_elasticsearch_9_1_gets_two_custom_endpoints_holding_the_key_as_a_secret():
    fake = FakeInference("9.1.0")
    done = es_run(fake)
    assert done.outputs == {
        "document_inference_id": "splade-es-document",
        "query_inference_id": "splade-es-query",
    }
    query = fake.endpoints["splade-es-query"]
    assert query["service"] == "custom"
    assert query["service_settings"]["url"] == f"{SERVE}/_splade/embed/query?format=pairs"
    assert fake.secrets["splade-es-query"] == {"api_key": KEY}
    assert KEY not in json.dumps(fake.endpoints)
    mapping = done.usage["mapping"]["mappings"]["properties"]["splade"]
    assert mapping == {
        "type": "semantic_text",
        "inference_id": "splade-es-document",
        "search_inference_id": "splade-es-query",
    }


def test_elasticsearch_9_0_uses_the_hugging_face_service():
    fake = FakeInference("9.0.3")
    es_run(fake)
    document = fake.endpoints["splade-es-document"]
    assert document["service"] == "hugging_face"
    assert document["service_settings"]["url"] == f"{SERVE}/_splade/embed/document"
    assert fake.secrets["splade-es-document"] == KEY


def test_elasticsearch_reruns_reuse_and_a_changed_url_is_refused():
    fake = FakeInference("8.19.2")
    es_run(fake)
    before = len(fake.writes())
    again = es_run(fake)
    assert fake.writes()[before:] == []
    assert all(a.startswith("reused inference endpoint") for a in again.actions)
    with pytest.raises(ConfigurationError, match="differs from this registration in url"):
        register(
            elasticsearch_client(fake),
            RegisterConfig(serve_url="http://10.1.1.1:9280", api_key=KEY),
        )
    assert fake.writes()[before:] == []


def test_elasticsearch_8_18_with_a_basic_license_is_refused_before_any_write():
    fake = FakeInference("8.18.1", license_type="basic")
    with pytest.raises(
        UnsupportedFeatureError, match="enterprise or trial license; this cluster's is basic"
    ):
        es_run(fake)
    assert fake.writes() == []


def test_elasticsearch_8_17_with_a_basic_license_registers_with_a_note():
    fake = FakeInference("8.17.4", license_type="basic")
    done = es_run(fake)
    assert set(fake.endpoints) == {"splade-es-document", "splade-es-query"}
    assert any("does not enforce it" in n for n in done.notes)


def test_elasticsearch_unregister_leaves_an_endpoint_that_is_not_serves():
    fake = FakeInference("9.1.0")
    es_run(fake)
    fake.endpoints["splade-es-query"]["service_settings"]["url"] = "https://api.openai.com/v1"
    result = unregister(elasticsearch_client(fake), RegisterConfig())
    assert set(fake.endpoints) == {"splade-es-query"}
    assert result.deleted == ("inference endpoint splade-es-document (splade-es-document)",)
    assert result.kept == ("inference endpoint splade-es-query (splade-es-query)",)


# ------------------------------------------------------------------ the command
@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# engines\n\n{KEY}\nsecond-key\n")
    return str(path)


def cli(monkeypatch, client: Any, *args: str):
    connect_module = importlib.import_module(
        "splade_es.connect"
    )  # the package's name is the function
    monkeypatch.setattr(connect_module, "connect", lambda config: Cluster.from_client(client))
    monkeypatch.setattr("splade_es.register.run.resolve_host", no_resolver)
    no_waits = RetryPolicy(max_retries=5, initial_backoff=0.0, max_backoff=0.0, jitter=0.0)
    monkeypatch.setattr("splade_es.register.run.POLLING", no_waits)
    return CliRunner().invoke(main, ["register", "--url", "http://fake:9200", *args])


def test_the_command_prints_ids_as_json_and_never_the_key(monkeypatch, ml, key_file, caplog):
    caplog.set_level(logging.DEBUG)
    args = ["--serve-url", SERVE, "--serve-api-key-file", key_file, "--apply-settings"]
    result = cli(monkeypatch, opensearch_client(ml), *args, "--json")
    assert result.exit_code == 0, result.output
    ids = json.loads(result.stdout)
    assert set(ids) == {
        "engine",
        "serve_url",
        "document_model_id",
        "query_model_id",
        "ingest_pipeline",
    }
    assert ids["engine"] == "opensearch" and ids["document_model_id"] in ml.store["models"]
    connector = next(iter(ml.store["connectors"].values()))
    assert connector["credential"]["api_key"] == f"encrypted:{KEY}"  # the file's first key

    human = cli(monkeypatch, opensearch_client(ml), *args)
    dry = cli(monkeypatch, opensearch_client(FakeMlCommons()), *args, "--dry-run")
    assert human.exit_code == 0 and dry.exit_code == 0, (human.output, dry.output)
    assert "reused model splade-es-query" in human.output and "neural_sparse" in human.output
    assert '"<redacted>"' in dry.stdout and "POST /_plugins/_ml/connectors/_create" in dry.stdout
    for output in (result.output, human.output, dry.output, caplog.text):
        assert KEY not in output


def test_the_command_without_a_key_file_is_a_one_line_usage_error(monkeypatch, ml):
    result = cli(monkeypatch, opensearch_client(ml), "--serve-url", SERVE)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "--serve-api-key-file" in result.output
    assert ml.requests == []


def test_the_command_unregisters(monkeypatch, ml, key_file):
    run(ml)
    result = cli(monkeypatch, opensearch_client(ml), "--unregister", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["deleted"]) == 6
    assert ml.store["models"] == {}


class DropsTheFirstUndeploy(FakeMlCommons):
    """ml-commons dropping an undeploy that met a deploy in flight: the model stays
    deployed until it is asked again."""

    def __init__(self) -> None:
        super().__init__()
        self.undeploys: dict[str, int] = {}

    def deployment(self, ident: str, action: str) -> tuple[int, Any]:
        if action == "_undeploy":
            self.undeploys[ident] = self.undeploys.get(ident, 0) + 1
            if self.undeploys[ident] == 1:
                return 200, {}  # acknowledged, and nothing happens
        return super().deployment(ident, action)


def test_unregister_undeploys_again_a_model_that_stays_deployed():
    ml = DropsTheFirstUndeploy()
    run(ml, two_phase=True)
    waits: list[float] = []
    unregister(opensearch_client(ml), RegisterConfig(two_phase=True), sleep=waits.append)
    assert ml.store["models"] == {}
    assert ml.undeploys and all(n == 2 for n in ml.undeploys.values())
    assert len(waits) == UNDEPLOY_AGAIN_EVERY * len(ml.undeploys)  # polls until the second one
