"""serve's workbench routes without a cluster: the page and its assets are static and open,
the JSON endpoints (they encode) follow serve's API-key rules, take JSON only, and write
judgments to the configured file only."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from splade_es.api_keys import ApiKeys
from splade_es.beir import read_qrels
from splade_es.serve import create_app
from splade_es.workbench.configurations import parse_configurations
from splade_es.workbench.judgments import Judgments, new_query_id
from splade_es.workbench.ui import WorkbenchSettings
from tests.unit.test_api_keys import FIRST, KEYS, FakeEncoder, FakeUpstream, config

JSON_ROUTES = [
    ("/_splade/ui/settings", {}),
    ("/_splade/ui/search", {"q": "tax code", "index": "docs"}),
    ("/_splade/ui/judge", {"q": "tax code", "id": "d1", "relevance": 1, "runs": {}}),
]


def client_for(tmp_path, **options: Any) -> Iterator[tuple[TestClient, FakeUpstream]]:
    app = create_app(config(**options), encoder=FakeEncoder())
    upstream = FakeUpstream()
    app.state.service.upstream.request = upstream.request
    app.state.service.upstream.get_json = upstream.get_json
    app.state.workbench = WorkbenchSettings(
        configurations=parse_configurations(["bm25", "splade"]),
        index="docs",
        judgments=Judgments(tmp_path / "judgments.tsv"),
    )
    with TestClient(app) as client:
        yield client, upstream


@pytest.fixture
def gated(tmp_path) -> Iterator[tuple[TestClient, FakeUpstream]]:
    yield from client_for(tmp_path, api_keys=ApiKeys.parse(KEYS))


@pytest.fixture
def open_client(tmp_path) -> Iterator[tuple[TestClient, FakeUpstream]]:
    yield from client_for(tmp_path)


def test_the_page_and_its_assets_are_static_and_open(gated):
    client, upstream = gated
    page = client.get("/_splade/ui?index=docs&q=tax")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'data-testid="query-input"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another site
    script = client.get("/_splade/ui/assets/workbench.js")
    assert script.status_code == 200 and "textContent" in script.text
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text
    assert client.get("/_splade/ui/assets/workbench.css").status_code == 200
    for name in ("ui.py", "workbench.html", "__init__.py"):
        assert client.get(f"/_splade/ui/assets/{name}").status_code == 404
    assert not upstream.forwarded  # nothing reached the cluster
    # A path that is not an asset name is no asset route: it is the proxy's (the cluster's).
    escaped = client.get("/_splade/ui/assets/..%2Fui.py")
    assert "class Workbench" not in escaped.text and upstream.forwarded


@pytest.mark.parametrize(("path", "body"), JSON_ROUTES)
def test_the_json_endpoints_need_a_key(gated, path, body, tmp_path):
    client, upstream = gated
    assert client.post(path, json=body).status_code == 401
    assert client.post(path, json=body, headers={"Authorization": "Bearer no"}).status_code == 403
    assert not upstream.forwarded and not (tmp_path / "judgments.tsv").exists()
    answer = client.post(path, json=body, headers={"Authorization": f"Bearer {FIRST}"})
    assert answer.status_code == 200, answer.text
    # serve's own key is never sent on to the cluster.
    assert all("authorization" not in headers for _, headers in upstream.forwarded)


def test_search_answers_every_column(open_client):
    client, upstream = open_client
    answer = client.post("/_splade/ui/search", json={"q": "tax code"})
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert [c["label"] for c in out["columns"]] == ["bm25", "splade"]
    assert out["index"] == "docs" and out["ndcg"] == {"bm25": None, "splade": None}
    assert [target for target, _ in upstream.forwarded] == ["/docs/_search", "/docs/_search"]
    tokens = out["columns"][1]["query_tokens"]
    assert {t["token"] for t in tokens} == {"tax", "code"}
    refused = client.post("/_splade/ui/search", json={"q": "tax", "configs": ["bm25"]})
    assert refused.status_code == 400 and "compare 2 to 4" in refused.text


def test_judgments_go_to_the_configured_file_only(open_client, tmp_path):
    client, _ = open_client
    body = {
        "q": "tax code",
        "id": "d1",
        "relevance": 1,
        "runs": {"bm25": [{"id": "d2", "score": 2.0}, {"id": "d1", "score": 1.0}]},
        "qrels": str(tmp_path / "elsewhere.tsv"),  # not a field: ignored
        "path": "/etc/passwd",
    }
    answer = client.post("/_splade/ui/judge", json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["judgments"] == {"d1": 1} and 0 < out["ndcg"]["bm25"] < 1
    assert read_qrels(tmp_path / "judgments.tsv") == {new_query_id("tax code"): {"d1": 1}}
    assert out["qrels"] == "judgments.tsv"  # the file's name, not where it is
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "judgments.queries.jsonl",
        "judgments.tsv",
    ]


JSON = "application/json"
BAD_JUDGMENTS = [
    ("text/plain", b'{"q": "t", "id": "d1", "relevance": 1}', "Content-Type: application/json"),
    ("application/x-www-form-urlencoded", b"q=t&id=d1", "Content-Type: application/json"),
    (JSON, b'{"q": "t", "id": "d1", "relevance": true}', "integer or null"),
    (JSON, b'{"q": " ", "id": "d1", "relevance": 1}', "[q]"),
    (JSON, b'{"q": "t", "id": "a\\tb", "relevance": 1}', "tabs"),
]


@pytest.mark.parametrize(("kind", "body", "message"), BAD_JUDGMENTS)
def test_bad_judgments_write_nothing(open_client, tmp_path, kind, body, message):
    client, _ = open_client
    answer = client.post("/_splade/ui/judge", content=body, headers={"Content-Type": kind})
    assert answer.status_code == 400 and message in answer.json()["error"]["reason"]
    assert not (tmp_path / "judgments.tsv").exists()


def test_judging_off_without_a_qrels_file(tmp_path):
    app = create_app(config(), encoder=FakeEncoder())
    app.state.workbench = WorkbenchSettings(configurations=parse_configurations(["bm25", "splade"]))
    with TestClient(app) as client:
        answer = client.post("/_splade/ui/judge", json={"q": "t", "id": "d1", "relevance": 1})
        assert answer.status_code == 400 and "judging is off" in answer.text
        settings = client.post("/_splade/ui/settings", json={}).json()
        assert settings["qrels"] is None and settings["configs"] == ["bm25", "splade"]


@pytest.mark.parametrize("own", [False, True])
def test_searches_never_borrow_serves_cluster_credentials(tmp_path, own):
    from splade_es.connect import ConnectionConfig
    from splade_es.serve import ServeConfig

    connection = ConnectionConfig(hosts=("http://127.0.0.1:9",), username="serve", password="pw")
    app = create_app(ServeConfig(connection=connection), encoder=FakeEncoder())
    upstream = FakeUpstream()
    app.state.service.upstream.request = upstream.request
    app.state.service.upstream.get_json = upstream.get_json
    app.state.workbench = WorkbenchSettings(
        configurations=parse_configurations(["bm25", "splade"]), index="docs", own_credentials=own
    )
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:  # as compare --ui
        answer = client.post("/_splade/ui/search", json={"q": "tax code"})
        assert answer.status_code == 200, answer.text
        caller = {"Authorization": "Basic Y2FsbGVyOnNlY3JldA=="}
        assert client.post("/_splade/ui/search", json={"q": "tax"}, headers=caller).is_success
    sent = [headers.get("authorization") for _, headers in upstream.forwarded]
    serve_auth = app.state.service.upstream.own_auth
    assert serve_auth and len(sent) == 4
    if own:  # compare --ui: the user's own process and credentials
        assert sent == [serve_auth] * 4
    else:  # the page's caller's credentials, as the proxy forwards them, or none
        assert sent == [None, None, caller["Authorization"], caller["Authorization"]]


SAME = {"Host": "127.0.0.1:8765", "Origin": "http://127.0.0.1:8765"}
CROSS_SITE = [
    {"Origin": "http://evil.example"},  # another site's page
    {"Origin": "http://testserver.evil.example"},
    {"Origin": "http://testserver:8080"},  # another port
    {"Origin": "http://testserver:443"},  # not the Host's port (none: 80)
    {"Origin": "null"},  # a sandboxed or file: page
    {"Sec-Fetch-Site": "cross-site"},
]


@pytest.mark.parametrize("headers", CROSS_SITE)
@pytest.mark.parametrize(("path", "body"), JSON_ROUTES)
def test_requests_from_another_site_are_refused(open_client, tmp_path, path, body, headers):
    client, upstream = open_client
    answer = client.post(path, json=body, headers=headers)
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["type"] == "security_exception" and "another site" in error["reason"]
    assert not upstream.forwarded and not (tmp_path / "judgments.tsv").exists()
    # The page's own requests (same origin, or no Origin at all) go through.
    for same in ({"Origin": "http://testserver"}, {"Sec-Fetch-Site": "same-origin"}, {}):
        assert client.post(path, json=body, headers=same).status_code == 200


REBOUND = ("evil.example:8765", "evil.example", "127.0.0.1.evil.example:8765", "")


def test_a_rebound_name_never_reaches_compare_uis_credentials(tmp_path):
    app = create_app(config(), encoder=FakeEncoder())
    upstream = FakeUpstream()
    app.state.service.upstream.request = upstream.request
    app.state.service.upstream.get_json = upstream.get_json
    app.state.workbench = WorkbenchSettings(
        configurations=parse_configurations(["bm25", "splade"]),
        index="docs",
        judgments=Judgments(tmp_path / "judgments.tsv"),
        own_credentials=True,
    )
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        for (path, body), host in itertools.product(JSON_ROUTES, REBOUND):
            # With or without an Origin (the rebound page is "same-origin" to the browser):
            # the Host is not a loopback name.
            for headers in ({"Host": host}, {"Host": host, "Origin": f"http://{host}"}):
                answer = client.post(path, json=body, headers=headers)
                assert answer.status_code == 403, answer.text
                reason = answer.json()["error"]["reason"]
                assert "127.0.0.1, localhost or [::1]" in reason or "Origin" in headers
        assert not upstream.forwarded and not (tmp_path / "judgments.tsv").exists()
        for path, body in JSON_ROUTES:
            for host in ("127.0.0.1:8765", "localhost:9000", "[::1]:80", "LOCALHOST:1"):
                headers = {"Host": host, "Origin": f"http://{host}"}
                assert client.post(path, json=body, headers=headers).status_code == 200
            assert client.post(path, json=body, headers=SAME).status_code == 200
    # Without own credentials (serve), any name serve is reached by is fine when same-origin.
    settings = app.state.workbench
    app.state.workbench = WorkbenchSettings(
        configurations=settings.configurations, index="docs", judgments=settings.judgments
    )
    with TestClient(app, base_url="http://search.example") as client:
        assert client.post("/_splade/ui/settings", json={}).status_code == 200
        headers = {"Origin": "http://search.example"}
        assert client.post("/_splade/ui/settings", json={}, headers=headers).status_code == 200
