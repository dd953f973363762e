"""Ray and Spark with ``long_documents`` (issue 24), without a cluster: the job's window
policy, the counting encoder, the merge of every worker's window counts into one summary, and
Spark's worker functions (``encode_frames`` / ``encode_batches`` run outside Spark)."""

from __future__ import annotations

import doctest
import math
from types import SimpleNamespace

import numpy as np
import pytest

from splade_es import scaleout
from splade_es.encoding.encoder import SpladeEncoder
from splade_es.encoding.windows import WindowPolicy, WindowStats
from splade_es.exceptions import ConfigurationError
from splade_es.ingest.stages import LongDocumentTally
from splade_es.scaleout import (
    TalliedEncoder,
    stats_row,
    summarize,
    window_policy,
)
from splade_es.tokens import TokenCodec
from tests.vectors import assert_same_vector

WINDOW, OVERLAP, MAX_WINDOWS = 16, 4, 5
WORDS = [
    "sparse",
    "vectors",
    "expand",
    "every",
    "passage",
    "with",
    "related",
    "vocabulary",
    "terms",
    "while",
    "the",
    "search",
]
TEXTS = [
    " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(12 + 17 * i)) for i in range(6)
] + ["search engine"]


@pytest.fixture(scope="module")
def encoder(search_model_dir) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(search_model_dir), device="cpu")


def options() -> dict:
    return {"window": WINDOW, "overlap": OVERLAP, "max_windows": MAX_WINDOWS}


def test_the_module_examples_run():
    result = doctest.testmod(scaleout)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- the job's policy
def test_window_policy_takes_a_mode_or_a_policy_and_replaces_the_given_parts():
    assert window_policy() is None  # the encoder's own
    assert window_policy("maxpool", window=64) == WindowPolicy("maxpool", window=64)
    assert window_policy(window=64) == WindowPolicy("truncate", window=64)
    base = WindowPolicy("passages", window=32, overlap=8, max_windows=10)
    assert window_policy(base) == base
    assert window_policy(base, max_windows=3) == WindowPolicy("passages", 32, 8, 3)


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        ({"long_documents": "chunks"}, "long_documents"),
        ({"long_documents": "maxpool", "overlap": -1}, "overlap"),
        ({"long_documents": "maxpool", "max_windows": 0}, "max_windows"),
        ({"long_documents": "passages", "window": 1}, "window"),
    ],
)
def test_window_policy_refuses_bad_options_on_the_driver(arguments, option):
    with pytest.raises(ConfigurationError, match=option):
        window_policy(**arguments)


# ---------------------------------------------------------------------- counting and merging
def test_the_tallied_encoder_counts_what_its_batches_say(encoder):
    tallied = TalliedEncoder(encoder)
    assert tallied.vocab is encoder.vocab  # everything else is the encoder's
    policy = WindowPolicy("maxpool", WINDOW, OVERLAP, MAX_WINDOWS)
    streamed = list(tallied.iter_encode(TEXTS, batch_size=2, window=3, long_documents=policy))
    want = encoder.encode_documents(TEXTS, long_documents="maxpool", **options())
    assert want.windows is not None and want.truncated is not None
    assert sum(len(b) for b in streamed) == len(TEXTS)
    assert tallied.tally.truncated == int(want.truncated.sum()) >= 1
    expected = WindowStats()
    expected.add(want.windows, want.truncated)
    assert tallied.tally.windows == expected
    assert expected.over_one_window >= 4

    passages = TalliedEncoder(encoder)
    list(passages.iter_passages(TEXTS, batch_size=2, policy=policy))
    assert passages.tally.windows == expected  # the same windows, one vector each


def fake_report(read: int, indexed: int) -> SimpleNamespace:
    return SimpleNamespace(read=read, indexed=indexed, dead_lettered=read - indexed)


def test_summaries_merge_every_workers_exact_window_counts():
    rng = np.random.default_rng(7)
    per_batch = [rng.integers(1, 40, size=n) for n in (30, 1, 55, 14)]
    rows = []
    for b, windows in enumerate(per_batch):
        tally = LongDocumentTally()
        dropped = windows >= 39
        tally.add(dropped, windows)
        worker = f"actor-{b % 2}"
        rows.append(stats_row(worker, fake_report(len(windows), len(windows)), tally))  # type: ignore[arg-type]
    summary = summarize(rows, long_documents="passages")

    everything = np.concatenate(per_batch)
    assert summary.total.read == summary.total.indexed == len(everything)
    assert summary.total.batches == 4 and set(summary.workers) == {"actor-0", "actor-1"}
    assert summary.workers["actor-1"].read == 1 + 14
    assert summary.total.windows == int(everything.sum())
    assert summary.total.over_one_window == int((everything > 1).sum())
    assert summary.total.truncated == summary.total.hit_max_windows == int((everything >= 39).sum())
    assert summary.windows_mean == pytest.approx(everything.mean(), abs=1e-3)
    # Nearest-rank p99 over all documents: not any worker's own p99, nor their mean.
    rank = math.ceil(0.99 * len(everything))
    assert summary.windows_p99 == int(np.sort(everything)[rank - 1])
    line = summary.long_document_summary()
    assert line.startswith(f"passages: {summary.total.over_one_window:,} of {len(everything):,}")
    assert summary.to_json()["windows_p99"] == summary.windows_p99


def test_a_truncating_job_counts_truncated_documents_and_no_windows():
    tally = LongDocumentTally()
    tally.add(np.array([True, False, True]), None)  # truncate: no windows
    summary = summarize([stats_row("w", fake_report(3, 3), tally)])  # type: ignore[arg-type]
    assert summary.long_documents == "truncate"
    assert summary.total.truncated == 2 and summary.total.windows == 0
    assert summary.windows_mean == 0 and summary.windows_p99 == 0
    assert summary.long_document_summary() == "2 truncated at the window"


def test_stats_rows_without_long_document_counts_still_fold():
    old = {"worker": "w", "read": 2, "indexed": 2, "dead_lettered": 0, "dead_letters": "[]"}
    summary = summarize([old])
    assert summary.total.read == 2 and summary.total.truncated == 0


def test_the_spark_accumulator_merges_window_counts():
    from splade_es.spark import WindowCountsParam

    param = WindowCountsParam()
    merged = param.addInPlace(param.zero({}), {1: 3, 4: 1})
    merged = param.addInPlace(merged, {4: 2, 7: 1})
    assert merged == {1: 3, 4: 3, 7: 1}


# ---------------------------------------------------------------------- Spark's worker side
def test_encode_frames_gives_maxpool_vectors_and_passages(encoder, search_model_dir):
    pd = pytest.importorskip("pandas")
    from splade_es import spark as splade_spark

    frame = pd.DataFrame({"_id": [str(i) for i in range(len(TEXTS))], "text": TEXTS})
    codec = TokenCodec(encoder.vocab)
    common = {"model": str(search_model_dir), "text_cols": ["text"], "device": "cpu"}

    [pooled] = splade_spark.encode_frames(
        iter([frame]), long_documents="maxpool", **common, **options()
    )
    want = encoder.encode_documents(TEXTS, long_documents="maxpool", **options())
    for i, vector in enumerate(pooled["splade"]):
        assert_same_vector(vector, codec.encode(want, i), what=str(i))
    truncated = encoder.encode_documents(TEXTS)  # truncate: the model's whole max length
    assert any(
        set(pooled["splade"][i]) != set(codec.encode(truncated, i)) for i in range(len(TEXTS))
    )

    [split] = splade_spark.encode_frames(
        iter([frame]), long_documents="passages", **common, **options()
    )
    passages = encoder.encode_passages(TEXTS, **options())
    assert list(split["splade_error"]) == [None] * len(TEXTS)
    for d, got in enumerate(split["splade"]):
        rows = passages.passage_range(d)
        spans = passages.spans[rows.start : rows.stop].tolist()
        assert [[p["start"], p["end"]] for p in got] == spans
        for passage, p in zip(got, rows, strict=True):
            assert_same_vector(passage["vector"], codec.encode(passages.passages, p))


def test_encode_batches_types_the_passages_column(encoder, search_model_dir):
    pa = pytest.importorskip("pyarrow")
    from splade_es import spark as splade_spark

    batch = pa.RecordBatch.from_pylist(
        [{"_id": "a", "text": TEXTS[3]}, {"_id": "b", "text": ""}]  # "b": refused, no text
    )
    [out] = splade_spark.encode_batches(
        iter([batch]),
        model=str(search_model_dir),
        text_cols=["text"],
        device="cpu",
        long_documents="passages",
        **options(),
    )
    assert out.schema.field("splade").type == splade_spark.passages_arrow_type()
    rows = out.to_pylist()
    assert rows[1]["splade"] is None and "text" in rows[1]["splade_error"]
    passages = encoder.encode_passages([TEXTS[3]], **options())
    assert len(rows[0]["splade"]) == len(passages.passage_range(0)) == MAX_WINDOWS
    codec = TokenCodec(encoder.vocab)
    for got, p in zip(rows[0]["splade"], passages.passage_range(0), strict=True):
        assert_same_vector(dict(got["vector"]), codec.encode(passages.passages, p))
        assert [got["start"], got["end"]] == passages.spans[p].tolist()


def test_a_window_too_long_for_the_model_is_refused_by_the_worker(search_model_dir, encoder):
    pd = pytest.importorskip("pandas")
    from splade_es import spark as splade_spark

    frame = pd.DataFrame({"text": TEXTS[:1]})
    with pytest.raises(ConfigurationError, match="window"):
        next(
            splade_spark.encode_frames(
                iter([frame]),
                model=str(search_model_dir),
                text_cols=["text"],
                device="cpu",
                long_documents="maxpool",
                window=encoder.max_length + 1,
            )
        )
