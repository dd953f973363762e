"""``doctor``'s serve rows (``serve_checks``) against fake engines behind the real clients and
a stand-in serve on 127.0.0.1: each row's pass, failure and skip.

The fakes are register's own (``tests/unit/test_register_run.py``), taught the reads doctor
adds:

* ml-commons / ingest: ``POST _ingest/pipeline/<id>/_simulate`` runs the stored pipeline (the
  join script's fields, ``sparse_encoding`` through the model's connector URL, the joined field
  removed) and answers ``{"docs": [{"doc": {"_source": ...}}]}``; ``POST _plugins/_ml/_predict/
  text_embedding/<model>`` with ``text_docs`` answers ``{"inference_results": [{"output":
  [{"name": "response", "dataAsMap": {"response": [...]}}]}]}`` (ml-commons 2.19.6.0, as the
  real node answers in ``tests/integration/test_node_ml_commons.py``).
* Elasticsearch: ``POST _inference/sparse_embedding/<id>`` with ``{"input": [...]}`` answers
  ``{"sparse_embedding": [{"is_truncated": false, "embedding": {token: weight}}]}``: the
  request as elastic/elasticsearch-specification branch 9.1 (e1e50ac)
  ``specification/inference/sparse_embedding/SparseEmbeddingRequest.ts`` has it (body
  ``input: string | string[]``; branch 8.15 (28a996c): ``inference/inference/
  InferenceRequest.ts``, ``POST _inference/{task_type}/{inference_id}``), the answer as
  ``specification/inference/_types/Results.ts`` (``SparseEmbeddingInferenceResult``:
  ``sparse_embedding: Array<SparseEmbeddingResult>``, each ``is_truncated: boolean`` and
  ``embedding: Dictionary<string, float>``) and
  ``sparse_embedding/examples/response/SparseEmbeddingResponseExample1.yaml`` show it.

Both engines hold weights as Java floats: the fakes answer each weight as Java prints the
float (``str(np.float32(w))``), which as a Python float differs from serve's double.
"""

from __future__ import annotations

import doctest
import importlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner

from splade_es.cli import main
from splade_es.connect import Cluster
from splade_es.doctor import (
    CAN_CALL,
    SAME_VECTORS,
    SERVE_ANSWERS,
    SERVE_DOCUMENTS,
    SERVE_QUERIES,
    Check,
    ClusterFacts,
    DoctorReport,
    ServeTarget,
    _Doctor,
    relay_difference,
    sample_text,
    serve_checks,
)
from splade_es.exceptions import ConfigurationError
from splade_es.register import RegisterConfig, register
from splade_es.register.opensearch import PRIVATE_IP, TRUSTED
from tests.unit.test_register_run import (
    KEY,
    FakeInference,
    FakeMlCommons,
    elasticsearch_client,
    no_resolver,
    opensearch_client,
)

OTHER_KEY = "k-another-2b7c"


def model_vector(kind: str, text: str, scheme: str = "token") -> dict[str, float]:
    """The stand-in model: one weight per word, not exact in float32 (so a relayed weight
    differs from serve's as a double), query weights other than document weights."""
    vector: dict[str, float] = {}
    for position, word in enumerate(re.findall(r"\w+", text.lower())):
        key = word if scheme == "token" else str(sum(map(ord, word)))
        weight = (len(word) + position) / 7 + (0.3 if kind == "query" else 0.0)
        vector[key] = float(np.float32(weight))
    return vector


def as_java_float(vector: dict[str, float]) -> dict[str, float]:
    """A vector as an engine relays it: each weight parsed as a Java float and printed back."""
    return {key: float(str(np.float32(weight))) for key, weight in vector.items()}


# ------------------------------------------------------------------ the stand-in serve
class StandInServe:
    """``POST /_splade/embed/<kind>`` by the contract: ``{"inputs": [...]}``, ``key_scheme``
    in the query string, 401 without a key, 403 with a wrong one."""

    def __init__(self, keys: tuple[str, ...] = (KEY,)) -> None:
        self.keys = keys
        self.seen: list[tuple[str, str | None]] = []  # (path with query, Authorization)
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandInServe:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        serve = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                authorization = self.headers.get("Authorization")
                serve.seen.append((self.path, authorization))
                url = urlsplit(self.path)
                kind = url.path.removeprefix("/_splade/embed/")
                scheme = parse_qs(url.query).get("key_scheme", ["token"])[0]
                if kind not in ("document", "query"):
                    self.send(404, {"error": {"reason": "no such endpoint"}})
                elif authorization is None:
                    self.send(401, {"error": {"type": "security_exception", "reason": "no key"}})
                elif authorization.removeprefix("Bearer ") not in serve.keys:
                    self.send(403, {"error": {"type": "security_exception", "reason": "bad key"}})
                else:
                    texts = body["inputs"]
                    self.send(200, [model_vector(kind, t, scheme) for t in texts])

            def send(self, status: int, answer: Any) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def serve() -> Iterator[StandInServe]:
    server = StandInServe().start()
    yield server
    server.stop()


# ------------------------------------------------------------------ the fake engines
def _embed_url_vector(url: str, kind: str, text: str) -> dict[str, float]:
    scheme = parse_qs(urlsplit(url).query).get("key_scheme", ["token"])[0]
    return model_vector(kind, text, scheme)


class MlCommonsWithInference(FakeMlCommons):
    """register's fake ml-commons, also running ingest pipelines (simulate) and predicts.
    ``drift``: a weight the cluster changes on the way, to catch."""

    def __init__(self, version: str = "2.19.6") -> None:
        super().__init__(version)
        self.drift = 0.0

    def handle(self, method: str, path: str, params: dict[str, Any], body: Any) -> tuple[int, Any]:
        if m := re.fullmatch(r"/_ingest/pipeline/([^/]+)/_simulate", path):
            self.requests.append((method, path, params, body))
            return self.simulate(m.group(1), body)
        if m := re.fullmatch(r"/_plugins/_ml/_predict/text_embedding/([^/]+)", path):
            self.requests.append((method, path, params, body))
            return self.predict(m.group(1), body["text_docs"])
        return super().handle(method, path, params, body)

    def model_output(self, model_id: str, texts: list[str]) -> list[dict[str, float]]:
        model = self.store["models"][model_id]
        assert model["model_state"] == "DEPLOYED"
        url = self.store["connectors"][model["connector_id"]]["actions"][0]["url"]
        kind = url.split("/_splade/embed/")[1].split("?")[0]
        vectors = [as_java_float(_embed_url_vector(url, kind, t)) for t in texts]
        if self.drift:
            first = vectors[0]
            first[next(iter(first))] += self.drift
        return vectors

    def simulate(self, name: str, body: Any) -> tuple[int, Any]:
        pipeline = self.pipelines["_ingest"][name]
        script, encoding, remove = (next(iter(p.values())) for p in pipeline["processors"])
        docs = []
        for doc in body["docs"]:
            source = dict(doc["_source"])
            params = script["params"]
            parts = [source[f].strip() for f in params["fields"] if source.get(f, "").strip()]
            source[params["target"]] = " ".join(parts)
            for field, target in encoding["field_map"].items():
                [source[target]] = self.model_output(encoding["model_id"], [source[field]])
            del source[remove["field"]]
            docs.append({"doc": {"_index": "_index", "_id": "_id", "_source": source}})
        return 200, {"docs": docs}

    def predict(self, model_id: str, texts: list[str]) -> tuple[int, Any]:
        output = {"name": "response", "dataAsMap": {"response": self.model_output(model_id, texts)}}
        return 200, {"inference_results": [{"output": [output], "status_code": 200}]}


class InferenceWithCalls(FakeInference):
    """register's fake inference API, also answering ``POST _inference/sparse_embedding``."""

    def handle(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        m = re.fullmatch(r"/_inference/sparse_embedding/([^/?]+)", target.split("?")[0])
        if method != "POST" or not m:
            return super().handle(method, target, body)
        self.requests.append((method, target, body))
        endpoint = self.endpoints[m.group(1)]
        url = endpoint["service_settings"]["url"]
        kind = url.split("/_splade/embed/")[1].split("?")[0]
        texts = body["input"]
        results = [
            {"is_truncated": False, "embedding": as_java_float(_embed_url_vector(url, kind, t))}
            for t in ([texts] if isinstance(texts, str) else texts)
        ]
        return 200, {"sparse_embedding": results}


def registered_opensearch(
    serve: StandInServe, version: str = "2.19.6", **options: Any
) -> MlCommonsWithInference:
    fake = MlCommonsWithInference(version)
    config = RegisterConfig(serve_url=serve.url, api_key=KEY, apply_settings=True, **options)
    register(opensearch_client(fake), config, resolve=no_resolver, sleep=lambda s: None)
    return fake


def checks_of(client: Any, serve: StandInServe, key: str | None = KEY, **target: Any):
    found = serve_checks(
        client, ServeTarget(url=serve.url, api_key=key, **target), resolve=no_resolver
    )
    text = json.dumps([c.__dict__ for c in found])
    assert KEY not in text and OTHER_KEY not in text
    return {c.capability: c for c in found}


def cluster_writes(fake: Any) -> list[Any]:
    return [w for w in fake.writes() if "_simulate" not in w[1] and "_predict" not in w[1]]


# ------------------------------------------------------------------ OpenSearch
def test_opensearch_after_register_every_row_passes_and_nothing_is_written(serve):
    fake = registered_opensearch(serve)
    before = len(fake.requests)
    rows = checks_of(opensearch_client(fake), serve)
    assert [r.status for r in rows.values()] == ["ok", "ok", "ok"], rows
    assert list(rows) == [CAN_CALL, SERVE_ANSWERS, SAME_VECTORS]
    assert "trusted endpoint regex matches" in rows[CAN_CALL].detail
    assert "private addresses allowed" in rows[CAN_CALL].detail
    assert "with the key" in rows[SERVE_ANSWERS].detail
    detail = rows[SAME_VECTORS].detail
    assert "3 document texts through the ingest pipeline splade-es-ingest" in detail
    assert "3 query texts through the model" in detail
    assert "calls serve at" not in detail  # the cluster calls the serve doctor called
    # Only reads (and the two non-writing runs) went to the cluster.
    sent = fake.requests[before:]
    assert all(m == "GET" or p.endswith(("/_search", "/_simulate")) or "/_predict/" in p
               for m, p, _, _ in sent), sent  # fmt: skip
    # The sample documents went through the pipeline as documents (fields, padding) ...
    [simulate] = [b for _, p, _, b in sent if p.endswith("/_simulate")]
    sources = [d["_source"] for d in simulate["docs"]]
    assert sources[0] == {"title": SERVE_DOCUMENTS[0][0], "text": SERVE_DOCUMENTS[0][1]}
    assert sources[1] == {"title": SERVE_DOCUMENTS[1][0]}
    # ... and serve was asked for the texts splade-es ingest would encode, with the key.
    documents = [seen for seen in serve.seen if seen[0].startswith("/_splade/embed/document")]
    assert all(auth == f"Bearer {KEY}" for _, auth in serve.seen)
    assert len(documents) == 2  # one for "serve answers", one for the comparison
    assert sample_text(SERVE_DOCUMENTS[1]) == "garlic powder, one ounce"


def test_opensearch_with_one_text_field_gets_the_joined_text_and_its_own_sparse_field(serve):
    fake = registered_opensearch(serve, text_fields=("body",), sparse_field="vec", name="one")
    before = len(fake.requests)
    rows = checks_of(opensearch_client(fake), serve, name="one")
    assert rows[SAME_VECTORS].status == "ok", rows[SAME_VECTORS]
    [simulate] = [b for _, p, _, b in fake.requests[before:] if p.endswith("/_simulate")]
    assert simulate["docs"][0]["_source"] == {"body": sample_text(SERVE_DOCUMENTS[0])}
    assert "ingest pipeline one-ingest" in rows[SAME_VECTORS].detail


def test_opensearch_without_the_trusted_regex_names_the_setting_and_the_fix(serve):
    fake = registered_opensearch(serve)
    fake.settings["persistent"].pop(TRUSTED)
    rows = checks_of(opensearch_client(fake), serve)
    row = rows[CAN_CALL]
    assert row.status == "FAILED"
    assert f"no pattern of {TRUSTED} matches {serve.url}/_splade/embed/document" in row.detail
    assert "fix with PUT _cluster/settings" in row.detail and "--apply-settings" in row.detail
    assert (
        f"^{re.escape(serve.url)}/_splade/embed/.*$"
        in json.loads(row.detail.split("PUT _cluster/settings ")[1].split(" or run")[0])[
            "persistent"
        ][TRUSTED]
    )
    assert rows[SAME_VECTORS].status == "ok"  # what exists still works


def test_opensearch_without_private_ips_names_that_setting(serve):
    fake = registered_opensearch(serve)
    fake.settings["persistent"][PRIVATE_IP] = "false"
    row = checks_of(opensearch_client(fake), serve)[CAN_CALL]
    assert row.status == "FAILED"
    assert f"{PRIVATE_IP}: true" in row.detail and "is loopback or private" in row.detail


def test_opensearch_before_2_15_cannot_call_a_private_serve(serve):
    fake = MlCommonsWithInference("2.13.0")
    rows = checks_of(opensearch_client(fake), serve)
    assert rows[CAN_CALL].status == "unsupported"
    assert "before 2.15 refuses" in rows[CAN_CALL].detail
    assert rows[SAME_VECTORS].status == "skipped"
    assert rows[SAME_VECTORS].detail == "the cluster cannot call serve (above)"


def test_opensearch_without_ml_commons_is_unsupported(serve):
    fake = MlCommonsWithInference()
    fake.settings["defaults"] = {}  # no plugins.ml_commons.* settings at all
    rows = checks_of(opensearch_client(fake), serve)
    assert rows[CAN_CALL].status == "unsupported"
    assert "ml-commons is not installed" in rows[CAN_CALL].detail
    assert rows[SERVE_ANSWERS].status == "ok"  # doctor reaches serve itself
    assert rows[SAME_VECTORS].status == "skipped"


def test_opensearch_without_register_skips_the_vectors(serve):
    fake = MlCommonsWithInference()
    rows = checks_of(opensearch_client(fake), serve)
    assert rows[CAN_CALL].status == "FAILED"  # the defaults trust cloud endpoints only
    row = rows[SAME_VECTORS]
    assert row.status == "skipped" and not row.claimed
    assert row.detail.startswith("not registered: run splade-es register (no connector ")
    assert (
        "model splade-es-query" in row.detail and "ingest pipeline splade-es-ingest" in row.detail
    )
    assert cluster_writes(fake) == []
    # Another --name finds nothing either, even where the default name is registered.
    registered = registered_opensearch(serve)
    other = checks_of(opensearch_client(registered), serve, name="other")[SAME_VECTORS]
    assert other.status == "skipped" and "model other-document" in other.detail


def test_opensearch_vectors_that_differ_from_serves_fail_naming_the_text(serve):
    fake = registered_opensearch(serve)
    fake.drift = 1e-3
    row = checks_of(opensearch_client(fake), serve)[SAME_VECTORS]
    assert row.status == "FAILED"
    first = sample_text(SERVE_DOCUMENTS[0])
    assert row.detail.startswith(f"document {first!r} through the ingest pipeline")
    assert "weighs" in row.detail and "in serve's answer" in row.detail


def test_serve_down_fails_the_answer_row_and_skips_the_vectors(serve):
    fake = registered_opensearch(serve)
    serve.stop()
    rows = checks_of(opensearch_client(fake), serve)
    assert rows[CAN_CALL].status == "ok"
    assert rows[SERVE_ANSWERS].status == "FAILED"
    assert rows[SERVE_ANSWERS].detail == (
        f"connection refused at {serve.url}/_splade/embed/document: serve is down, or not "
        "listening there"
    )
    assert rows[SAME_VECTORS].status == "skipped"
    assert rows[SAME_VECTORS].detail == "serve does not answer (above)"


def test_a_wrong_or_missing_key_says_so_and_is_never_shown(serve):
    fake = registered_opensearch(serve)
    wrong = checks_of(opensearch_client(fake), serve, key=OTHER_KEY)[SERVE_ANSWERS]
    assert wrong.status == "FAILED"
    assert wrong.detail.startswith("serve refused the key (403)")
    missing = checks_of(opensearch_client(fake), serve, key=None)[SERVE_ANSWERS]
    assert missing.status == "FAILED"
    assert missing.detail.startswith("serve wants an API key (401)")
    assert "--serve-api-key-file" in missing.detail
    assert ("/_splade/embed/document", None) in serve.seen


def test_a_serve_that_is_not_serve_is_named(serve):
    fake = registered_opensearch(serve)
    target = ServeTarget(url=f"{serve.url}/elsewhere", api_key=KEY)
    [_, answers, _] = serve_checks(opensearch_client(fake), target, resolve=no_resolver)
    assert answers.status == "FAILED"
    assert answers.detail == (
        f"no embed endpoint at {serve.url}/elsewhere/_splade/embed/document (404): is this "
        "splade-es serve's URL?"
    )


# ------------------------------------------------------------------ Elasticsearch
def registered_elasticsearch(
    serve: StandInServe, version: str = "9.1.0", license_type: str = "trial"
) -> InferenceWithCalls:
    fake = InferenceWithCalls(version, license_type)
    register(elasticsearch_client(fake), RegisterConfig(serve_url=serve.url, api_key=KEY))
    return fake


@pytest.mark.parametrize("version", ["9.1.0", "9.0.3", "8.17.4"])
def test_elasticsearch_after_register_every_row_passes(serve, version):
    fake = registered_elasticsearch(serve, version)
    before = len(fake.requests)
    rows = checks_of(elasticsearch_client(fake), serve)
    assert [r.status for r in rows.values()] == ["ok", "ok", "ok"], rows
    assert "3 document texts through the inference endpoint splade-es-document" in (
        rows[SAME_VECTORS].detail
    )
    calls = [(p, b) for m, p, b in fake.requests[before:] if m != "GET"]
    assert calls == [
        (
            "/_inference/sparse_embedding/splade-es-document",
            {"input": [sample_text(parts) for parts in SERVE_DOCUMENTS]},
        ),
        ("/_inference/sparse_embedding/splade-es-query", {"input": list(SERVE_QUERIES)}),
    ]
    if version == "8.17.4":
        assert "does not enforce it" in rows[CAN_CALL].detail


def test_elasticsearch_with_a_basic_license_from_8_18_is_unsupported_with_the_fix(serve):
    fake = InferenceWithCalls("8.18.1", license_type="basic")
    rows = checks_of(elasticsearch_client(fake), serve)
    assert rows[CAN_CALL].status == "unsupported"
    assert "enterprise or trial license; this cluster's is basic" in rows[CAN_CALL].detail
    assert "_license/start_trial" in rows[CAN_CALL].detail
    assert rows[SAME_VECTORS].status == "skipped"


def test_elasticsearch_before_8_15_has_no_inference_endpoints_for_serve(serve):
    rows = checks_of(elasticsearch_client(InferenceWithCalls("8.14.3")), serve)
    assert rows[CAN_CALL].status == "unsupported"
    assert "register needs Elasticsearch 8.15+" in rows[CAN_CALL].detail


def test_elasticsearch_without_register_skips_the_vectors(serve):
    fake = InferenceWithCalls("9.1.0")
    row = checks_of(elasticsearch_client(fake), serve)[SAME_VECTORS]
    assert row.status == "skipped"
    assert row.detail == (
        "not registered: run splade-es register (no inference endpoint splade-es-document, "
        "inference endpoint splade-es-query)"
    )
    assert fake.writes() == []


def test_elasticsearch_endpoints_calling_another_serve_are_compared_and_named(serve):
    fake = registered_elasticsearch(serve)
    other = StandInServe().start()
    try:
        for endpoint in fake.endpoints.values():
            settings = endpoint["service_settings"]
            settings["url"] = settings["url"].replace(serve.url, other.url)
        row = checks_of(elasticsearch_client(fake), serve)[SAME_VECTORS]
    finally:
        other.stop()
    assert row.status == "ok"
    assert row.detail.endswith(f"(the cluster calls serve at {other.url})")


# ------------------------------------------------------------------ the rules
def test_a_relayed_vector_is_serves_up_to_a_batch_shapes_rounding():
    """The same vector by the project's rule: the last bits a batch's shape moves pass (the
    engine's call and doctor's are different batches); what a relay would change does not."""
    sent = {"tax": float(np.float32(1.2345678)), "law": 0.25}
    assert relay_difference(as_java_float(sent), sent) is None
    assert as_java_float(sent)["tax"] != sent["tax"]  # not equal as doubles
    one_ulp = float(np.nextafter(np.float32(sent["tax"]), np.float32(2)))
    assert relay_difference({**sent, "tax": one_ulp}, sent) is None
    # A stored (9-bit) weight is not the relayed one; nor is one scaled by 1e-3.
    assert "weighs" in (relay_difference({**sent, "tax": 1.234375}, sent) or "")
    assert relay_difference({**sent, "law": 0.25 * 1.001}, sent) is not None
    assert relay_difference({"tax": sent["tax"]}, sent) == "keys differ: missing ['law'], extra []"
    assert relay_difference({**sent, "x": 0.5}, sent) == "keys differ: missing [], extra ['x']"
    assert relay_difference({**sent, "x": 1e-7}, sent) is None  # a weight that rounds to 0
    assert relay_difference({**sent, "law": "0.25"}, sent) is not None


def test_serve_target_checks_like_register():
    assert ServeTarget(url="http://127.0.0.1:9280/").url == "http://127.0.0.1:9280"
    assert "k-" not in repr(ServeTarget(url="http://h:1", api_key="k-1"))
    with pytest.raises(ConfigurationError, match="serve_url must be http"):
        ServeTarget(url="ftp://h")
    with pytest.raises(ConfigurationError, match="name must be"):
        ServeTarget(url="http://h:1", name="Bad Name")


# ------------------------------------------------------------------ the command
def cli(monkeypatch, client: Any, *args: str):
    monkeypatch.setattr("splade_es.cli.doctor.connect", lambda config: Cluster.from_client(client))
    monkeypatch.setattr("splade_es.register.run.resolve_host", no_resolver)
    facts = ClusterFacts("opensearch", "2.19.6", "opensearch", None, (), 1024, None)
    capability = Check("rank_features field", "ok", "fine")
    # The capability checks are test_doctor's; here the command's serve options and rows.
    monkeypatch.setattr(
        _Doctor,
        "run",
        lambda self: DoctorReport(facts=facts, checks=(capability,), index_prefix=self.base),
    )
    return CliRunner().invoke(main, ["doctor", "--url", "http://fake:9200", *args])


def test_the_command_adds_the_serve_rows_and_never_prints_the_key(monkeypatch, serve, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# the engines' key\n{KEY}\n")
    fake = registered_opensearch(serve)
    args = ["--serve-url", serve.url, "--serve-api-key-file", str(keys)]
    as_json = cli(monkeypatch, opensearch_client(fake), *args, "--json")
    assert as_json.exit_code == 0, as_json.output
    checks = {c["capability"]: c["status"] for c in json.loads(as_json.stdout)["checks"]}
    assert checks == {"rank_features field": "ok", CAN_CALL: "ok", SERVE_ANSWERS: "ok",
                      SAME_VECTORS: "ok"}  # fmt: skip
    table = cli(monkeypatch, opensearch_client(fake), *args)
    assert table.exit_code == 0 and SAME_VECTORS in table.output, table.output
    serve.stop()
    down = cli(monkeypatch, opensearch_client(fake), *args)
    assert down.exit_code == 1 and "connection refused" in down.output
    for result in (as_json, table, down):
        assert KEY not in result.output


def test_the_command_needs_the_serve_url_for_a_key_file(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    fake = MlCommonsWithInference()
    result = cli(monkeypatch, opensearch_client(fake), "--serve-api-key-file", str(keys))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "--serve-url" in result.output
    assert fake.requests == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--serve-url", "ftp://serve"], ["--serve-url", "http(s)://HOST[:PORT]"]),
        (["--serve-url", "http://h:1", "--name", "Bad Name"], ["--name", "a-z, 0-9"]),
        (
            ["--serve-url", "http://h:1", "--serve-api-key-file", "{missing}"],
            ["--serve-api-key-file", "cannot read it"],
        ),
    ],
)
def test_bad_serve_options_are_one_line_usage_errors(monkeypatch, tmp_path, args, words):
    fake = MlCommonsWithInference()
    args = [a.replace("{missing}", str(tmp_path / "none")) for a in args]
    result = cli(monkeypatch, opensearch_client(fake), *args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert all(w in result.output for w in words), result.output
    assert fake.requests == []


def test_the_doctor_docstring_examples_run():
    result = doctest.testmod(importlib.import_module("splade_es.doctor"))
    assert result.attempted >= 2 and result.failed == 0
