"""``splade-es serve`` end to end: the official opensearch-py client pointed at the proxy gets
the same hits and scores as ``search()`` against the cluster; everything else passes through
unchanged; errors come back as the client's usual exceptions."""

from __future__ import annotations

import gzip
import json
import logging

import opensearchpy
import pytest

from splade_es import SpladeEncoder, create_index, search
from splade_es.search import hits_of
from tests.integration.serve_support import (
    StubServer,
    forward_to,
    index_corpus,
    raw_request,
    running_proxy,
)

pytestmark = pytest.mark.integration

QUERIES = ["depreciation tax deduction", "brain white matter imaging", "sparse vector search"]
N_DOCS = 30


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture
def indexed(cluster, index_name, encoder):
    return index_corpus(cluster, index_name, encoder, N_DOCS)


@pytest.fixture
def proxy(cluster, encoder):
    with running_proxy(cluster.url, encoder) as app:
        yield app


def client_for(url: str, **options) -> opensearchpy.OpenSearch:
    return opensearchpy.OpenSearch(hosts=[url], max_retries=0, **options)


def pairs(hits) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in hits]


def test_official_client_through_proxy_equals_search(cluster, indexed, proxy, encoder):
    app_client = client_for(proxy.state.url)
    for text in QUERIES:
        direct = search(cluster.client, indexed, text, encoder=encoder, k=N_DOCS)
        assert direct.hits
        short = app_client.search(
            index=indexed, body={"query": {"splade": {"splade": text}}, "size": N_DOCS}
        )
        long = app_client.search(
            index=indexed,
            body={"query": {"splade": {"splade": {"query": text, "boost": 1.0}}}, "size": N_DOCS},
        )
        assert pairs(hits_of(short)) == pairs(direct.hits)
        assert pairs(hits_of(long)) == pairs(direct.hits)
    app_client.close()


def test_clause_inside_bool_with_filter_and_msearch(cluster, indexed, proxy, encoder):
    app_client = client_for(proxy.state.url)
    text = QUERIES[0]
    direct = search(
        cluster.client, indexed, text, encoder=encoder, k=N_DOCS, filters=[{"term": {"lang": "en"}}]
    )
    body = {
        "query": {
            "bool": {"must": [{"splade": {"splade": text}}], "filter": [{"term": {"lang": "en"}}]}
        },
        "size": N_DOCS,
    }
    assert pairs(hits_of(app_client.search(index=indexed, body=body))) == pairs(direct.hits)

    plain = {"query": {"match": {"title": "tax"}}, "size": 5}
    responses = app_client.msearch(
        body=[
            {"index": indexed},
            {"query": {"splade": {"splade": QUERIES[1]}}, "size": N_DOCS},
            {"index": indexed},
            plain,
        ]
    )["responses"]
    expected = search(cluster.client, indexed, QUERIES[1], encoder=encoder, k=N_DOCS)
    assert pairs(hits_of(responses[0])) == pairs(expected.hits)
    assert pairs(hits_of(responses[1])) == pairs(
        hits_of(cluster.client.search(index=indexed, body=plain))
    )
    app_client.close()


def test_malformed_clause_raises_the_clients_bad_request_error(indexed, proxy):
    app_client = client_for(proxy.state.url)
    with pytest.raises(opensearchpy.RequestError) as info:
        app_client.search(index=indexed, body={"query": {"splade": {"splade": {"qery": "x"}}}})
    assert info.value.status_code == 400
    assert info.value.error == "parsing_exception"
    assert "[qery]" in str(info.value.info)
    with pytest.raises(opensearchpy.RequestError) as info:
        app_client.search(index=indexed, body={"query": {"splade": {"title": "tax"}}})
    assert "no rank_features or sparse_vector field 'title'" in str(info.value.info)
    with pytest.raises(opensearchpy.NotFoundError):  # the cluster's own answer, relayed
        app_client.search(index="no-such-index", body={"query": {"splade": {"splade": "x"}}})
    app_client.close()


def test_non_search_requests_pass_through_unchanged(cluster, index_name, proxy):
    create_index(cluster.client, index_name, replicas=0)
    via = proxy.state.url
    doc = b'{"title": "tax law", "text": "deduction"}'
    json_headers = {"Content-Type": "application/json"}
    status, _, body = raw_request(
        via, "PUT", f"/{index_name}/_doc/a?refresh=true", doc, json_headers
    )
    assert status == 201 and json.loads(body)["result"] == "created"
    bulk = (
        f'{{"index":{{"_index":"{index_name}","_id":"b"}}}}\n{{"title":"b"}}\n'
        f'{{"index":{{"_index":"{index_name}","_id":"c"}}}}\n{{"title":"c"}}\n'
    ).encode()
    nd = {"Content-Type": "application/x-ndjson"}
    status, _, body = raw_request(via, "POST", "/_bulk?refresh=true", bulk, nd)
    assert status == 200 and not json.loads(body)["errors"]
    cluster.client.indices.put_alias(index=index_name, name=f"{index_name}-alias")
    for target in (
        f"/{index_name}/_doc/a",
        f"/{index_name}/_doc/b?_source_includes=title",
        f"/_cat/indices/{index_name}?format=json&h=index,docs.count",
        f"/_cat/indices/{index_name}?v",
        f"/{index_name}/_alias",
        "/_cat/aliases?format=json",
        f"/{index_name}/_doc/missing",
    ):
        direct = raw_request(cluster.url, "GET", target)
        proxied = raw_request(via, "GET", target)
        assert proxied[0] == direct[0], target
        assert proxied[2] == direct[2], target  # byte for byte
    head_direct = raw_request(cluster.url, "HEAD", f"/{index_name}")
    head_proxied = raw_request(via, "HEAD", f"/{index_name}")
    assert head_proxied[0] == head_direct[0] == 200
    length = [
        dict((k.lower(), v) for k, v in h[1]).get("content-length")
        for h in (head_direct, head_proxied)
    ]
    assert length[0] == length[1]


def test_passthrough_keeps_bytes_headers_and_compression(encoder):
    """Against a recording stub: the request the cluster sees and the response the app sees
    are the ones sent, compressed bodies included."""
    answer = gzip.compress(b'{"acknowledged":true}')

    def handler(request):
        return (
            200,
            [
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
                ("X-Opaque-Id", "abc"),
                ("Warning", '299 Elasticsearch "one"'),
                ("Warning", '299 Elasticsearch "two"'),
            ],
            answer,
        )

    with StubServer(handler) as stub, running_proxy(stub.url, encoder) as app:
        body = gzip.compress(b'{"index":{"_id":"1"}}\n{"a":1}\n')
        headers = {
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip",
            "Accept-Encoding": "gzip",
            "X-Opaque-Id": "req-7",
            "Authorization": "Basic dXNlcjpzZWNyZXQ=",
        }
        status, got_headers, got_body = raw_request(
            app.state.url, "POST", "/docs/_bulk?refresh=wait_for&pipeline=p%2F1", body, headers
        )
    assert status == 200
    assert got_body == answer  # still gzip: not decompressed on the way
    # The stub's headers, in order, repeats kept (names are case-insensitive in HTTP).
    assert [(k.lower(), v) for k, v in got_headers] == [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
        ("x-opaque-id", "abc"),
        ("warning", '299 Elasticsearch "one"'),
        ("warning", '299 Elasticsearch "two"'),
        ("content-length", str(len(answer))),
    ]
    [seen] = stub.requests
    assert (seen.method, seen.target, seen.body) == (
        "POST",
        "/docs/_bulk?refresh=wait_for&pipeline=p%2F1",
        body,
    )
    sent = {k.lower(): v for k, v in seen.headers}
    for name, value in headers.items():
        assert sent[name.lower()] == value


def test_authorization_reaches_the_cluster_and_never_the_logs(cluster, indexed, encoder, caplog):
    secret = "Basic YXBwOnMzY3JldC1wYXNzd29yZA=="  # app:s3cret-password
    caplog.set_level(logging.DEBUG)
    with (
        StubServer(forward_to(cluster.url, require=secret)) as gate,
        running_proxy(gate.url, encoder) as app,
    ):
        anonymous = client_for(app.state.url)
        with pytest.raises(opensearchpy.AuthenticationException):
            anonymous.search(index=indexed, body={"query": {"splade": {"splade": "tax"}}})
        authed = client_for(app.state.url, http_auth=("app", "s3cret-password"))
        result = authed.search(
            index=indexed, body={"query": {"splade": {"splade": QUERIES[0]}}, "size": 5}
        )
        assert hits_of(result)
        assert authed.get(index=indexed, id="doc-1")["found"]
    authed_requests = [
        r
        for r in gate.requests
        if ("authorization", secret) in [(k.lower(), v) for k, v in r.headers]
    ]
    assert any("/_search" in r.target for r in authed_requests)
    assert any(r.target == "/" for r in authed_requests)  # the proxy's facts reads, as the app
    access = [r.getMessage() for r in caplog.records if r.name == "splade_es.serve.access"]
    assert any("POST /" in line and "/_search -> 200" in line for line in access), access
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret" not in logged and "YXBwOnMz" not in logged


def test_cluster_going_away_gives_502_and_recovery(cluster, indexed, encoder):
    gate = StubServer(forward_to(cluster.url)).start()
    port = gate.port
    with running_proxy(gate.url, encoder) as app:
        app_client = client_for(app.state.url)
        body = {"query": {"splade": {"splade": QUERIES[0]}}, "size": 5}
        before = app_client.search(index=indexed, body=body)
        gate.stop()
        with pytest.raises(opensearchpy.TransportError) as info:
            app_client.search(index=indexed, body=body)
        assert info.value.status_code == 502
        reason = str(info.value.info)
        assert "cannot be reached" in reason and str(gate.port) not in reason  # no address
        status, _, health = raw_request(app.state.url, "GET", "/_splade/health")
        assert status == 503 and json.loads(health)["cluster"]["reachable"] is False
        gate = StubServer(forward_to(cluster.url), port=port).start()
        try:
            after = app_client.search(index=indexed, body=body)
            assert pairs(hits_of(after)) == pairs(hits_of(before))
            assert raw_request(app.state.url, "GET", "/_splade/health")[0] == 200
        finally:
            gate.stop()
        metrics = raw_request(app.state.url, "GET", "/_splade/metrics")[2].decode()
        assert "splade_es_upstream_errors_total 1.0" in metrics or (
            "splade_es_upstream_errors_total 2.0" in metrics
        )


def test_body_over_the_limit_is_413(cluster, encoder):
    with running_proxy(cluster.url, encoder, max_body_bytes=1000) as app:
        status, _, body = raw_request(
            app.state.url, "POST", "/x/_search", b" " * 2000, {"Content-Type": "application/json"}
        )
    assert status == 413
    assert json.loads(body)["error"]["type"] == "content_too_long_exception"


def test_an_msearch_body_without_its_final_newline_gets_the_engines_answer(cluster, indexed, proxy):
    """The engines refuse an _msearch body whose last line has no newline (400, "The msearch
    request must be terminated by a newline"; RestMultiSearchAction, checked on OpenSearch 2.19
    and 3.3). The proxy forwards it as it came instead of rewriting it into one they accept."""
    body = b'{}\n{"query": {"splade": {"splade": "tax depreciation"}}}'
    headers = {"Content-Type": "application/x-ndjson"}
    path = f"/{indexed}/_msearch"
    status, _, answer = raw_request(proxy.state.url, "POST", path, body, headers)
    direct_status, _, direct_answer = raw_request(cluster.url, "POST", path, body, headers)
    assert (status, json.loads(answer)) == (direct_status, json.loads(direct_answer))
    if not cluster.spec.is_emulator:
        assert status == 400
        assert "terminated by a newline" in json.loads(answer)["error"]["reason"]
