"""The pipeline against a scripted in-process client: backpressure, accounting, fatal errors."""

from __future__ import annotations

import threading
import time

import pytest

from splade_es import SpladeEncoder
from splade_es.exceptions import AuthenticationError, ConfigurationError
from splade_es.ingest import IngestConfig, ingest, read_source


class SlowClient:
    """Just enough of a client for ``ingest``: an OpenSearch 2.19 with a rank_features index
    whose bulk endpoint takes ``delay`` seconds per request."""

    def __init__(self, delay: float = 0.0, fail_with: Exception | None = None) -> None:
        self.delay = delay
        self.fail_with = fail_with
        self.stored: dict[str, dict] = {}
        self.indices = self
        self._lock = threading.Lock()

    def info(self):
        return {"version": {"distribution": "opensearch", "number": "2.19.0"}}

    def exists(self, index):
        return True

    def get_mapping(self, index):
        return {index: {"mappings": {"properties": {"splade": {"type": "rank_features"}}}}}

    def bulk(self, body):
        if self.fail_with:
            raise self.fail_with
        time.sleep(self.delay)
        with self._lock:
            for action, source in zip(body[::2], body[1::2], strict=True):
                self.stored[action["index"]["_id"]] = source
        return {"items": [{"index": {"status": 201}} for _ in body[::2]]}


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    return SpladeEncoder.from_pretrained(str(tiny_bert_dir))


def documents(n):
    return [{"_id": f"d{i}", "text": f"tax code section {i}"} for i in range(n)]


def test_a_slow_cluster_holds_the_reader_back(encoder):
    client = SlowClient(delay=0.05)
    in_flight_max = 0
    counts = {"read": 0, "indexed": 0}
    lock = threading.Lock()

    def progress(stage, n):
        nonlocal in_flight_max
        with lock:
            if stage in counts:
                counts[stage] += n
            in_flight_max = max(in_flight_max, counts["read"] - counts["indexed"])

    config = IngestConfig(index="ix", batch_size=4, bulk_docs=10, workers=2)
    report = ingest(client, documents(600), encoder=encoder, config=config, progress=progress)
    assert report.indexed == 600 and len(client.stored) == 600
    # Bounded: three encoder windows (64 texts each: the one becoming bulk actions, the next,
    # made ahead, and the one after, read and tokenized) + queued, in-flight and held chunks
    # (4 + 2 + 1) of 10 + one partial chunk; far below the 600 documents a free-running reader
    # would reach.
    assert in_flight_max <= 3 * 64 + 8 * 10


def test_every_record_is_accounted_for(encoder, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"_id": "a", "text": "x"}\n{bad\n{"_id": "b", "text": ""}\n{"_id": "c", "text": "y"}\n'
    )
    client = SlowClient()
    report = ingest(
        client,
        read_source(path),
        encoder=encoder,
        config=IngestConfig(index="ix", dead_letter=str(tmp_path / "dead.jsonl")),
    )
    assert (report.read, report.indexed, report.dead_lettered) == (4, 2, 2)
    assert sorted(client.stored) == ["a", "c"]
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 2
    assert client.stored["a"]["splade"] and client.stored["a"]["id"] == "a"


def test_a_fatal_cluster_error_stops_the_job_with_our_error(encoder):
    import opensearchpy

    client = SlowClient(fail_with=opensearchpy.AuthenticationException(401, "unauthorized", {}))
    with pytest.raises(AuthenticationError):
        ingest(client, documents(50), encoder=encoder, config=IngestConfig(index="ix"))


def test_a_missing_index_is_refused_unless_asked_to_create_it(encoder):
    client = SlowClient()
    client.exists = lambda index: False
    with pytest.raises(ConfigurationError, match="does not exist"):
        ingest(client, documents(1), encoder=encoder, config=IngestConfig(index="ix"))


def test_parquet_input(encoder, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"_id": ["p1", "p2"], "text": ["garlic", "tax"]}), tmp_path / "in.parquet"
    )
    client = SlowClient()
    report = ingest(
        client,
        read_source(tmp_path / "in.parquet"),
        encoder=encoder,
        config=IngestConfig(index="ix"),
    )
    assert report.indexed == 2 and sorted(client.stored) == ["p1", "p2"]


def test_dead_letters_of_in_memory_records_keep_their_id_and_say_record(encoder, tmp_path):
    import json

    docs = [
        {"_id": "a", "text": "tax"},
        {"_id": "b", "title": 7},  # the id is read, the text is not
        "not a dict",
        {"_id": "d", "text": "code", "splade": {}},
    ]
    report = ingest(
        SlowClient(),
        docs,
        encoder=encoder,
        config=IngestConfig(index="ix", dead_letter=str(tmp_path / "dead.jsonl")),
    )
    assert report.dead_letter == str(tmp_path / "dead.jsonl") and report.dead_lettered == 3
    dead = {
        d["position"]: d
        for d in map(json.loads, (tmp_path / "dead.jsonl").read_text().splitlines())
    }
    assert dead[2]["id"] == "b" and dead[2]["reason"].startswith("record 2: field 'title' is int")
    assert dead[3]["id"] is None
    assert dead[3]["reason"].startswith("record 3: expected a JSON object")
    assert dead[4]["id"] == "d" and dead[4]["reason"].startswith("record 4: the document already")
    assert all("line" not in d["reason"] for d in dead.values())


def test_records_not_kept_anywhere_are_announced(encoder, caplog):
    with caplog.at_level("WARNING"):
        report = ingest(
            SlowClient(), [{"_id": "a"}], encoder=encoder, config=IngestConfig(index="ix")
        )
    assert report.dead_lettered == 1 and report.dead_letter is None
    assert "1 records were not indexed and are not kept anywhere" in caplog.text
