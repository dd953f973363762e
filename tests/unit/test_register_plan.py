"""The pure parts of ``splade_es.register``: request values and redaction, the OpenSearch and
Elasticsearch plans (bodies, version gates, the settings and license judges), serve's address
and key file. Wire facts are cited from the engines' sources at their release tags."""

from __future__ import annotations

import json
import re
import sys

import pytest

from splade_es import defaults
from splade_es.documents import document_text
from splade_es.exceptions import ConfigurationError, InputError, UnsupportedFeatureError
from splade_es.register import RegisterConfig, first_api_key
from splade_es.register import elasticsearch as es
from splade_es.register import opensearch as os_
from splade_es.register.plan import REDACTED, Ref, Request, Secret, differences, reveal
from splade_es.register.run import is_private_host, settings_fix

KEY = "k-77-secret"
SERVE = "http://127.0.0.1:9280"


def config(**options):
    return RegisterConfig(serve_url=SERVE, api_key=KEY, **options)


def os_plan(version=(2, 19, 6), private_host=True, **options):
    return os_.registration_plan(config(**options), version, private_host=private_host)


def body_of(plan, key):
    return next(o.create.body for o in plan.objects if o.key == key)


# ------------------------------------------------------------------ values and redaction
def test_secrets_are_sent_but_never_printed():
    request = Request(
        "POST", "/c", body={"credential": {"api_key": Secret(KEY)}, "n": [Secret(KEY)]}
    )
    shown = json.dumps(request.printable())
    assert KEY not in shown and shown.count(REDACTED) == 2
    assert reveal(request.body, {}) == {"credential": {"api_key": KEY}, "n": [KEY]}
    assert KEY not in repr(Secret(KEY)) and KEY not in str(Secret(KEY))
    assert KEY not in repr(config())


def test_refs_print_as_placeholders_until_their_object_exists():
    request = Request("POST", "/m", body={"connector_id": Ref("connector:query")})
    assert request.printable()["body"] == {"connector_id": "<id of connector:query>"}
    assert request.printable({"connector:query": "c-1"})["body"] == {"connector_id": "c-1"}
    assert Request("DELETE", "/x/{id}").bind(id="7").path == "/x/7"


def test_differences_name_the_paths_that_differ():
    ours = {"actions": [{"url": "a", "headers": {"h": "1"}}], "protocol": "http"}
    theirs = {"actions": [{"url": "b", "headers": {"h": "1"}}], "protocol": "http", "x": 1}
    assert differences(ours, theirs) == ["actions[0].url", "x"]
    assert differences((1, 2), [1, 2]) == [] and differences([1], [1, 2]) == ["(length)"]


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"name": "Splade"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"sparse_field": "a.b"}, "sparse_field"),
        ({"text_fields": ()}, "text_fields"),
        ({"serve_url": "ftp://h"}, "serve_url"),
        ({"serve_url": "http://user:pw@h:1"}, "serve_url"),
        ({"serve_url": "http://h:1/?x=1"}, "serve_url"),
        ({"serve_url": "http://h:abc"}, "serve_url"),
    ],
)
def test_bad_options_name_the_option(options, option):
    with pytest.raises(ConfigurationError) as raised:
        RegisterConfig(**options)
    assert raised.value.option == option
    assert "pw" not in str(raised.value)


def test_registering_needs_the_url_and_the_key_unregistering_neither():
    with pytest.raises(ConfigurationError) as raised:
        RegisterConfig(serve_url=SERVE).require_serve()
    assert raised.value.option == "serve_api_key_file"
    assert os_.removal_plan(RegisterConfig(), (2, 19, 6)).objects
    assert RegisterConfig(serve_url="https://h/base/").serve_url == "https://h/base"


# ------------------------------------------------------------------ OpenSearch bodies
def test_the_connector_is_one_ml_commons_2_19_accepts():
    body = body_of(os_plan(), "connector:document")
    # ml-commons 2.19.6.0 MLCreateConnectorInput: name, version, protocol and a non-empty
    # credential are required (the credential from 2.19.0.0 on); HttpConnector reads
    # name/description/version/protocol/parameters/credential/actions/client_config.
    assert {"name", "version", "protocol", "credential", "actions"} <= set(body)
    assert set(body) <= {
        "name",
        "description",
        "version",
        "protocol",
        "parameters",
        "credential",
        "actions",
        "client_config",
    }
    assert body["protocol"] == "http" and body["credential"] == {"api_key": Secret(KEY)}
    # ConnectorAction.parse: action_type (enum PREDICT, upper-cased), method, url, headers,
    # request_body; AbstractConnector.createDecryptedHeaders fills ${credential.*}.
    (action,) = body["actions"]
    assert action["action_type"].upper() == "PREDICT" and action["method"] == "POST"
    assert action["url"] == f"{SERVE}/_splade/embed/document"
    assert action["headers"]["Authorization"] == "Bearer ${credential.api_key}"
    # HttpConnector.createPayload substitutes ${parameters.input}: the JSON array of texts the
    # default pre-process function (connector.pre_process.default.embedding) makes.
    assert action["request_body"] == '{"inputs": ${parameters.input}}'
    assert json.loads(action["request_body"].replace("${parameters.input}", '["a","b"]')) == {
        "inputs": ["a", "b"]
    }
    assert "pre_process_function" not in action and "post_process_function" not in action
    # RemoteConnectorExecutor.calculateChunkSize reads the step size from the parameters.
    assert body["parameters"] == {
        "input_docs_processed_step_size": str(defaults.ENGINE_BATCH_TEXTS)
    }


def test_client_config_retries_with_jitter_and_only_where_ml_commons_has_the_fields():
    config_2_19 = body_of(os_plan(), "connector:query")["client_config"]
    # ConnectorClientConfig (2.15.0.0 .. 2.19.6.0): these seven fields; RetryBackoffPolicy is
    # CONSTANT, EXPONENTIAL_EQUAL_JITTER or EXPONENTIAL_FULL_JITTER.
    assert set(config_2_19) == {
        "max_connection",
        "connection_timeout",
        "read_timeout",
        "retry_backoff_millis",
        "retry_timeout_seconds",
        "max_retry_times",
        "retry_backoff_policy",
    }
    assert config_2_19["retry_backoff_policy"].upper() in {
        "EXPONENTIAL_EQUAL_JITTER",
        "EXPONENTIAL_FULL_JITTER",
    }
    assert config_2_19["max_retry_times"] == defaults.MAX_RETRIES > 0
    # Timeouts are seconds from 2.14.0.0 (HttpJsonConnectorExecutor: Duration.ofSeconds).
    assert config_2_19["read_timeout"] < 1000
    assert "client_config" not in body_of(
        os_plan((2, 14, 0), private_host=False), "connector:query"
    )


def test_the_model_is_a_remote_model_of_the_group_over_its_connector():
    body = body_of(os_plan(), "model:query")
    # MLRegisterModelInput (2.19.6.0): function_name, name, model_group_id, description,
    # connector_id; no access_mode (refused while model access control is off).
    assert body["function_name"] == "remote" and body["name"] == "splade-es-query"
    assert body["connector_id"] == Ref("connector:query") and body["model_group_id"] == Ref(
        "model_group"
    )
    assert "access_mode" not in body_of(os_plan(), "model_group")


def test_sparse_vector_fields_get_token_ids_from_serve():
    plan = os_plan((3, 3, 0), field_type="sparse_vector")
    urls = [body_of(plan, f"connector:{k}")["actions"][0]["url"] for k in ("document", "query")]
    assert urls == [f"{SERVE}/_splade/embed/{k}?key_scheme=id" for k in ("document", "query")]
    query = plan.usage({"query_model_id": "m"})["query"]["query"]["neural_sparse"]["splade"]
    assert query["model_id"] == "m" and "method_parameters" in query
    with pytest.raises(UnsupportedFeatureError, match="sparse_vector"):
        os_plan((2, 19, 6), field_type="sparse_vector")


def test_the_ingest_pipeline_joins_encodes_and_drops_the_join():
    body = body_of(os_plan(text_fields=("title", "body")), "ingest_pipeline")
    script, encoding, remove = (next(iter(p.items())) for p in body["processors"])
    assert [script[0], encoding[0], remove[0]] == ["script", "sparse_encoding", "remove"]
    assert script[1]["params"]["fields"] == ["title", "body"]
    assert script[1]["params"]["target"] == os_.JOINED_FIELD
    # neural-search 2.19.6.0 SparseEncodingProcessorFactory: model_id, field_map, batch_size.
    assert encoding[1]["field_map"] == {os_.JOINED_FIELD: "splade"}
    assert encoding[1]["model_id"] == Ref("model:document")
    assert encoding[1]["batch_size"] == defaults.ENGINE_BATCH_TEXTS
    assert remove[1] == {"field": os_.JOINED_FIELD, "ignore_missing": True}
    # batch_size is read from neural-search 2.16.0.0 (AbstractBatchingProcessor.Factory); an
    # unknown key fails the pipeline before.
    older = body_of(os_plan((2, 15, 0)), "ingest_pipeline")
    assert "batch_size" not in older["processors"][1]["sparse_encoding"]


def test_the_scripts_whitespace_is_exactly_what_python_strips():
    # documents.document_text strips with str.strip(); the script strips these characters.
    assert set(os_.WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    text = "".join(os_.WHITESPACE) + "tax\u00a0law" + "\u3000\u2029"
    assert text.strip(os_.WHITESPACE) == text.strip() == "tax\u00a0law"


def join_like_the_script(doc, fields):
    """The pipeline script's steps in Python, statement by statement (it cannot run here)."""
    parts = []
    for name in fields:
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"field [{name}] is not text")
        start, end = 0, len(value)
        while start < end and value[start] in os_.WHITESPACE:
            start += 1
        while end > start and value[end - 1] in os_.WHITESPACE:
            end -= 1
        if end > start:
            parts.append(value[start:end])
    if not parts:
        raise ValueError("no text in field(s)")
    return " ".join(parts)


@pytest.mark.parametrize(
    "doc",
    [
        {"title": " Tax ", "text": "law\n"},
        {"text": "only text"},
        {"title": None, "text": "x"},
        {"title": "\u2003\u00a0", "text": "y"},
        {"title": "t", "text": ""},
        {"title": "", "text": "  "},
        {},
        {"title": 3, "text": "x"},
        {"title": ["a"], "text": "x"},
        {"title": True},
        {"title": "é\u0085", "text": "\u200bz"},  # U+200B is not whitespace; U+0085 is
    ],
)
def test_the_script_rule_is_splade_es_text_rule(doc):
    fields = ("title", "text")
    try:
        expected = document_text(doc, fields, 1)
    except InputError:
        with pytest.raises(ValueError):
            join_like_the_script(doc, fields)
        return
    assert join_like_the_script(doc, fields) == expected


def test_the_script_source_is_the_rule_above():
    # The statements the Python mirror above follows, in the script's own words.
    source = os_.JOIN_SCRIPT
    for line in (
        "def value = ctx.get(field);",
        "if (value == null) { continue; }",
        "if (!(value instanceof String)) {",
        "space.indexOf(text.substring(start, start + 1)) >= 0",
        "space.indexOf(text.substring(end - 1, end)) >= 0",
        "if (end > start) { parts.add(text.substring(start, end)); }",
        "if (parts.isEmpty()) {",
        "ctx[params.target] = String.join(' ', parts);",
    ):
        assert line in source
    # Only what OpenSearch's Painless allowlist has (java.lang.txt: CharSequence.length,
    # String.substring/indexOf(String), String.join(CharSequence,Iterable)); no charAt-to-char
    # comparisons, no String.strip (not allowlisted).
    assert ".strip(" not in source and ".trim(" not in source and ".charAt(" not in source


def test_two_phase_is_a_search_pipeline_from_2_15():
    body = body_of(os_plan(two_phase=True), "search_pipeline")
    # neural-search 2.15.0.0 NeuralSparseTwoPhaseProcessor: TYPE, "enabled", "two_phase_parameter".
    assert body["request_processors"] == [{"neural_sparse_two_phase_processor": {"enabled": True}}]
    with pytest.raises(UnsupportedFeatureError, match=r"2\.15"):
        os_plan((2, 14, 0), private_host=False, two_phase=True)
    assert "search_pipeline" not in {o.key for o in os_plan().objects}


def test_opensearch_before_2_11_is_refused():
    with pytest.raises(UnsupportedFeatureError, match=r"2\.11"):
        os_plan((2, 10, 0))


def test_what_register_compares_of_a_connector_matches_what_ml_commons_stores():
    body = body_of(os_plan(), "connector:document")
    stored = json.loads(json.dumps(reveal(body, {})))
    stored.pop("credential")
    stored["actions"][0]["action_type"] = "PREDICT"  # ConnectorAction.toXContent: the enum
    stored["parameters"] = {"input_docs_processed_step_size": "256"}  # getParameterMap: strings
    ours = next(o for o in os_plan().objects if o.key == "connector:document").definition
    assert differences(ours, os_.connector_definition(stored)) == []
    stored["actions"][0]["url"] = "http://elsewhere/_splade/embed/document"
    assert differences(ours, os_.connector_definition(stored)) == ["actions[0].url"]


# ------------------------------------------------------------------ OpenSearch settings
def judge(answer, version=(2, 19, 6), private_host=True):
    return os_.settings_problems(
        answer,
        urls=[f"{SERVE}/_splade/embed/document", f"{SERVE}/_splade/embed/query"],
        serve_url=SERVE,
        version=version,
        private_host=private_host,
    )


def test_the_trusted_patterns_must_match_the_whole_url_as_java_matches():
    prefix_only = {"persistent": {os_.TRUSTED: ["http://127\\.0\\.0\\.1"]}}
    (problem,) = judge(prefix_only, private_host=False)
    assert "matches" in problem.message and os_.TRUSTED in problem.message
    fixed = problem.settings[os_.TRUSTED]
    assert fixed[0] == "http://127\\.0\\.0\\.1"  # kept: appended to, not replaced
    assert judge({"persistent": {os_.TRUSTED: fixed}}, private_host=False) == []
    # A list setting may come as indexed keys; Java-only syntax a Python regex cannot read
    # matches nothing here (the cluster still judges it).
    indexed = {"defaults": {f"{os_.TRUSTED}.0": "(?<x>bad", f"{os_.TRUSTED}.1": fixed[-1]}}
    assert judge(indexed, private_host=False) == []


def test_a_private_serve_needs_private_ip_enabled_from_2_15_and_is_refused_before():
    trusted = {"persistent": {os_.TRUSTED: [".*"]}}
    (problem,) = judge(trusted)
    assert problem.settings == {os_.PRIVATE_IP: True} and problem.section == "persistent"
    assert judge({"persistent": {os_.TRUSTED: [".*"], os_.PRIVATE_IP: "true"}}) == []
    (old,) = judge(trusted, version=(2, 14, 0))
    assert old.settings is None and "before 2.15" in old.message


def test_remote_inference_turned_off_is_a_problem_fixed_by_a_setting():
    answer = {"persistent": {os_.TRUSTED: [".*"]}, "transient": {os_.REMOTE_INFERENCE: "false"}}
    (problem,) = judge(answer, private_host=False)
    assert problem.settings == {os_.REMOTE_INFERENCE: True} and problem.section == "transient"
    assert settings_fix([problem]) == {"transient": {os_.REMOTE_INFERENCE: True}}


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.1", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("169.254.0.9", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("::ffff:10.0.0.1", True),
        ("fec0::1", True),
        ("8.8.8.8", False),
        ("100.64.0.1", False),  # not private to Java's InetAddress, so not to ml-commons
        ("2001:db8::1", False),
    ],
)
def test_private_addresses_are_those_ml_commons_refuses(host, private):
    # ml-commons 2.19.6.0 MLHttpClientFactory.hasPrivateIpAddress / isPrivateIPv4.
    assert is_private_host(host, lambda name: []) is private


def test_a_name_is_private_when_it_resolves_to_a_private_address():
    assert is_private_host("serve.internal", lambda name: ["10.0.0.5"])
    assert not is_private_host("serve.example.com", lambda name: ["93.184.216.34"])
    assert not is_private_host("nowhere.invalid", lambda name: [])


# ------------------------------------------------------------------ Elasticsearch
@pytest.mark.parametrize(
    ("version", "custom"),
    [
        ((8, 18, 3), False),
        ((8, 19, 0), True),
        ((8, 19, 7), True),
        ((9, 0, 4), False),
        ((9, 1, 0), True),
        ((9, 3, 1), True),
    ],
)
def test_the_custom_service_is_used_where_it_exists(version, custom):
    # elasticsearch-specification: inference.put_custom "@availability stack since=8.19.0" on
    # branch 8.19; absent from branch 9.0; present on 9.1.
    plan = es.registration_plan(config(), version, private_host=True)
    services = {o.create.body["service"] for o in plan.objects}
    assert services == {"custom" if custom else "hugging_face"}


def test_the_custom_endpoint_body():
    body = es.endpoint_body(SERVE, "document", KEY, custom=True)
    settings = body["service_settings"]
    # CustomServiceSettings.fromMap: url, headers, request (a string), response.json_parser;
    # CustomSecretSettings: secret_parameters; nothing else (throwIfNotEmptyMap).
    assert set(settings) == {"url", "headers", "request", "response", "secret_parameters"}
    assert settings["url"] == f"{SERVE}/_splade/embed/document?format=pairs"
    assert settings["headers"] == {"Authorization": "Bearer ${api_key}"}
    assert settings["secret_parameters"] == {"api_key": Secret(KEY)}
    assert settings["request"] == '{"inputs": ${input}}'
    assert settings["response"] == {
        "json_parser": {
            "token_path": "$.embeddings[*].embedding[*].token",
            "weight_path": "$.embeddings[*].embedding[*].weight",
        }
    }


def test_the_hugging_face_endpoint_body():
    body = es.endpoint_body(SERVE, "query", KEY, custom=False)
    # HuggingFaceElserModel: service_settings url + api_key (DefaultSecretSettings).
    assert body == {
        "service": "hugging_face",
        "service_settings": {"url": f"{SERVE}/_splade/embed/query", "api_key": Secret(KEY)},
    }


@pytest.mark.parametrize(
    ("version", "license_type", "status", "refused"),
    [
        ((8, 18, 0), "basic", "active", True),
        ((9, 0, 0), "platinum", "active", True),  # ENTERPRISE is above platinum
        ((9, 1, 0), "trial", "active", False),
        ((9, 1, 0), "enterprise", "active", False),
        ((9, 1, 0), "enterprise", "expired", True),
        ((8, 17, 9), "basic", "active", False),  # not enforced before 8.18
    ],
)
def test_the_license_is_enforced_from_8_18(version, license_type, status, refused):
    # elasticsearch #119893 / #120066 (8.18, 9.0): InferencePlugin.INFERENCE_API_FEATURE is
    # License.OperationMode.ENTERPRISE, checked by the inference transport actions.
    answer = {"license": {"type": license_type, "status": status}}
    problems = es.license_problems(answer, version)
    assert bool(problems) is refused
    assert all(p.settings is None for p in problems)


def test_elasticsearch_usage_names_search_inference_id_from_8_17():
    outputs = {"document_inference_id": "d", "query_inference_id": "q"}
    new = es.usage(config(), (8, 17, 0), outputs)["mapping"]["mappings"]["properties"]["splade"]
    old = es.usage(config(), (8, 16, 0), outputs)["mapping"]["mappings"]["properties"]["splade"]
    assert new == {"type": "semantic_text", "inference_id": "d", "search_inference_id": "q"}
    assert old == {"type": "semantic_text", "inference_id": "d"}


def test_elasticsearch_before_8_15_is_refused():
    with pytest.raises(UnsupportedFeatureError, match=r"8\.15"):
        es.registration_plan(config(), (8, 14, 3), private_host=False)


def test_an_endpoint_is_ours_only_when_it_calls_serve():
    answer = {
        "endpoints": [
            {
                "inference_id": "a",
                "service": "custom",
                "service_settings": {"url": f"{SERVE}/_splade/embed/query?format=pairs"},
            },
            {
                "inference_id": "b",
                "service": "openai",
                "service_settings": {"url": "https://api.openai.com"},
            },
        ]
    }
    found = next(o for o in es.removal_plan(RegisterConfig(), (9, 1, 0)).objects).existing(answer)
    assert [(e.id, e.ours) for e in found] == [("a", True), ("b", False)]


# ------------------------------------------------------------------ the key file
def test_the_first_key_of_the_file_is_used(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# for the engines\n\n  k-1  \nk-2\n")
    assert first_api_key(path) == "k-1"
    path.write_text("# nothing\n\n")
    with pytest.raises(ConfigurationError, match="holds no key"):
        first_api_key(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        first_api_key(tmp_path / "missing")


def test_the_key_file_rule_is_serves(tmp_path):
    import splade_es.api_keys as auth

    text = "# engines\n\n k-9 \nk-10\n"
    (tmp_path / "keys").write_text(text)
    assert first_api_key(tmp_path / "keys") == auth.ApiKeys.parse(text).first


def test_object_names_are_deterministic_and_prefixed():
    plan = os_plan(name="search-a")
    assert [o.name for o in plan.objects] == [
        "search-a",
        "search-a-document-connector",
        "search-a-query-connector",
        "search-a-document",
        "search-a-query",
        "search-a-ingest",
    ]
    assert all(re.fullmatch(r"[a-z0-9_-]+", o.name) for o in plan.objects)
