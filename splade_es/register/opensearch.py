"""OpenSearch: ml-commons remote models that call serve, and the pipelines that use them.

What register creates (``<name>`` is ``RegisterConfig.name``)::

    model group      <name>
    HTTP connectors  <name>-document-connector, <name>-query-connector
    remote models    <name>-document, <name>-query        (registered and deployed)
    ingest pipeline  <name>-ingest     join the text fields, sparse_encoding, drop the join
    search pipeline  <name>-two-phase  (--two-phase) neural_sparse_two_phase_processor

Facts this relies on (ml-commons and neural-search sources at the tags named):

* A connector needs a non-empty ``credential`` from 2.19 (ml-commons 2.19.0.0
  ``MLCreateConnectorInput``: "Connector credential is null or empty list"); headers take
  ``${credential.*}`` and the body ``${parameters.*}`` (``AbstractConnector``,
  ``HttpConnector.createPayload``). Without a ``pre_process_function`` a text list becomes the
  JSON array ``parameters.input`` (``ConnectorUtils``, ``MLPreProcessFunction``: default
  embedding input, 2.11.0.0 to 2.19.6.0), so ``{"inputs": ${parameters.input}}`` is the
  contract's body. A JSON array answer becomes ``{"response": [...]}`` (``StringUtils.fromJson``),
  which neural-search reads as one token map per text (``TokenWeightUtil``, 2.19.6.0).
* ``parameters.input_docs_processed_step_size`` caps the texts per call (2.12+,
  ``RemoteConnectorExecutor.calculateChunkSize``).
* ``client_config``: connection fields from 2.13, retries (``max_retry_times``,
  ``retry_backoff_policy``, ...) from 2.15 (``ConnectorClientConfig``); timeouts are seconds
  from 2.14 (``HttpJsonConnectorExecutor``). Only ``x-amzn-ErrorType: ThrottlingException``
  answers are retried (``MLSdkAsyncHttpResponseHandler``), which serve's 429 carries.
* Every action URL must fully match one of ``plugins.ml_commons.trusted_connector_endpoints_regex``
  (``Connector.validateConnectorURL``, Java ``Matcher.matches``). A host that is (or resolves to)
  a loopback, link-local, site-local or RFC 1918 address is refused at predict time unless
  ``plugins.ml_commons.connector.private_ip_enabled`` (2.15+; before 2.15 always refused:
  ``MLHttpClientFactory`` at 2.11.0.0 to 2.14.0.0). ``plugins.ml_commons.remote_inference.enabled``
  must not be false. ``plugins.ml_commons.only_run_on_ml_node`` is not checked: it applies to
  local models only; remote models run on nodes of
  ``task_dispatcher.eligible_node_role.remote_model`` (default data and ml;
  ``DiscoveryNodeHelper.getEligibleNodes`` at 2.11.0.0 and 2.19.6.0).
* Registering a remote model answers its ``model_id`` at once (``MLModelManager
  .registerMLRemoteModel``); deploying answers a task to wait on; a deployed model cannot be
  deleted (``DeleteModelTransportAction``) nor its connector updated.
* ``sparse_encoding`` takes ``model_id``, ``field_map`` and (2.16+) ``batch_size``
  (neural-search ``SparseEncodingProcessorFactory``); it maps one field to one field, so a
  ``script`` processor first joins the text fields into one temporary field by splade-es's
  rule (``documents.document_text``), and ``remove`` drops it afterwards. The
  ``neural_sparse_two_phase_processor`` exists from 2.15 (neural-search 2.15.0.0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from .. import defaults
from ..connect import Version
from ..engines.opensearch import OpenSearchDialect, seismic_parameters
from ..exceptions import UnsupportedFeatureError
from .plan import (
    KINDS,
    MARKER,
    Check,
    Deployment,
    Existing,
    Kind,
    Plan,
    PlannedObject,
    Problem,
    Ref,
    RegisterConfig,
    Request,
    Secret,
    embed_url,
)

ML = "/_plugins/_ml"
MIN_VERSION = (2, 11)
PRIVATE_IP_SINCE = (2, 15)
CLIENT_CONFIG_SINCE = (2, 15)  # the retry fields; the whole object then matches what is stored
BATCH_SIZE_SINCE = (2, 16)
TWO_PHASE_SINCE = (2, 15)

TRUSTED = "plugins.ml_commons.trusted_connector_endpoints_regex"
PRIVATE_IP = "plugins.ml_commons.connector.private_ip_enabled"
REMOTE_INFERENCE = "plugins.ml_commons.remote_inference.enabled"

JOINED_FIELD = "_splade_es_text"
"""The temporary field the ingest pipeline joins the text fields into (removed afterwards)."""
WHITESPACE = "".join(chr(c) for c in range(0x10000) if chr(c).isspace())
"""What Python's ``str.strip()`` strips (no whitespace lies outside the BMP): the pipeline's
script strips exactly these, as ``documents.document_text`` does."""

# Painless (OpenSearch lang-painless allowlist: CharSequence.length, String.substring/indexOf,
# String.join(CharSequence, Iterable), IllegalArgumentException(String)). The rule of
# splade_es.documents.document_text: absent or null fields are skipped, a non-string refuses the
# document, each string is stripped, blank ones are skipped, at least one must hold text, the
# rest are joined by one space.
JOIN_SCRIPT = """\
def space = params.space;
List parts = new ArrayList();
for (def field : params.fields) {
  def value = ctx.get(field);
  if (value == null) { continue; }
  if (!(value instanceof String)) {
    throw new IllegalArgumentException('field [' + field + '] is not text');
  }
  String text = (String) value;
  int start = 0;
  int end = text.length();
  while (start < end && space.indexOf(text.substring(start, start + 1)) >= 0) { start++; }
  while (end > start && space.indexOf(text.substring(end - 1, end)) >= 0) { end--; }
  if (end > start) { parts.add(text.substring(start, end)); }
}
if (parts.isEmpty()) {
  String names = String.join(', ', params.fields);
  throw new IllegalArgumentException('no text in field(s) [' + names + ']');
}
ctx[params.target] = String.join(' ', parts);
"""

Section = Literal["persistent", "transient"]
_CLIENT_CONFIG_KEYS = (
    "max_connection",
    "connection_timeout",
    "read_timeout",
    "retry_backoff_millis",
    "retry_timeout_seconds",
    "max_retry_times",
    "retry_backoff_policy",
)
_LOADED_STATES = frozenset({"DEPLOYED", "DEPLOYING", "PARTIALLY_DEPLOYED"})
_FAILED_TASK_STATES = frozenset({"FAILED", "COMPLETED_WITH_ERROR", "CANCELLED", "EXPIRED"})


# ------------------------------------------------------------------ plans
def registration_plan(config: RegisterConfig, version: Version, *, private_host: bool) -> Plan:
    """Everything ``register`` checks and creates on OpenSearch ``version``; ``private_host``:
    serve's host is (or resolves to) an address ml-commons treats as private."""
    serve_url, api_key = config.require_serve()
    _check_version(config, version)
    dialect = OpenSearchDialect(version)
    dialect.check_field_type(config.field_type)
    scheme = dialect.key_scheme(config.field_type)
    urls = {
        kind: embed_url(serve_url, kind, {"key_scheme": "id"} if scheme == "id" else None)
        for kind in KINDS
    }
    settings = Check(
        Request(
            "GET",
            "/_cluster/settings",
            params={"include_defaults": "true", "flat_settings": "true"},
        ),
        lambda answer: settings_problems(
            answer,
            urls=list(urls.values()),
            serve_url=serve_url,
            version=version,
            private_host=private_host,
        ),
    )
    objects = [
        _model_group(config, registering=True),
        *(
            _connector(config, kind, connector_body(config, kind, urls[kind], api_key, version))
            for kind in KINDS
        ),
        *(_model(config, kind, registering=True) for kind in KINDS),
        _ingest_pipeline(config, ingest_pipeline_body(config, version)),
    ]
    if config.two_phase:
        objects.append(_search_pipeline(config, two_phase_pipeline_body()))
    return Plan(
        engine="opensearch",
        checks=(settings,),
        objects=tuple(objects),
        usage=lambda outputs: usage(config, dialect, outputs),
    )


def removal_plan(config: RegisterConfig, version: Version) -> Plan:
    """Everything ``unregister`` looks for (by name), in creation order."""
    objects = [
        _model_group(config, registering=False),
        *(_connector(config, kind, None) for kind in KINDS),
        *(_model(config, kind, registering=False) for kind in KINDS),
        _ingest_pipeline(config, None),
        _search_pipeline(config, None),
    ]
    return Plan(engine="opensearch", checks=(), objects=tuple(objects))


def _check_version(config: RegisterConfig, version: Version) -> None:
    shown = ".".join(map(str, version))
    if version < MIN_VERSION:
        raise UnsupportedFeatureError(
            f"register needs OpenSearch 2.11+ (neural-search's sparse_encoding with remote "
            f"models); this cluster runs {shown}"
        )
    if config.two_phase and version < TWO_PHASE_SINCE:
        raise UnsupportedFeatureError(
            f"--two-phase needs OpenSearch 2.15+ (neural_sparse_two_phase_processor); this "
            f"cluster runs {shown}"
        )


# ------------------------------------------------------------------ cluster settings
def settings_problems(
    answer: Mapping[str, Any],
    *,
    urls: list[str],
    serve_url: str,
    version: Version,
    private_host: bool,
) -> list[Problem]:
    """What in ``GET _cluster/settings?include_defaults&flat_settings`` stops the connectors
    reaching ``urls``, each with the settings that fix it."""
    problems = []
    enabled, section = setting(answer, REMOTE_INFERENCE)
    if str(enabled).lower() == "false":
        problems.append(
            Problem(
                f"remote models are turned off ({REMOTE_INFERENCE} is false)",
                {REMOTE_INFERENCE: True},
                section,
            )
        )
    problems += _trusted_endpoint_problems(answer, urls, serve_url)
    if private_host:
        problems += _private_ip_problems(answer, serve_url, version)
    return problems


def _trusted_endpoint_problems(
    answer: Mapping[str, Any], urls: list[str], serve_url: str
) -> list[Problem]:
    value, section = setting(answer, TRUSTED)
    patterns = [value] if isinstance(value, str) else list(value or [])
    unmatched = [url for url in urls if not any(_full_match(p, url) for p in patterns)]
    if not unmatched:
        return []
    wanted = f"^{re.escape(serve_url)}/_splade/embed/.*$"
    return [
        Problem(
            f"no pattern of {TRUSTED} matches {unmatched[0]}",
            {TRUSTED: [*patterns, wanted]},
            section,
        )
    ]


def _private_ip_problems(
    answer: Mapping[str, Any], serve_url: str, version: Version
) -> list[Problem]:
    where = f"serve's address {serve_url} is loopback or private"
    if version < PRIVATE_IP_SINCE:
        return [
            Problem(
                f"{where}, which OpenSearch before 2.15 refuses for connectors; give serve an "
                "address the nodes reach that is not private, or upgrade to 2.15+"
            )
        ]
    enabled, section = setting(answer, PRIVATE_IP)
    if str(enabled).lower() == "true":
        return []
    return [Problem(f"{where}, which needs {PRIVATE_IP}: true", {PRIVATE_IP: True}, section)]


def setting(answer: Mapping[str, Any], key: str) -> tuple[Any, Section]:
    """The effective value of ``key`` (transient over persistent over defaults) and the section
    a fix belongs in (transient when the value set there, else persistent). A list setting may
    come as an array or as ``key.0``, ``key.1``, ... keys."""
    for section in ("transient", "persistent", "defaults"):
        values = answer.get(section) or {}
        if key in values:
            return values[key], _fix_section(section)
        indexed = sorted(
            (int(k[len(key) + 1 :]), v)
            for k, v in values.items()
            if k.startswith(key + ".") and k[len(key) + 1 :].isdigit()
        )
        if indexed:
            return [v for _, v in indexed], _fix_section(section)
    return None, "persistent"


def _fix_section(found_in: str) -> Section:
    return "transient" if found_in == "transient" else "persistent"


def _full_match(pattern: str, url: str) -> bool:
    """Java ``Pattern.compile(p).matcher(url).matches()``, read with Python's ``re`` (a pattern
    Python cannot read matches nothing here; the cluster still judges it its own way)."""
    try:
        return re.fullmatch(pattern, url) is not None
    except re.error:
        return False


# ------------------------------------------------------------------ bodies
def connector_body(
    config: RegisterConfig, kind: Kind, url: str, api_key: str, version: Version
) -> dict[str, Any]:
    """The ``_create`` body of the HTTP connector that calls serve's ``kind`` endpoint."""
    body: dict[str, Any] = {
        "name": config.named(f"{kind}-connector"),
        "description": f"{MARKER}: SPLADE {kind} encoder of splade-es serve",
        "version": "1",
        "protocol": "http",
        "parameters": {"input_docs_processed_step_size": str(defaults.ENGINE_BATCH_TEXTS)},
        "credential": {"api_key": Secret(api_key)},
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
    if version >= CLIENT_CONFIG_SINCE:
        body["client_config"] = {
            "max_connection": defaults.CONNECTOR_MAX_CONNECTIONS,
            "connection_timeout": defaults.CONNECTOR_CONNECT_TIMEOUT_S,
            "read_timeout": defaults.CONNECTOR_READ_TIMEOUT_S,
            "retry_backoff_millis": int(defaults.INITIAL_BACKOFF * 1000),
            "retry_timeout_seconds": defaults.CONNECTOR_RETRY_TIMEOUT_S,
            "max_retry_times": defaults.MAX_RETRIES,
            "retry_backoff_policy": "exponential_full_jitter",
        }
    return body


def model_body(config: RegisterConfig, kind: Kind) -> dict[str, Any]:
    """The ``_register`` body of the remote model over ``kind``'s connector."""
    return {
        "name": config.named(kind),
        "function_name": "remote",
        "model_group_id": Ref("model_group"),
        "connector_id": Ref(f"connector:{kind}"),
        "description": f"{MARKER}: SPLADE {kind} encoder of splade-es serve",
    }


def ingest_pipeline_body(config: RegisterConfig, version: Version) -> dict[str, Any]:
    """Join the text fields (splade-es's rule), encode the joined text into the sparse field,
    drop the joined text."""
    encoding: dict[str, Any] = {
        "model_id": Ref("model:document"),
        "field_map": {JOINED_FIELD: config.sparse_field},
    }
    if version >= BATCH_SIZE_SINCE:
        encoding["batch_size"] = defaults.ENGINE_BATCH_TEXTS
    join = {
        "lang": "painless",
        "source": JOIN_SCRIPT,
        "params": {"fields": list(config.text_fields), "target": JOINED_FIELD, "space": WHITESPACE},
    }
    return {
        "description": f"{MARKER}: SPLADE vectors of {', '.join(config.text_fields)} "
        f"into {config.sparse_field}",
        "processors": [
            {"script": join},
            {"sparse_encoding": encoding},
            {"remove": {"field": JOINED_FIELD, "ignore_missing": True}},
        ],
    }


def two_phase_pipeline_body() -> dict[str, Any]:
    """neural-search's two-phase search: the high-weight query tokens pick candidates, the full
    query rescores them (neural-search's defaults: prune ratio 0.4, window 5x, at most 10,000)."""
    return {
        "description": f"{MARKER}: two-phase neural_sparse search",
        "request_processors": [{"neural_sparse_two_phase_processor": {"enabled": True}}],
    }


# ------------------------------------------------------------------ planned objects
def _search_request(kind: str, name: str) -> Request:
    query = {"query": {"term": {"name.keyword": name}}, "size": 100}
    return Request("POST", f"{ML}/{kind}/_search", body=query, missing_ok=True)


def _model_group(config: RegisterConfig, *, registering: bool) -> PlannedObject:
    body = {"name": config.name, "description": f"{MARKER}: the SPLADE encoders of splade-es serve"}
    return PlannedObject(
        key="model_group",
        what="model group",
        name=config.name,
        find=_search_request("model_groups", config.name),
        existing=lambda answer: _hits(answer, lambda source: {}),
        create=Request("POST", f"{ML}/model_groups/_register", body=body) if registering else None,
        created_id=lambda answer: _answer_field(answer, "model_group_id"),
        definition={},
        delete=(Request("DELETE", ML + "/model_groups/{id}"),),
    )


def _connector(config: RegisterConfig, kind: Kind, body: dict[str, Any] | None) -> PlannedObject:
    name = config.named(f"{kind}-connector")
    return PlannedObject(
        key=f"connector:{kind}",
        what="connector",
        name=name,
        find=_search_request("connectors", name),
        existing=lambda answer: _hits(answer, connector_definition),
        create=Request("POST", f"{ML}/connectors/_create", body=body) if body else None,
        created_id=lambda answer: _answer_field(answer, "connector_id"),
        definition=connector_definition(body) if body else None,
        delete=(Request("DELETE", ML + "/connectors/{id}"),),
    )


def _model(config: RegisterConfig, kind: Kind, *, registering: bool) -> PlannedObject:
    body = model_body(config, kind)
    return PlannedObject(
        key=f"model:{kind}",
        what="model",
        name=config.named(kind),
        find=_search_request("models", config.named(kind)),
        existing=lambda answer: _hits(answer, model_definition),
        create=Request("POST", f"{ML}/models/_register", body=body) if registering else None,
        created_id=lambda answer: _answer_field(answer, "model_id"),
        definition=model_definition(body),
        delete=(Request("DELETE", ML + "/models/{id}"),),
        deployment=DEPLOYMENT,
        output=f"{kind}_model_id",
    )


def _ingest_pipeline(config: RegisterConfig, body: dict[str, Any] | None) -> PlannedObject:
    return _pipeline(
        config.named("ingest"), "_ingest/pipeline", "ingest pipeline", body, "ingest_pipeline"
    )


def _search_pipeline(config: RegisterConfig, body: dict[str, Any] | None) -> PlannedObject:
    return _pipeline(
        config.named("two-phase"), "_search/pipeline", "search pipeline", body, "search_pipeline"
    )


def _pipeline(
    name: str, base: str, what: str, body: dict[str, Any] | None, output: str
) -> PlannedObject:
    path = f"/{base}/{name}"
    return PlannedObject(
        key=output,
        what=what,
        name=name,
        find=Request("GET", path, missing_ok=True),
        existing=lambda answer: _named_bodies(answer, name),
        create=Request("PUT", path, body=body) if body else None,
        created_id=lambda answer: name,
        definition=body,
        updatable=True,
        delete=(Request("DELETE", f"/{base}/{{id}}"),),
        output=output,
    )


# ------------------------------------------------------------------ reading answers
def connector_definition(source: Mapping[str, Any]) -> dict[str, Any]:
    """What register compares of a connector (its ``_create`` body, or its stored document):
    protocol, parameters, actions and client_config, spelled as ml-commons stores them (action
    types upper case, parameters as strings, the backoff policy lower case)."""
    actions = [
        {
            "action_type": str(a.get("action_type", "")).upper(),
            "method": str(a.get("method", "")).upper(),
            "url": a.get("url"),
            "headers": dict(a.get("headers") or {}),
            "request_body": a.get("request_body"),
        }
        for a in source.get("actions") or []
    ]
    client = source.get("client_config") or {}
    return {
        "protocol": source.get("protocol"),
        "parameters": {k: str(v) for k, v in (source.get("parameters") or {}).items()},
        "actions": actions,
        "client_config": {
            k: (str(client[k]).lower() if k == "retry_backoff_policy" else client[k])
            for k in _CLIENT_CONFIG_KEYS
            if k in client
        },
    }


def model_definition(source: Mapping[str, Any]) -> dict[str, Any]:
    """What register compares of a model: its kind, group and connector."""
    algorithm = source.get("algorithm") or source.get("function_name") or ""
    return {
        "algorithm": str(algorithm).upper(),
        "model_group_id": source.get("model_group_id"),
        "connector_id": source.get("connector_id"),
    }


def _hits(answer: Any, definition: Any) -> list[Existing]:
    """The objects an ml-commons ``_search`` found (None: its index does not exist yet)."""
    if not answer:
        return []
    found = []
    for hit in (answer.get("hits") or {}).get("hits") or []:
        source = hit.get("_source") or {}
        ours = str(source.get("description", "")).startswith(MARKER)
        found.append(Existing(str(hit["_id"]), definition(source), ours))
    return found


def _named_bodies(answer: Any, name: str) -> list[Existing]:
    """The pipeline ``GET /_ingest|_search/pipeline/<name>`` found (None: 404)."""
    if not answer or name not in answer:
        return []
    body = answer[name]
    return [Existing(name, body, str(body.get("description", "")).startswith(MARKER))]


def _answer_field(answer: Any, key: str) -> str:
    value = (answer or {}).get(key)
    if not value:
        raise UnsupportedFeatureError(
            f"ml-commons answered without a {key}: {json.dumps(answer)[:300]}"
        )
    return str(value)


def _task_outcome(answer: Any) -> tuple[bool, str | None]:
    state = str((answer or {}).get("state", "")).upper()
    if state in _FAILED_TASK_STATES:
        return True, str(answer.get("error") or state)
    return state == "COMPLETED", None


DEPLOYMENT = Deployment(
    state=Request("GET", ML + "/models/{id}"),
    is_deployed=lambda answer: str((answer or {}).get("model_state", "")).upper() == "DEPLOYED",
    is_loaded=lambda answer: str((answer or {}).get("model_state", "")).upper() in _LOADED_STATES,
    deploy=Request("POST", ML + "/models/{id}/_deploy"),
    undeploy=Request("POST", ML + "/models/{id}/_undeploy"),
    task=Request("GET", ML + "/tasks/{task_id}"),
    task_outcome=_task_outcome,
)


# ------------------------------------------------------------------ what to use
def usage(
    config: RegisterConfig, dialect: OpenSearchDialect, outputs: Mapping[str, str | None]
) -> dict[str, Any]:
    """The index body, ingest setting and query that use what register created."""
    index = dialect.index_body(config.field_type, sparse_field=config.sparse_field)
    index["settings"]["index.default_pipeline"] = outputs.get("ingest_pipeline")
    query: dict[str, Any] = {"query_text": "<the query>", "model_id": outputs.get("query_model_id")}
    if config.field_type == "sparse_vector":
        query["method_parameters"] = seismic_parameters(None)
    found: dict[str, Any] = {
        "index": index,
        "query": {"query": {"neural_sparse": {config.sparse_field: query}}},
    }
    if outputs.get("search_pipeline"):
        found["search_params"] = {"search_pipeline": outputs["search_pipeline"]}
    return found
