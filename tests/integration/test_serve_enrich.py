"""``splade-es serve --enrich``: documents apps index themselves, through the official
clients, get exactly the vectors ``splade-es ingest`` gives them.

Engine facts the write path rests on (checked here against the real node):
- bulk item metadata ``if_seq_no`` / ``if_primary_term`` make an ``index`` conditional
  (opensearch-project/OpenSearch 2.19 server/.../action/bulk/BulkRequestParser.java reads
  ``if_seq_no``/``if_primary_term`` for every action; elastic/elasticsearch the same since 6.7);
- ``_mget`` answers ``_seq_no``/``_primary_term`` for found documents (GetResult#toXContent);
- partial ``doc`` updates merge maps recursively and replace other values
  (XContentHelper#update, OpenSearch 2.19 and Elasticsearch 8/9 alike).
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import threading
import time

import elasticsearch
import elasticsearch.helpers
import opensearchpy
import opensearchpy.helpers
import pytest

from splade_es import SpladeEncoder, create_index
from splade_es.engines import dialect_of
from splade_es.ingest import IngestConfig, ingest
from splade_es.serve.enrich import EnrichConfig, EnrichRule
from splade_es.tokens import TokenCodec
from tests.integration.corpus import TOPICAL, make_documents
from tests.integration.serve_support import (
    StubServer,
    forward_to,
    free_port,
    raw_request,
    running_proxy,
)
from tests.integration.test_migrate import create_bm25_index, gate_data
from tests.vectors import assert_same_vector

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


def enrich(*patterns: str, **options) -> EnrichConfig:
    return EnrichConfig(rules=tuple(EnrichRule(p) for p in patterns), **options)


@pytest.fixture
def target(cluster, index_name):
    create_index(cluster.client, index_name, replicas=0)
    return index_name


@pytest.fixture
def proxy(cluster, encoder):
    with running_proxy(cluster.url, encoder, enrich=enrich("splade-es-test-*")) as app:
        yield app


def client_for(url: str, **options) -> opensearchpy.OpenSearch:
    return opensearchpy.OpenSearch(hosts=[url], **options)


def stored(cluster, index: str) -> dict[str, dict]:
    cluster.client.indices.refresh(index=index)
    body = {"size": 10_000, "query": {"match_all": {}}}
    hits = cluster.client.search(index=index, body=body)["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def ingested_vectors(cluster, index_name, encoder, docs) -> dict[str, dict[str, float]]:
    """What ``splade-es ingest`` writes for ``docs``, read back."""
    reference = f"{index_name}-ingest"
    ingest(
        cluster.client,
        [{**d, "_id": d["id"]} for d in docs],
        encoder=encoder,
        config=IngestConfig(index=reference, create=True, add_id_field=False),
    )
    try:
        return {i: s["splade"] for i, s in stored(cluster, reference).items()}
    finally:
        cluster.client.indices.delete(index=reference)


def assert_same_vectors(got: dict[str, float], want: dict[str, float]) -> None:
    # A document the proxy encodes inside a micro-batch and the same one encoded alone differ
    # by float32 rounding that depends on the batch's shape: the suite's one rule decides.
    assert_same_vector(got, want)


def test_bulk_helper_documents_get_the_vectors_ingest_gives(cluster, target, proxy, encoder):
    docs = make_documents(120, seed=3)
    app = client_for(proxy.state.url)
    actions = [{"_index": target, "_id": d["id"], "_source": d} for d in docs]
    indexed, errors = opensearchpy.helpers.bulk(app, actions, chunk_size=50)
    assert (indexed, errors) == (120, [])
    copies = stored(cluster, target)
    want = ingested_vectors(cluster, target, encoder, docs)
    assert sorted(copies) == sorted(want)
    for doc in docs:
        copy = copies[doc["id"]]
        assert {k: v for k, v in copy.items() if k != "splade"} == doc  # the app's fields as sent
        assert_same_vectors(copy["splade"], want[doc["id"]])
    metrics = raw_request(proxy.state.url, "GET", "/_splade/metrics")[2].decode()
    assert "splade_es_documents_enriched_total 120.0" in metrics


def vector_of(cluster, index: str, encoder, text: str) -> dict[str, float]:
    """The vector ``ingest`` writes for ``text`` into ``index`` (its codec, its encoder)."""
    codec = TokenCodec(encoder.vocab, scheme=dialect_of(cluster.client).key_scheme("rank_features"))
    return codec.encode(encoder.encode_documents([text]), 0)


def metric(app, name: str) -> float:
    text = raw_request(app.state.url, "GET", "/_splade/metrics")[2].decode()
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


def test_a_bad_document_gets_a_per_item_400_and_the_rest_land(cluster, target, proxy):
    docs = make_documents(20, seed=4)
    docs[7] = {**docs[7], "text": 42}  # not text
    docs[12] = {**docs[12], "title": " ", "text": None}  # no text at all
    app = client_for(proxy.state.url)
    actions = [{"_index": target, "_id": d["id"], "_source": d} for d in docs]
    results = list(opensearchpy.helpers.streaming_bulk(app, actions, raise_on_error=False))
    failed = {item["index"]["_id"]: item["index"] for ok, item in results if not ok}
    assert sorted(failed) == ["doc-12", "doc-7"]
    assert all(f["status"] == 400 for f in failed.values())
    reason = failed["doc-7"]["error"]["reason"]
    assert "document [doc-7]" in reason and "'text'" in reason and "int" in reason
    assert "document [doc-12]" in failed["doc-12"]["error"]["reason"]
    copies = stored(cluster, target)
    assert sorted(copies) == sorted(d["id"] for d in docs if d["id"] not in failed)
    assert all(c["splade"] for c in copies.values())
    assert metric(proxy, 'splade_es_enrich_item_errors_total{reason="encode"}') == 2


def test_passthrough_indexes_what_cannot_be_encoded_without_a_vector(cluster, target, encoder):
    options = {"enrich": enrich("splade-es-test-*", on_encode_error="passthrough")}
    with running_proxy(cluster.url, encoder, **options) as app:
        client = client_for(app.state.url)
        client.index(index=target, id="bad", body={"title": "x", "text": 42})
        client.index(index=target, id="good", body={"title": "tax law", "text": "income"})
    copies = stored(cluster, target)
    assert "splade" not in copies["bad"] and copies["good"]["splade"]


def test_single_document_calls(cluster, target, proxy, encoder):
    app = client_for(proxy.state.url)
    doc = {"title": "tax law", "text": "depreciation of rental property"}
    app.index(index=target, id="put", body=doc)
    app.create(index=target, id="create", body=doc)
    auto = app.index(index=target, body=doc)["_id"]  # POST /{index}/_doc
    with pytest.raises(opensearchpy.RequestError) as info:
        app.index(index=target, id="bad", body={"title": ["not", "text"]})
    assert info.value.status_code == 400
    assert "document [bad]" in info.value.info["error"]["reason"]
    assert "'title'" in info.value.info["error"]["reason"]
    with pytest.raises(opensearchpy.ConflictError):
        app.create(index=target, id="create", body=doc)  # the cluster's own 409, relayed
    want = vector_of(cluster, target, encoder, "tax law depreciation of rental property")
    copies = stored(cluster, target)
    assert sorted(copies) == sorted(["put", "create", auto])
    for copy_ in copies.values():
        assert_same_vectors(copy_["splade"], want)
    app.delete(index=target, id="put", refresh=True)  # deletes pass through
    assert "put" not in stored(cluster, target)


def test_other_indices_pass_through_untouched(cluster, index_name, encoder):
    other = f"{index_name}-plain"
    with running_proxy(cluster.url, encoder, enrich=enrich("nothing-matches-*")) as app:
        client_for(app.state.url).index(
            index=other, id="1", body={"title": "a", "text": "b"}, refresh=True
        )
    try:
        assert cluster.client.get(index=other, id="1")["_source"] == {"title": "a", "text": "b"}
    finally:
        cluster.client.indices.delete(index=other)


def test_partial_updates_recompute_the_vector_from_the_merged_document(
    cluster, target, proxy, encoder
):
    app = client_for(proxy.state.url)
    doc = {"title": "tax law", "text": "depreciation", "views": 1, "meta": {"a": 1, "b": 2}}
    app.index(index=target, id="1", body=doc, refresh=True)
    before = cluster.client.get(index=target, id="1")["_source"]["splade"]

    app.update(index=target, id="1", body={"doc": {"views": 2, "meta": {"b": 3}}})
    after = cluster.client.get(index=target, id="1")["_source"]
    assert after["views"] == 2 and after["meta"] == {"a": 1, "b": 3}
    assert after["splade"] == before  # no text field changed: forwarded untouched

    answer = app.update(index=target, id="1", body={"doc": {"text": "brain imaging"}})
    assert answer["result"] == "updated" and answer["_id"] == "1"
    after = cluster.client.get(index=target, id="1")["_source"]
    assert after["text"] == "brain imaging" and after["views"] == 2 and after["meta"]["a"] == 1
    assert_same_vectors(
        after["splade"], vector_of(cluster, target, encoder, "tax law brain imaging")
    )

    same = app.update(index=target, id="1", body={"doc": {"text": "brain imaging"}})
    assert same["result"] == "noop"

    created = app.update(
        index=target, id="new", body={"doc": {"title": "white matter"}, "doc_as_upsert": True}
    )
    assert created["result"] == "created"
    assert_same_vectors(
        cluster.client.get(index=target, id="new")["_source"]["splade"],
        vector_of(cluster, target, encoder, "white matter"),
    )
    with pytest.raises(opensearchpy.NotFoundError):
        app.update(index=target, id="missing", body={"doc": {"title": "x"}})

    with pytest.raises(opensearchpy.RequestError) as info:
        app.update(index=target, id="1", body={"script": {"source": "ctx._source.views += 1"}})
    assert "scripted update" in info.value.info["error"]["reason"]


def test_bulk_updates_keep_their_place_and_action_in_the_response(cluster, target, proxy, encoder):
    app = client_for(proxy.state.url)
    docs = make_documents(6, seed=5)
    opensearchpy.helpers.bulk(app, [{"_index": target, "_id": d["id"], "_source": d} for d in docs])
    actions = [
        {"_op_type": "update", "_index": target, "_id": "doc-0", "doc": {"text": "tax law"}},
        {"_op_type": "update", "_index": target, "_id": "doc-1", "doc": {"lang": "de"}},
        {"_op_type": "delete", "_index": target, "_id": "doc-2"},
        {"_op_type": "update", "_index": target, "_id": "doc-3", "script": {"source": "1"}},
        {"_op_type": "index", "_index": target, "_id": "doc-9", "title": "x", "text": "y"},
    ]
    results = list(opensearchpy.helpers.streaming_bulk(app, actions, raise_on_error=False))
    assert [next(iter(item)) for _, item in results] == [
        "update", "update", "delete", "update", "index"
    ]  # fmt: skip
    assert [ok for ok, _ in results] == [True, True, True, False, True]
    copies = stored(cluster, target)
    assert "doc-2" not in copies and copies["doc-1"]["lang"] == "de"
    assert_same_vectors(
        copies["doc-0"]["splade"],
        vector_of(cluster, target, encoder, f"{docs[0]['title']} tax law"),
    )


def test_a_concurrent_write_between_read_and_write_is_retried(cluster, target, encoder):
    """The proxy reads, merges and writes conditionally; a write landing in between (made
    here by a gate between proxy and cluster) makes the conditional write fail with 409,
    and the proxy merges again onto the newer version."""
    cluster.client.index(index=target, id="1", body={"title": "tax", "text": "law"}, refresh=True)
    relay = forward_to(cluster.url)
    interfered = []

    def handler(request):
        if request.target.startswith("/_bulk") and b"if_seq_no" in request.body and not interfered:
            interfered.append(True)
            cluster.client.update(index=target, id="1", body={"doc": {"views": 7}})
        return relay(request)

    with (
        StubServer(handler) as gate,
        running_proxy(gate.url, encoder, enrich=enrich("splade-es-test-*")) as app,
    ):
        client_for(app.state.url).update(index=target, id="1", body={"doc": {"text": "income"}})
        retries = metric(app, "splade_es_enrich_update_retries_total")
    assert interfered and retries == 1
    final = cluster.client.get(index=target, id="1")["_source"]
    assert final["views"] == 7 and final["text"] == "income"  # both writes kept
    assert_same_vectors(final["splade"], vector_of(cluster, target, encoder, "tax income"))


def test_elasticsearch_client_bulk_helper(cluster, target, encoder):
    docs = make_documents(30, seed=6)
    with (
        StubServer(forward_to(cluster.url, plain_json=True)) as gate,
        running_proxy(gate.url, encoder, enrich=enrich("splade-es-test-*")) as app,
    ):
        es = elasticsearch.Elasticsearch(app.state.url)
        actions = [{"_index": target, "_id": d["id"], "_source": d} for d in docs]
        assert elasticsearch.helpers.bulk(es, actions) == (30, [])
        es.index(index=target, id="single", document={"title": "tax", "text": "law"})
        es.update(index=target, id="single", doc={"text": "income"})
    # The update went out as a bulk whose media type asks for the same compatible-with
    # version as the client's Accept header: Elasticsearch 8/9 refuse a mismatch
    # (RestCompatibleVersionHelper).
    [update] = [r for r in gate.requests if r.target.startswith("/_bulk")][-1:]
    headers = {k.lower(): v for k, v in update.headers}
    assert headers["content-type"].startswith("application/vnd.elasticsearch+x-ndjson")
    assert (
        headers["content-type"].split("compatible-with=")[1]
        == (headers["accept"].split("compatible-with=")[1])
    )
    copies = stored(cluster, target)
    want = ingested_vectors(cluster, target, encoder, docs)
    assert len(copies) == 31
    assert_same_vectors(
        copies["single"]["splade"], vector_of(cluster, target, encoder, "tax income")
    )
    for doc in docs:
        assert_same_vectors(copies[doc["id"]]["splade"], want[doc["id"]])


def test_a_full_queue_answers_429_and_clients_retry_without_losing_documents(
    cluster, target, encoder
):
    gated = copy.copy(encoder)  # the same model; its document encoding waits for a signal
    go = threading.Event()

    def encode_documents(texts, **kwargs):
        go.wait(timeout=60)
        return encoder.encode_documents(texts, **kwargs)

    gated.encode_documents = encode_documents
    options = {"enrich": enrich("splade-es-test-*", max_queued_documents=8)}
    docs = make_documents(80, seed=8)
    with running_proxy(cluster.url, gated, **options) as app:
        first = [
            line
            for d in docs[:8]
            for line in (json.dumps({"index": {"_index": target, "_id": d["id"]}}), json.dumps(d))
        ]
        answer: list = []
        sender = threading.Thread(
            target=lambda: answer.append(
                raw_request(
                    app.state.url, "POST", "/_bulk", ("\n".join(first) + "\n").encode(),
                    {"Content-Type": "application/x-ndjson"},
                )
            )
        )  # fmt: skip
        sender.start()
        deadline = time.monotonic() + 30
        while metric(app, "splade_es_enrich_queue_documents") < 8:
            assert time.monotonic() < deadline, "the first bulk never reached the queue"
            time.sleep(0.01)
        client = client_for(app.state.url)
        with pytest.raises(opensearchpy.TransportError) as info:
            opensearchpy.helpers.bulk(
                client, [{"_index": target, "_id": "x", "_source": docs[9]}], max_retries=0
            )
        assert info.value.status_code == 429
        assert info.value.error == "es_rejected_execution_exception"
        go.set()
        sender.join(timeout=60)
        assert answer and answer[0][0] == 200

        # Many clients at once against the small queue: 429s, retried by the helper.
        def send(part):
            actions = [{"_index": target, "_id": d["id"], "_source": d} for d in part]
            opensearchpy.helpers.bulk(
                client_for(app.state.url), actions, chunk_size=8, max_retries=50,
                initial_backoff=0.05, max_backoff=0.5,
            )  # fmt: skip

        threads = [
            threading.Thread(target=send, args=(docs[8 + 18 * i : 26 + 18 * i],)) for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        rejected = metric(app, "splade_es_enrich_rejected_requests_total")
    assert rejected >= 1
    copies = stored(cluster, target)
    assert sorted(copies) == sorted(d["id"] for d in docs)
    assert all(c["splade"] for c in copies.values())


@pytest.mark.emulator_lacks(
    "the add-index-block API the final sync uses (PUT /<index>/_block/write)"
)
def test_writes_to_the_alias_get_vectors_after_a_migration_switch(cluster, index_name, encoder):
    from splade_es.migrate import Gate, MigrationConfig, migrate

    docs = make_documents(150, seed=9)
    alias, target_index = create_bm25_index(cluster.client, index_name, docs)
    with running_proxy(cluster.url, encoder, enrich=enrich(alias)) as app:
        client = client_for(app.state.url)
        client.index(index=alias, id="before", body={"title": "tax", "text": "law"})
        assert "splade" not in cluster.client.get(index=index_name, id="before")["_source"]
        queries, qrels = gate_data(docs)
        # The migration runs straight against the cluster, not through the proxy: the
        # proxy still believes the alias writes to the BM25 index.
        report = migrate(
            cluster.client,
            MigrationConfig(
                source=index_name,
                target=target_index,
                alias=alias,
                switch=True,
                gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=-1.0),
            ),
            encoder=encoder,
        )
        assert report.switched
        try:
            client.index(index=alias, id="after", body={"title": "brain", "text": "imaging"})
            opensearchpy.helpers.bulk(
                client, [{"_index": alias, "_id": f"bulk-{i}", "title": t, "text": t}
                         for i, t in enumerate(TOPICAL[:5])]
            )  # fmt: skip
            corrections = metric(app, "splade_es_enrich_corrections_total")
            after = cluster.client.get(index=target_index, id="after")["_source"]
            assert_same_vectors(
                after["splade"], vector_of(cluster, target_index, encoder, "brain imaging")
            )
            for i, t in enumerate(TOPICAL[:5]):
                got = cluster.client.get(index=target_index, id=f"bulk-{i}")["_source"]
                assert_same_vectors(
                    got["splade"], vector_of(cluster, target_index, encoder, f"{t} {t}")
                )
            assert corrections >= 1  # the first write after the switch was corrected
        finally:
            cluster.client.indices.delete(index=target_index, ignore_unavailable=True)


def start_serve(cluster, model_dir, port: int, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "splade_es.cli", "serve", "--url", cluster.url,
        "--model", str(model_dir), "--listen", f"127.0.0.1:{port}", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            if raw_request(f"http://127.0.0.1:{port}", "GET", "/_splade/health")[0] == 200:
                return process
        except OSError:
            pass
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.2)


def test_killed_mid_bulk_and_retried_with_the_same_ids_leaves_exact_counts(
    cluster, target, search_model_dir
):
    docs = make_documents(3000, seed=10)
    actions = [{"_index": target, "_id": d["id"], "_source": d} for d in docs]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(cluster, search_model_dir, port, "--enrich", "splade-es-test-*")
    failure: list[BaseException] = []

    def send() -> None:
        try:
            opensearchpy.helpers.bulk(client_for(url, max_retries=0), actions, chunk_size=250)
        except Exception as exc:  # the proxy dies under it
            failure.append(exc)

    sender = threading.Thread(target=send)
    try:
        sender.start()
        deadline = time.monotonic() + 120
        while True:  # some bulks have landed, the rest are on their way
            cluster.client.indices.refresh(index=target)
            if cluster.client.count(index=target)["count"] > 0:
                break
            assert time.monotonic() < deadline and sender.is_alive(), "nothing was indexed"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        sender.join(timeout=60)
        assert failure, "the bulk finished before the proxy was killed"
        cluster.client.indices.refresh(index=target)
        landed = cluster.client.count(index=target)["count"]
        assert 0 < landed < len(docs)

        # The app retries the whole job, same ids, through a restarted proxy.
        process = start_serve(cluster, search_model_dir, port, "--enrich", "splade-es-test-*")
        done, errors = opensearchpy.helpers.bulk(client_for(url), actions, chunk_size=250)
        assert (done, errors) == (len(docs), [])
    finally:
        process.kill()
        process.wait(timeout=30)
    copies = stored(cluster, target)
    assert len(copies) == len(docs) and sorted(copies) == sorted(d["id"] for d in docs)
    assert all(c["splade"] for c in copies.values())


def test_url_parameters_are_forwarded_and_routing_reaches_the_read(
    cluster, index_name, proxy, encoder
):
    # Routing required: a read or write that lost the routing fails instead of passing.
    target = index_name
    mappings = {"_routing": {"required": True}, "properties": {"splade": {"type": "rank_features"}}}
    cluster.client.indices.create(
        index=target, body={"settings": {"number_of_replicas": 0}, "mappings": mappings}
    )
    app = client_for(proxy.state.url)
    app.index(index=target, id="r", body={"title": "tax", "text": "law"}, routing="r1")
    app.update(
        index=target, id="r", body={"doc": {"text": "income"}}, routing="r1", refresh="wait_for"
    )
    # refresh=wait_for was forwarded: searchable without an explicit refresh.
    hits = cluster.client.search(index=target, body={"query": {"ids": {"values": ["r"]}}})
    [hit] = hits["hits"]["hits"]
    assert hit["_routing"] == "r1" and hit["_source"]["text"] == "income"
    assert_same_vectors(hit["_source"]["splade"], vector_of(cluster, target, encoder, "tax income"))
    # A bulk with routing in the URL: the update reads the routed document.
    body = "\n".join(
        json.dumps(line)
        for line in (
            {"update": {"_index": target, "_id": "r"}},
            {"doc": {"title": "brain"}},
        )
    )
    status, _, answer = raw_request(
        proxy.state.url,
        "POST",
        "/_bulk?routing=r1&refresh=true",
        (body + "\n").encode(),
        {"Content-Type": "application/x-ndjson"},
    )
    assert status == 200 and not json.loads(answer)["errors"], answer
    got = cluster.client.get(index=target, id="r", routing="r1")["_source"]
    assert_same_vectors(got["splade"], vector_of(cluster, target, encoder, "brain income"))


def test_what_cannot_be_merged_or_read_is_refused_not_indexed_without_a_vector(
    cluster, index_name, proxy, encoder
):
    """The review's cases: ids with an encoded '/', bodies that are not strict JSON, an
    update on an index without _source, an update setting only the vector, doc_as_upsert
    beside upsert, a bulk asking for YAML."""
    target = index_name
    cluster.client.indices.create(
        index=target,
        body={
            "settings": {"number_of_replicas": 0},
            "mappings": {"properties": {"splade": {"type": "rank_features"}}},
        },
    )
    url = proxy.state.url
    json_headers = {"Content-Type": "application/json"}
    # An id holding an encoded "/" (a URL as id) is still a document write.
    status, _, _ = raw_request(
        url, "PUT", f"/{target}/_doc/https%3A%2F%2Fex.com%2Fa", b'{"title":"tax law"}', json_headers
    )
    assert status == 201
    got = cluster.client.get(index=target, id="https://ex.com/a")["_source"]
    assert_same_vectors(got["splade"], vector_of(cluster, target, encoder, "tax law"))
    # A body the engine may read but strict JSON does not: refused, not forwarded bare.
    status, _, body = raw_request(
        url, "PUT", f"/{target}/_doc/c", b'{"title": "x", /* note */ "text": "y"}', json_headers
    )
    assert status == 400 and b"not a strict JSON object" in body
    # Not JSON at all: 415, never indexed without a vector.
    status, _, _ = raw_request(
        url, "PUT", f"/{target}/_doc/y", b"title: x\n", {"Content-Type": "application/yaml"}
    )
    assert status == 415
    # An update setting only the vector: the app's vector is replaced by the text's.
    app = client_for(url)
    app.update(index=target, id="https://ex.com/a", body={"doc": {"splade": {"evil": 99.0}}})
    got = cluster.client.get(index=target, id="https://ex.com/a")["_source"]
    assert "evil" not in got["splade"]
    # doc_as_upsert wins over upsert, as in the engines (UpdateHelper.prepareUpsert).
    app.update(
        index=target,
        id="u",
        body={
            "doc": {"title": "white matter"},
            "upsert": {"title": "other"},
            "doc_as_upsert": True,
        },
    )
    got = cluster.client.get(index=target, id="u")["_source"]
    assert got["title"] == "white matter"
    assert_same_vectors(got["splade"], vector_of(cluster, target, encoder, "white matter"))
    # A bulk asking for YAML still gets every item, in place (as JSON).
    lines = [
        {"index": {"_index": target, "_id": "ok"}},
        {"title": "tax"},
        {"index": {"_index": target, "_id": "bad"}},
        {"title": 5},
    ]
    status, _, body = raw_request(
        url,
        "POST",
        "/_bulk?format=yaml",
        ("\n".join(json.dumps(x) for x in lines) + "\n").encode(),
        {"Content-Type": "application/x-ndjson"},
    )
    items = json.loads(body)["items"]
    assert status == 200 and [i["index"]["_id"] for i in items] == ["ok", "bad"]
    assert [i["index"]["status"] for i in items] == [201, 400]


def test_an_update_on_an_index_without_source_is_refused(cluster, index_name, proxy):
    cluster.client.indices.create(
        index=index_name,
        body={
            "settings": {"number_of_replicas": 0},
            "mappings": {
                "_source": {"enabled": False},
                "properties": {"splade": {"type": "rank_features"}},
            },
        },
    )
    app = client_for(proxy.state.url)
    app.index(index=index_name, id="1", body={"title": "tax", "text": "law", "views": 1})
    with pytest.raises(opensearchpy.RequestError) as info:
        app.update(index=index_name, id="1", body={"doc": {"title": "new"}})
    assert info.value.error == "document_source_missing_exception"


def test_a_bulk_body_without_its_final_newline_gets_the_engines_answer(
    cluster, target, proxy, encoder
):
    """Both engines refuse it with 400 (BulkRequestParser: "The bulk request must be
    terminated by a newline", OpenSearch 2.19 and 3.3 checked on the real node; Elasticsearch
    8/9 the same). The proxy must not turn it into an accepted request by rewriting it."""
    body = b'{"index":{"_id":"n1"}}\n{"title":"Tax law","text":"Depreciation of rental property"}'
    headers = {"Content-Type": "application/x-ndjson"}
    path = f"/{target}/_bulk"
    status, _, answer = raw_request(proxy.state.url, "POST", path, body, headers)
    direct_status, _, direct_answer = raw_request(cluster.url, "POST", path, body, headers)
    assert status == direct_status
    if cluster.spec.is_emulator:
        return  # the emulator accepts it (it does not check the final newline)
    assert status == 400 and json.loads(answer) == json.loads(direct_answer)
    assert "terminated by a newline" in json.loads(answer)["error"]["reason"]
    assert stored(cluster, target) == {}


def test_a_data_stream_is_enriched_in_its_write_index(cluster, encoder):
    """A data stream's ``_mapping`` lists every backing index; the proxy resolves the write
    index (``GET /_data_stream/<name>``: backing indices oldest first, the write index last,
    in both engines) and writes each document once, with its vector."""
    if cluster.spec.is_emulator:
        pytest.skip("the emulator has no data streams")
    name = "splade-es-test-stream"
    template = {
        "index_patterns": [name + "*"],
        "data_stream": {},
        "template": {
            "settings": {"number_of_replicas": 0},
            "mappings": {
                "properties": {
                    "splade": {"type": "rank_features"},
                    "title": {"type": "text"},
                    "text": {"type": "text"},
                }
            },
        },
    }
    json_headers = {"Content-Type": "application/json"}
    put = raw_request(
        cluster.url, "PUT", f"/_index_template/{name}", json.dumps(template).encode(), json_headers
    )
    assert put[0] == 200, put[2]
    try:
        assert raw_request(cluster.url, "PUT", f"/_data_stream/{name}")[0] == 200
        rolled = raw_request(cluster.url, "POST", f"/{name}/_rollover")
        assert rolled[0] == 200, rolled[2]
        write_index = json.loads(rolled[2])["new_index"]
        docs = make_documents(6, seed=9)
        with running_proxy(cluster.url, encoder, enrich=enrich("splade-es-test-*")) as app:
            actions = [
                {
                    "_op_type": "create",
                    "_index": name,
                    "_source": {**d, "@timestamp": "2026-11-30T12:00:00Z"},
                }
                for d in docs
            ]
            done, errors = opensearchpy.helpers.bulk(client_for(app.state.url), actions)
            assert (done, errors) == (6, [])
            assert metric(app, "splade_es_enrich_corrections_total") == 0  # written once
        raw_request(cluster.url, "POST", f"/{name}/_refresh")
        search = raw_request(
            cluster.url,
            "POST",
            f"/{name}/_search",
            json.dumps({"size": 10, "query": {"match_all": {}}}).encode(),
            json_headers,
        )
        hits = json.loads(search[2])["hits"]["hits"]
        assert len(hits) == 6
        assert {hit["_index"] for hit in hits} == {write_index}
        assert all(hit["_source"].get("splade") for hit in hits)
    finally:
        raw_request(cluster.url, "DELETE", f"/_data_stream/{name}")
        raw_request(cluster.url, "DELETE", f"/_index_template/{name}")
