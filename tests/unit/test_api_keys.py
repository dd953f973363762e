"""Access control of ``splade-es serve`` (issue 23): the API key file (``serve/auth.py``
``ApiKeys``), the keys checked on exactly the endpoints that encode (401 without a key, 403 with
a wrong one; health, metrics and the proxy open), keys never shown, and the rule that serve
listens beyond loopback only with keys or ``--allow-unauthenticated`` (library and CLI)."""

from __future__ import annotations

import doctest
import hmac
import logging
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import splade_es.api_keys as auth
from splade_es.api_keys import ApiKeys, bearer_credential, is_loopback, require_access_control
from splade_es.cli import main
from splade_es.connect import ConnectionConfig
from splade_es.exceptions import ConfigurationError
from splade_es.serve import create_app
from splade_es.serve.service import ServeConfig
from splade_es.serve.upstream import UpstreamResponse
from splade_es.sparse import SparseBatch, Vocabulary

KEYS = "# the engines' keys\nk3y-for-opensearch-0123456789\n\n  k3y-for-elastic-9876543210  \n"
FIRST, SECOND = "k3y-for-opensearch-0123456789", "k3y-for-elastic-9876543210"
VOCAB = Vocabulary(["[PAD]", "tax", "code", "section"], special_ids={0})


# ---------------------------------------------------------------------- the key file
def test_keys_one_per_line_without_blanks_and_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(KEYS)
    keys = ApiKeys.load(path)
    assert len(keys) == 2 and keys.first == FIRST
    assert keys.check(f"Bearer {FIRST}") == keys.check(f"bearer {SECOND}") == "ok"
    assert repr(keys) == "ApiKeys(2 keys)" and FIRST not in repr(keys) + str(keys)
    assert repr(ApiKeys.parse("solo")) == "ApiKeys(1 key)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key"),
        ("# only a comment\n\n   \n", "holds no key"),
        ("good-key\nbad key with spaces\n", "line 2 has whitespace inside its key"),
    ],
)
def test_a_key_file_without_keys_is_refused(tmp_path, text, message):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message) as info:
        ApiKeys.load(path)
    assert "bad key" not in str(info.value)  # never a key in the message
    assert str(path) in str(info.value)


def test_an_unreadable_key_file_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read it"):
        ApiKeys.load(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="cannot read it"):
        ApiKeys.load(tmp_path)  # a folder
    with pytest.raises(ConfigurationError):
        ApiKeys(())


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Bearer", "missing"),
        ("Bearer   ", "missing"),
        ("Basic YXBwOnNlY3JldA==", "missing"),  # the cluster's credentials, not a serve key
        (f"Token {FIRST}", "missing"),
        (f"Bearer {FIRST}", "ok"),
        (f"BEARER  {SECOND} ", "ok"),
        ("Bearer nope", "wrong"),
        (f"Bearer {FIRST[:-1]}", "wrong"),  # a prefix
        (f"Bearer {FIRST}0", "wrong"),  # a longer key
        (f"Bearer {FIRST.upper()}", "wrong"),  # keys are case-sensitive
    ],
)
def test_check(header, verdict):
    assert ApiKeys.parse(KEYS).check(header) == verdict


def test_every_key_is_compared_in_constant_time(monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ApiKeys.parse(KEYS)
    assert keys.check(f"Bearer {FIRST}") == "ok"
    assert [b for _, b in compared] == [FIRST.encode(), SECOND.encode()]  # none skipped


def test_bearer_credential():
    assert bearer_credential("Bearer abc") == "abc"
    assert bearer_credential("Basic abc") is None


def test_module_docstring_examples_run():
    result = doctest.testmod(auth)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- loopback rule
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("serve.internal", False),  # a name is not resolved: it counts as reachable
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_beyond_loopback_needs_keys_or_an_explicit_allowance():
    keys = ApiKeys.parse(KEYS)
    with pytest.raises(ConfigurationError, match="api-key-file") as info:
        require_access_control("0.0.0.0", None)
    assert info.value.option == "listen"
    require_access_control("0.0.0.0", keys)
    require_access_control("0.0.0.0", None, allow_unauthenticated=True)
    require_access_control("127.0.0.1", None)
    with pytest.raises(ConfigurationError, match="allow-unauthenticated"):
        config(listen_host="10.0.0.5")
    with pytest.raises(ConfigurationError):
        create_app(config(listen_host="0.0.0.0"), encoder=FakeEncoder())
    assert config(listen_host="10.0.0.5", api_keys=keys).api_keys is keys
    assert config(listen_host="10.0.0.5", allow_unauthenticated=True).api_keys is None
    assert config().listen_host is None  # not told where it listens: nothing to check
    assert FIRST not in repr(config(api_keys=keys))


# ---------------------------------------------------------------------- the gated app
class FakeEncoder:
    """An ``Encoder``: each known word of a query weighs its position in VOCAB."""

    name = "fake/encoder"
    vocab = VOCAB

    def encode_queries(self, texts: Sequence[str], **options: Any) -> SparseBatch:
        rows = []
        for text in texts:
            ids = sorted({VOCAB.index(w) for w in text.split() if w in VOCAB})
            rows.append((np.asarray(ids, np.int64), np.asarray(ids, np.float32)))
        return SparseBatch.from_rows(rows, vocab=VOCAB, truncated=np.zeros(len(texts), bool))


class FakeUpstream:
    """The cluster: each forwarded request and each facts read recorded, with the
    ``Authorization`` it carried."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[str, dict[str, str]]] = []
        self.reads: list[tuple[str, str | None]] = []

    async def request(self, method: str, target: str, headers: Any, body: bytes = b"") -> Any:
        self.forwarded.append((target, {k.lower(): v for k, v in headers}))
        return UpstreamResponse(200, [("content-type", "application/json")], b'{"hits":{}}')

    async def get_json(self, target: str, authorization: str | None = None) -> Any:
        self.reads.append((target, authorization))
        if target == "/":
            body: dict[str, Any] = {"version": {"number": "9.1.0"}, "tagline": "You Know"}
        elif "_mapping" in target:
            body = {"docs": {"mappings": {"properties": {"splade": {"type": "sparse_vector"}}}}}
        else:
            body = {}
        return UpstreamResponse(200, [], b"{}"), body


def config(**options: Any) -> ServeConfig:
    return ServeConfig(connection=ConnectionConfig(hosts=("http://127.0.0.1:9",)), **options)


@pytest.fixture
def gated() -> Iterator[tuple[TestClient, FakeUpstream]]:
    app = create_app(config(api_keys=ApiKeys.parse(KEYS)), encoder=FakeEncoder())
    upstream = FakeUpstream()
    app.state.service.upstream.request = upstream.request
    app.state.service.upstream.get_json = upstream.get_json
    with TestClient(app) as client:
        yield client, upstream


# Each endpoint that encodes, with a request it answers 200.
ENCODING = [
    ("/_splade/embed/query", {"inputs": ["tax code"]}),
    ("/_splade/embed/document", {"inputs": ["tax code"]}),
    ("/_splade/encode", {"texts": ["tax code"]}),
    ("/_splade/query", {"text": "tax code", "index": "docs"}),
    ("/embed_sparse", {"inputs": "tax code"}),
]


@pytest.mark.parametrize(("path", "body"), ENCODING)
def test_the_encoding_endpoints_need_a_key(gated, path, body):
    client, _ = gated
    missing = client.post(path, json=body)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    error = missing.json()
    assert error["status"] == 401 and error["error"]["type"] == "security_exception"
    assert "Authorization: Bearer" in error["error"]["reason"]
    basic = client.post(path, json=body, headers={"Authorization": "Basic YXBwOnNlY3JldA=="})
    assert basic.status_code == 401
    wrong = client.post(path, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "WWW-Authenticate" not in wrong.headers
    assert wrong.json()["error"]["type"] == "security_exception"
    assert FIRST not in missing.text + wrong.text


@pytest.mark.parametrize(("path", "body"), [e for e in ENCODING if "document" not in e[0]])
def test_a_key_lets_the_request_through(gated, path, body):
    client, _ = gated
    answer = client.post(path, json=body, headers={"Authorization": f"Bearer {SECOND}"})
    assert answer.status_code == 200, answer.text


def test_health_metrics_and_the_proxy_stay_open(gated):
    client, upstream = gated
    assert client.get("/_splade/health").status_code == 200
    assert client.get("/_splade/metrics").status_code == 200
    app_credentials = {"Authorization": "Basic YXBwOnNlY3JldA=="}
    answer = client.post("/docs/_doc/1", json={"title": "x"}, headers=app_credentials)
    assert answer.status_code == 200
    # The app's own credentials reach the cluster as before: the cluster authenticates them.
    target, headers = upstream.forwarded[-1]
    assert target == "/docs/_doc/1" and headers["authorization"] == "Basic YXBwOnNlY3JldA=="


def test_the_serve_key_never_reaches_the_cluster(gated):
    client, upstream = gated
    answer = client.post(
        "/_splade/query",
        json={"text": "tax code", "index": "docs"},
        headers={"Authorization": f"Bearer {FIRST}"},
    )
    assert answer.status_code == 200, answer.text
    assert upstream.reads and all(auth is None for _, auth in upstream.reads)


def test_without_keys_nothing_changes():
    app = create_app(config(), encoder=FakeEncoder())
    upstream = FakeUpstream()
    app.state.service.upstream.get_json = upstream.get_json
    with TestClient(app) as client:
        assert client.post("/_splade/embed/query", json={"inputs": ["tax"]}).json() == [
            {"tax": 1.0}
        ]
        answer = client.post(
            "/_splade/query",
            json={"text": "tax code", "index": "docs"},
            headers={"Authorization": "Basic YXBwOnNlY3JldA=="},
        )
    assert answer.status_code == 200
    # Without keys, Authorization is the app's cluster credential, used for the facts as before.
    assert ("/docs/_mapping", "Basic YXBwOnNlY3JldA==") in upstream.reads


def test_refusals_are_counted_and_logged_without_the_key(gated, caplog):
    client, _ = gated
    caplog.set_level(logging.DEBUG)
    client.post("/_splade/embed/query", json={"inputs": ["tax"]})
    client.post(
        "/_splade/embed/query", json={"inputs": ["tax"]}, headers={"Authorization": "Bearer x"}
    )
    client.post(
        "/_splade/embed/query", json={"inputs": ["tax"]}, headers={"Authorization": "Bearer x"}
    )
    client.post(
        "/_splade/embed/query",
        json={"inputs": ["tax"]},
        headers={"Authorization": f"Bearer {FIRST}"},
    )
    metrics = client.get("/_splade/metrics").text
    assert 'splade_es_auth_refused_requests_total{reason="missing"} 1.0' in metrics
    assert 'splade_es_auth_refused_requests_total{reason="wrong"} 2.0' in metrics
    assert 'splade_es_requests_total{route="embed_query",status="4xx"} 3.0' in metrics
    assert 'splade_es_requests_total{route="embed_query",status="2xx"} 1.0' in metrics
    assert "POST /_splade/embed/query -> 403" in caplog.text  # the access log
    assert FIRST not in caplog.text and FIRST not in metrics


# ---------------------------------------------------------------------- the command
@pytest.fixture
def started(monkeypatch) -> list[ServeConfig]:
    """The configs ``splade-es serve`` would start with (nothing is started)."""
    import splade_es.serve

    configs: list[ServeConfig] = []
    monkeypatch.setattr(splade_es.serve, "create_app", lambda config: stand_in_app(configs, config))
    monkeypatch.setattr("uvicorn.run", lambda app, **options: None)
    return configs


def public() -> str:
    """``--listen`` on every interface, at a port free now."""
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return f"0.0.0.0:{probe.getsockname()[1]}"


def serve(*options: str, env: dict[str, str] | None = None) -> Any:
    command = ["serve", "--url", "http://127.0.0.1:9", "--model", "m", *options]
    return CliRunner().invoke(main, command, env=env)


def test_the_command_refuses_a_public_address_without_keys(started):
    result = serve("--listen", public())
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--listen" in lines[0] and "--api-key-file" in lines[0]
    assert "Traceback" not in result.output and started == []


def test_the_command_takes_keys_from_the_option_or_the_environment(started, tmp_path: Path):
    path = tmp_path / "keys"
    path.write_text(KEYS)
    result = serve("--listen", public(), "--api-key-file", str(path))
    assert result.exit_code == 0, result.output
    assert len(started[-1].api_keys) == 2 and started[-1].listen_host == "0.0.0.0"
    printed = " ".join(result.output.split())  # the console wraps long lines
    assert "2 API key(s) accepted" in printed and FIRST not in printed
    result = serve("--listen", public(), env={"SPLADE_ES_API_KEY_FILE": str(path)})
    assert result.exit_code == 0, result.output
    assert started[-1].api_keys.first == FIRST
    result = serve("--listen", public(), "--allow-unauthenticated")
    assert result.exit_code == 0 and started[-1].api_keys is None
    result = serve()  # loopback, the default
    assert result.exit_code == 0 and started[-1].api_keys is None
    assert "no API key required" in " ".join(result.output.split())


@pytest.mark.parametrize(("text", "message"), [(None, "cannot read it"), ("\n", "no key")])
def test_the_command_refuses_a_bad_key_file(started, tmp_path, text, message):
    path = tmp_path / "keys"
    if text is not None:
        path.write_text(text)
    result = serve("--api-key-file", str(path))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert started == []


def test_the_command_help_names_the_options():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for text in ("--api-key-file", "--allow-unauthenticated", "/_splade/embed/document"):
        assert text in result.output


def stand_in_app(configs: list, config) -> SimpleNamespace:
    """What ``create_app`` returns, for a command test that starts nothing: the config is
    kept, and the app has a ``state`` the command can set."""
    configs.append(config)
    return SimpleNamespace(state=SimpleNamespace())
