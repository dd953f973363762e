"""The stages ``ingest`` composes (``splade_es.ingest.stages``), each alone: a fake encoder,
a fake client and in-memory records stand in for the model, the cluster and the input."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np
import opensearchpy
import pytest
from click.testing import CliRunner

from splade_es.cli import main
from splade_es.exceptions import AuthenticationError, InputError, InputStreamError
from splade_es.ingest.bulk import BulkOutcome, Failure, make_action
from splade_es.ingest.checkpoint import Checkpoint, CheckpointState
from splade_es.ingest.pipeline import IngestConfig, document_rule
from splade_es.ingest.sources import Prepared, Record, input_size, read_source
from splade_es.ingest.stages import (
    BreakableInput,
    IndexChunk,
    JobLedger,
    LongDocumentTally,
    SenderPool,
    encoded_windows,
    made_ahead,
    passage_actions,
    prepared_records,
    records_to_index,
    until,
    window_actions,
)
from splade_es.retry import RetryPolicy
from splade_es.sparse import PassageBatch, SparseBatch, Vocabulary
from splade_es.tokens import TokenCodec

VOCAB = ["[PAD]", "tax", "code", "section"]


class FakeEncoder:
    """Windows of ``window`` texts; a text's vector has weight 1.0 on each vocabulary word
    it contains, so a row can be matched to its text."""

    vocab = VOCAB
    name = "fake"

    def __init__(self, window: int = 3) -> None:
        self.window = window
        self.pulled: list[str] = []

    def iter_encode(self, texts: Iterable[str], *, batch_size: int, empty: str) -> Iterator:
        assert empty == "empty_vector"
        chunk: list[str] = []
        for text in texts:
            self.pulled.append(text)
            chunk.append(text)
            if len(chunk) == self.window:
                yield self._batch(chunk)
                chunk = []
        if chunk:
            yield self._batch(chunk)

    def _batch(self, texts: list[str]) -> SparseBatch:
        rows = []
        for text in texts:
            ids = [i for i, token in enumerate(VOCAB) if token in text.split()]
            rows.append((ids, [1.0] * len(ids)))
        return SparseBatch.from_rows(rows, vocab=VOCAB)


def config(tmp_path, **overrides) -> IngestConfig:
    options = {
        "index": "ix",
        "checkpoint": str(tmp_path / "job.ck"),
        "dead_letter": str(tmp_path / "dead.jsonl"),
        "input_name": "in.jsonl",
    }
    return IngestConfig(**{**options, **overrides})


def records(n: int) -> list[Record]:
    return [Record(i, {"_id": f"d{i}", "text": f"tax code {i}"}) for i in range(1, n + 1)]


def dead_letters(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------- selecting records
def test_records_settled_before_and_other_shards_are_passed_over_and_counted(tmp_path):
    Checkpoint(tmp_path / "job.ck").save(CheckpointState("in.jsonl", "ix", "1/2", 4, 2, 0))
    ledger = JobLedger(config(tmp_path, shard=(1, 2)))  # resumes after position 4
    kept = list(records_to_index(records(9), ledger, (1, 2)))
    assert [r.position for r in kept] == [5, 7, 9]
    values = ledger.counters.values
    assert (values["skipped_done"], values["other_shards"], values["read"]) == (4, 2, 3)


def test_other_shards_positions_move_the_watermark(tmp_path):
    ledger = JobLedger(config(tmp_path, shard=(0, 2)))
    kept = list(records_to_index(records(3), ledger, (0, 2)))
    assert [r.position for r in kept] == [2]
    ledger.watermark.settle(2, "indexed")
    assert ledger.watermark.value == 3  # 1 and 3 are another worker's


def test_until_stops_reading_once_stopped():
    stop = threading.Event()
    pulled = []

    def source() -> Iterator[Record]:
        for record in records(10):
            pulled.append(record.position)
            if record.position == 3:
                stop.set()
            yield record

    assert [r.position for r in until(source(), stop.is_set)] == [1, 2]
    assert pulled == [1, 2, 3]


def test_a_broken_input_keeps_what_came_before_and_raises_after():
    def documents() -> Iterator[dict]:
        yield {"_id": "a", "text": "tax"}
        raise InputStreamError("the feed broke", position=2)

    source = BreakableInput(documents())
    assert [r.doc["_id"] for r in source] == ["a"]
    assert isinstance(source.error, InputStreamError)
    with pytest.raises(InputStreamError, match="of the 1 records read before, 1 were") as caught:
        source.raise_if_broken({"read": 1, "indexed": 1, "failed": 0})
    assert caught.value.position == 2 and caught.value.__cause__ is source.error
    BreakableInput([{"_id": "b"}]).raise_if_broken({})  # whole: nothing raised


# ---------------------------------------------------------------------- text extraction
def test_records_without_id_or_text_are_refused_with_the_field_named(tmp_path):
    refused: list[tuple[int, InputError]] = []
    rows = [
        Record(1, {"_id": "a", "title": "T", "text": "tax"}),
        Record(2, {"text": "no id"}),
        Record(3, None, "line 3: invalid JSON", "{oops", unit="line"),
    ]
    prepared = list(
        prepared_records(
            rows, document_rule(config(tmp_path)), lambda r, e: refused.append((r.position, e))
        )
    )
    assert [(p.doc_id, p.text) for p in prepared] == [("a", "T tax")]
    assert prepared[0].source == {"title": "T", "text": "tax", "id": "a"}
    assert [(p, e.field) for p, e in refused] == [(2, "_id"), (3, None)]


# ---------------------------------------------------------------------- encoding, actions
def prepared(n: int) -> list[Prepared]:
    words = ["tax", "code", "section", "", "tax code"]
    return [Prepared(i, f"d{i}", words[i % len(words)], {"id": f"d{i}"}) for i in range(1, n + 1)]


def test_windows_pair_each_vector_with_its_record():
    encoder = FakeEncoder(window=3)
    windows = list(encoded_windows(prepared(7), encoder, batch_size=2))
    assert [[p.position for p in records] for records, _ in windows] == [[1, 2, 3], [4, 5, 6], [7]]
    for records_, window in windows:
        for row, record in enumerate(records_):
            assert set(window.to_dict(row)) == set(record.text.split())


def test_actions_carry_the_vector_keyed_for_the_index_and_count_windows():
    codec = TokenCodec(VOCAB, scheme="id")
    encoded: list[int] = []
    windows = encoded_windows(prepared(4), FakeEncoder(window=3), batch_size=2)
    actions = list(window_actions(windows, codec, sparse_field="vec", encoded=encoded.append))
    assert [a.doc_id for a in actions] == ["d1", "d2", "d3", "d4"]
    assert actions[0].source == {"id": "d1", "vec": {"2": 1.0}}  # "code" is id 2
    assert actions[2].source == {"id": "d3", "vec": {}}  # an empty text: an empty vector
    assert actions[3].source == {"id": "d4", "vec": {"1": 1.0, "2": 1.0}}
    assert json.loads(actions[3].encoded) == actions[3].source
    assert encoded == [3, 1]


def test_passage_actions_are_the_bytes_json_dumps_writes_of_each_records_passages():
    """The passages layout: the sparse field is the record's passages in text order, each
    its vector and span; a record without passages (an empty text) gets an empty list."""
    vocab = Vocabulary(["[PAD]", ".", "tax", "é", 'q"'], special_ids={0})
    rng = np.random.default_rng(1)
    document = np.array([0, 0, 0, 2, 3, 3])  # record 1 has no passage
    rows = []
    for _ in document:
        ids = np.sort(rng.choice(5, rng.integers(0, 6), replace=False))
        rows.append((ids, rng.gamma(1.5, 0.5, len(ids)).astype(np.float32)))
    spans = np.array([[0, 10], [8, 20], [18, 25], [0, 7], [0, 30], [26, 41]])
    truncated = np.array([True, False, False, False])
    batch = PassageBatch(SparseBatch.from_rows(rows, vocab=vocab), document, spans, truncated)
    records_ = [Prepared(i, f"d{i}", "text", {"title": f"T{i} ü"}) for i in range(1, 5)]
    encoded: list[int] = []
    tally = LongDocumentTally()
    for scheme in ("token", "id"):
        codec = TokenCodec(vocab, scheme=scheme)
        actions = list(
            passage_actions(
                [(records_, batch)], codec, sparse_field="v", encoded=encoded.append, tally=tally
            )
        )
        for d, (record, action) in enumerate(zip(records_, actions, strict=True)):
            passages = [
                {
                    "vector": codec.encode(batch.passages, p),
                    "start": int(spans[p, 0]),
                    "end": int(spans[p, 1]),
                }
                for p in np.flatnonzero(document == d)
            ]
            source = {**record.source, "v": passages}
            assert action.encoded == make_action(record.position, record.doc_id, source).encoded
            assert action.source == source
    assert encoded == [4, 4]
    assert tally.truncated == 2  # record 1, counted once per run (two runs here)
    assert tally.windows.documents == 8 and tally.windows.over_one_window == 4
    assert tally.windows.counts == {3: 2, 0: 2, 1: 2, 2: 2}


def test_actions_are_the_bytes_of_the_document_with_its_vector_as_json_dumps_writes_them():
    vocab = Vocabulary(["[PAD]", ".", "tax", "é", 'q"'], special_ids={0})
    rng = np.random.default_rng(0)
    rows, records_ = [], []
    for i in range(1, 41):
        ids = np.sort(rng.choice(5, rng.integers(0, 6), replace=False))
        rows.append((ids, rng.gamma(1.5, 0.5, len(ids)).astype(np.float32)))
        records_.append(Prepared(i, f"d{i}", "text", {"title": f"T{i} ü", "id": f"d{i}"}))
    window = SparseBatch.from_rows(rows, vocab=vocab)
    for scheme in ("token", "id"):
        codec = TokenCodec(vocab, scheme=scheme)
        windows = [(records_, window)]
        actions = list(window_actions(windows, codec, sparse_field="v", encoded=lambda n: None))
        for row, (record, action) in enumerate(zip(records_, actions, strict=True)):
            source = {**record.source, "v": codec.encode(window, row)}
            assert action.encoded == make_action(record.position, record.doc_id, source).encoded
            assert action.source == source


def test_windows_are_made_one_ahead_in_a_thread_of_their_own():
    made: list[int] = []
    closed = threading.Event()

    def windows() -> Iterator[int]:
        try:
            for i in range(10):
                made.append(i)
                yield i
        finally:
            closed.set()

    ahead = made_ahead(windows(), name="test-ahead")
    assert next(ahead) == 0
    deadline = time.monotonic() + 5
    while len(made) < 2 and time.monotonic() < deadline:  # the next one is made meanwhile
        time.sleep(0.01)
    time.sleep(0.05)
    assert made == [0, 1]  # and no more: one waits, made, for its turn
    assert list(ahead) == list(range(1, 10)) and closed.is_set()


def test_a_stage_made_ahead_raises_in_the_consumer_and_stops_when_closed():
    def failing() -> Iterator[int]:
        yield 1
        raise InputError("bad window")

    ahead = made_ahead(failing(), name="test-ahead")
    assert next(ahead) == 1
    with pytest.raises(InputError, match="bad window"):
        next(ahead)
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    ahead = made_ahead(endless(), name="test-ahead")
    assert next(ahead) == 1
    ahead.close()  # the thread stops and closes the stage it ran
    assert closed.is_set()
    assert not any(t.name == "test-ahead" for t in threading.enumerate())


def test_encoding_pulls_texts_only_as_windows_are_taken():
    encoder = FakeEncoder(window=2)
    windows = encoded_windows(prepared(10), encoder, batch_size=2)
    next(windows)
    assert len(encoder.pulled) == 2  # the rest of the input is not read ahead


# ---------------------------------------------------------------------- the ledger
def test_a_chunks_outcome_is_dead_lettered_settled_counted_and_checkpointed(tmp_path):
    progress: list[tuple[str, int]] = []
    ledger = JobLedger(config(tmp_path), lambda stage, n: progress.append((stage, n)))
    for position in (1, 2, 3):
        ledger.watermark.register(position)
    a, b, c = (make_action(p, f"d{p}", {"text": "x", "splade": {"t": 1.0}}) for p in (1, 2, 3))
    ledger.settle(BulkOutcome([a, c], [Failure(b, 400, "mapper_parsing_exception")], 2))
    assert dead_letters(tmp_path) == [
        {
            "position": 2,
            "id": "d2",
            "reason": "mapper_parsing_exception",
            "status": 400,
            "document": {"text": "x"},  # without its vector
        }
    ]
    saved = json.loads((tmp_path / "job.ck").read_text())
    assert (saved["watermark"], saved["indexed"], saved["dead_lettered"]) == (3, 2, 1)
    assert ledger.counters.values["retried"] == 2
    assert progress == [("indexed", 2), ("failed", 1)]


def test_a_refused_record_is_dead_lettered_with_its_raw_input(tmp_path):
    ledger = JobLedger(config(tmp_path))
    ledger.watermark.register(1)
    ledger.refuse(Record(1, None, "line 1: invalid JSON", "{oops"), InputError("line 1: bad"))
    assert dead_letters(tmp_path) == [
        {"position": 1, "id": None, "reason": "line 1: bad", "raw": "{oops"}
    ]
    assert ledger.watermark.value == 1 and ledger.counters.values["failed"] == 1


def test_a_resumed_job_starts_at_its_checkpoint_and_drops_later_dead_letters(tmp_path):
    first = JobLedger(config(tmp_path))
    for position in (1, 2):
        first.watermark.register(position)
    first.refuse(Record(1, None, "bad", "x"), InputError("bad"))
    first.settle(BulkOutcome([make_action(2, "d2", {})], [], 0))
    with open(tmp_path / "dead.jsonl", "a") as handle:  # a later run's, not checkpointed
        handle.write(json.dumps({"position": 5, "reason": "later"}) + "\n")
    again = JobLedger(config(tmp_path))
    assert again.resumed_from == 2
    assert (again.watermark.indexed, again.watermark.dead_lettered) == (1, 1)
    assert [d["position"] for d in dead_letters(tmp_path)] == [1]


# ---------------------------------------------------------------------- sending
class Client:
    """``bulk`` answers 201 per document, or raises ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.bodies: list[list] = []

    def bulk(self, body):
        if self.error:
            raise self.error
        self.bodies.append(body)
        return {"items": [{"index": {"status": 201}} for _ in body[::2]]}


def test_a_chunk_is_sent_and_its_outcome_written_in_the_ledger(tmp_path):
    ledger = JobLedger(config(tmp_path))
    ledger.watermark.register(1)
    client = Client()
    IndexChunk(client, "ix", RetryPolicy(), ledger)([make_action(1, "d1", {"t": 1})])
    assert client.bodies == [[{"index": {"_index": "ix", "_id": "d1"}}, {"t": 1}]]
    assert ledger.counters.values["indexed"] == 1 and ledger.watermark.value == 1


def test_an_error_that_stops_the_job_is_raised_as_ours(tmp_path):
    error = opensearchpy.AuthenticationException(401, "unauthorized", {})
    send = IndexChunk(Client(error), "ix", RetryPolicy(), JobLedger(config(tmp_path)))
    with pytest.raises(AuthenticationError, match="bulk indexing into ix"):
        send([make_action(1, "d1", {})])


def test_senders_take_every_chunk_queued_before_close():
    sent: list[int] = []
    lock = threading.Lock()

    def send(chunk):
        with lock:
            sent.extend(a.position for a in chunk)

    with SenderPool(send, workers=3) as senders:
        for i in range(20):
            assert senders.put([make_action(i, str(i), {})])
    assert sorted(sent) == list(range(20)) and senders.failure is None
    senders.raise_failure()  # nothing to raise


def test_a_full_queue_holds_the_producer_back():
    release = threading.Event()
    started = threading.Event()

    def send(chunk):
        started.set()
        release.wait(5)

    queued = []
    with SenderPool(send, workers=1) as senders:
        producer = threading.Thread(
            target=lambda: queued.extend(senders.put([make_action(i, "x", {})]) for i in range(6))
        )
        producer.start()
        started.wait(5)
        producer.join(0.5)
        assert producer.is_alive()  # 1 in the sender + 2 queued: the 4th put waits
        release.set()
        producer.join(5)
    assert queued == [True] * 6


def test_the_first_sender_failure_stops_the_pool_and_is_kept():
    def send(chunk):
        raise RuntimeError(f"chunk {chunk[0].position} failed")

    with SenderPool(send, workers=2) as senders:
        senders.put([make_action(1, "a", {})])
        while not senders.stopped():
            threading.Event().wait(0.01)
        assert senders.put([make_action(2, "b", {})]) is False  # not queued once stopped
    assert str(senders.failure) == "chunk 1 failed"
    with pytest.raises(RuntimeError, match="chunk 1 failed"):
        senders.raise_failure()


# ---------------------------------------------------------------------- the input, read once
def jsonl(n: int) -> bytes:
    return b"".join(
        json.dumps({"_id": f"d{i}", "text": f"tax code section {i}"}).encode() + b"\n"
        for i in range(n)
    )


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz", "docs.csv"])
def test_reading_reports_the_bytes_of_the_file_consumed_up_to_its_size(tmp_path, name):
    texts = [os.urandom(24).hex() for _ in range(5000)]  # random: compressed, still > 64 KiB
    data = b"".join(
        json.dumps({"_id": f"d{i}", "text": t}).encode() + b"\n" for i, t in enumerate(texts)
    )
    if name.endswith(".csv"):
        data = b"_id,text\n" + b"".join(f"d{i},{t}\n".encode() for i, t in enumerate(texts))
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    consumed: list[int] = []
    assert len(list(read_source(path, consumed=consumed.append))) == 5000
    assert sum(consumed) == input_size(path) == path.stat().st_size
    assert len(consumed) > 1  # reported as it is read, not at the end


def test_parquet_reports_its_size_as_its_rows_are_read(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"_id": [f"d{i}" for i in range(3000)], "text": ["tax"] * 3000}), path)
    consumed: list[int] = []
    assert len(list(read_source(path, consumed=consumed.append))) == 3000
    assert sum(consumed) == input_size(path) == path.stat().st_size and len(consumed) == 3


def test_streams_have_no_size_and_a_beir_folder_is_its_corpus(tmp_path):
    fifo = tmp_path / "docs.fifo"
    os.mkfifo(fifo)
    assert input_size(fifo) is None and input_size("-") is None
    (tmp_path / "corpus.jsonl.gz").write_bytes(gzip.compress(jsonl(5)))
    assert input_size(tmp_path) == (tmp_path / "corpus.jsonl.gz").stat().st_size


@pytest.fixture
def opens(monkeypatch):
    """The paths ``open`` was asked for, in order."""
    import builtins

    real_open = builtins.open
    opened: list[str] = []

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    return opened


@pytest.fixture
def bars(monkeypatch):
    """The progress display the CLI commands use, kept to look at its bars afterwards."""
    from rich.progress import Progress

    display = Progress(disable=True)
    monkeypatch.setattr("splade_es.cli.encode.progress_display", lambda quiet: display)
    monkeypatch.setattr("splade_es.cli.indexing.progress_display", lambda quiet: display)
    return display


def bar(display, description: str):
    return next(t for t in display.tasks if t.description == description)


def test_encode_opens_its_input_once_and_shows_bytes_read(tiny_bert_dir, tmp_path, opens, bars):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(jsonl(30))
    args = ["encode", "-m", str(tiny_bert_dir), "--input", str(path)]
    result = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    assert opens.count(str(path)) == 1
    assert bar(bars, "input").total == bar(bars, "input").completed == path.stat().st_size
    assert bar(bars, "encoded").completed == 30
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 30


def test_ingest_opens_its_input_once_and_shows_compressed_bytes_read(
    tiny_bert_dir, tmp_path, opens, bars, monkeypatch
):
    from types import SimpleNamespace

    from tests.unit.test_ingest_pipeline import SlowClient

    client = SlowClient()
    cluster = SimpleNamespace(client=client, description="a fake cluster")
    monkeypatch.setattr("splade_es.cli.indexing.connect", lambda config: cluster)
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(40)))
    args = ["ingest", "--url", "http://fake:9200", "--index", "ix", "-m", str(tiny_bert_dir)]
    result = CliRunner().invoke(main, [*args, "--input", str(path), "--bulk-docs", "7"])
    assert result.exit_code == 0, result.output
    assert opens.count(str(path)) == 1
    assert bar(bars, "input").total == bar(bars, "input").completed == path.stat().st_size
    assert [bar(bars, s).completed for s in ("read", "encoded", "indexed", "failed")] == [
        40,
        40,
        40,
        0,
    ]
    assert len(client.stored) == 40
