"""long_documents: windows of tokenizer tokens, maxpool, passages (issue 24)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from splade_es import SpladeEncoder
from splade_es.encoding.windows import WindowPolicy, WindowStats, max_pool, window_ranges
from splade_es.exceptions import ConfigurationError
from tests.vectors import assert_same_vector

WORDS = [
    *[
        "the",
        "search",
        "engine",
        "indexes",
        "a",
        "sparse",
        "vector",
        "for",
        "each",
        "document",
        "in",
        "the",
        "cluster",
    ],
    *[
        "while",
        "learned",
        "weights",
        "expand",
        "every",
        "passage",
        "with",
        "related",
        "vocabulary",
        "terms",
    ],
]
LONG = " ".join(WORDS[i % len(WORDS)] + ("s" if i % 7 == 0 else "") for i in range(150))
SHORT = "sparse vectors for search"


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu", screen=False)


def _vector(encoder, ids, weights):
    return {encoder.vocab[i]: float(w) for i, w in zip(ids, weights, strict=True)}


def test_windows_cover_the_text_with_exact_overlap_and_never_split_a_token(encoder):
    policy = encoder.window_policy("maxpool", window=16, overlap=4)
    content = encoder.tokenizer(LONG, add_special_tokens=False)["input_ids"]
    windows = encoder.window_tokenizer.windows(LONG, policy)
    prefix, suffix = encoder.window_tokenizer.prefix, encoder.window_tokenizer.suffix
    assert prefix and suffix, "BERT-style models add [CLS] and [SEP]"
    inner = []
    for ids in windows.ids:
        assert len(ids) <= 16
        assert ids[: len(prefix)] == prefix and ids[-len(suffix) :] == suffix
        inner.append(ids[len(prefix) : -len(suffix)])
    for a, b in itertools.pairwise(inner):
        assert a[-4:] == b[:4], "consecutive windows share exactly `overlap` tokens"
    rebuilt = inner[0] + [t for w in inner[1:] for t in w[4:]]
    assert rebuilt == content, "every token in a window, in order, none split or lost"
    assert not windows.dropped
    # spans: each window's characters hold its tokens' text
    for (start, end), ids in zip(windows.spans, inner, strict=True):
        piece = LONG[start:end]
        words = encoder.tokenizer.decode(ids).replace(" ##", "").split()
        assert words[0].lstrip("#") in piece and words[-1].lstrip("#") in piece


@pytest.mark.parametrize("budget", [1 << 20, 1_000])
def test_texts_tokenized_together_cut_into_the_windows_each_gets_alone(
    encoder, budget, monkeypatch
):
    """``windows_of`` tokenizes a batch's texts in calls of up to ``BATCH_CHARS`` characters
    (the fast tokenizer's batch encoding; a longer text alone, so memory stays bounded); each
    text's windows, spans and drop flag are those of ``windows`` alone."""
    from splade_es.encoding import window_tokens

    monkeypatch.setattr(window_tokens, "BATCH_CHARS", budget)
    texts = [LONG, SHORT, LONG[: len(LONG) // 3] + " é ü 東京 " + LONG, LONG[7:], SHORT]
    for policy in (
        encoder.window_policy("passages", window=16, overlap=4, max_windows=500),
        encoder.window_policy("maxpool", window=24, overlap=0, max_windows=3),
    ):
        together = encoder.window_tokenizer.windows_of(texts, policy)
        alone = [encoder.window_tokenizer.windows(text, policy) for text in texts]
        assert together == alone
        assert any(w.dropped for w in together) == (policy.max_windows == 3)


def test_maxpool_is_the_elementwise_max_of_the_windows_encoded_alone(encoder):
    policy = encoder.window_policy("maxpool", window=16, overlap=4)
    windows = encoder.window_tokenizer.windows(LONG, policy)
    alone = [encoder._encode_batch([ids])[0] for ids in windows.ids]
    expected = _vector(encoder, *max_pool(alone))
    got = encoder.encode_documents([LONG, SHORT], long_documents="maxpool", window=16, overlap=4)
    assert_same_vector(got.to_dict(0), expected)
    assert got.windows.tolist() == [len(windows.ids), 1]
    assert len(windows.ids) > 3


def test_a_text_of_one_window_is_the_same_in_every_mode(encoder):
    plain = encoder.encode_documents([SHORT]).to_dict(0)
    pooled = encoder.encode_documents([SHORT], long_documents="maxpool", window=16)
    passages = encoder.encode_passages([SHORT], window=16)
    assert pooled.to_dict(0) == plain
    assert pooled.truncated.tolist() == [False]
    assert passages.to_dicts() == [[{"vector": plain, "start": 0, "end": len(SHORT)}]]


def test_passages_one_vector_per_window_with_spans_and_best_window_scores(encoder):
    policy = encoder.window_policy("passages", window=16, overlap=4)
    windows = encoder.window_tokenizer.windows(LONG, policy)
    got = encoder.encode_passages([SHORT, LONG, SHORT], window=16, overlap=4, batch_size=4)
    assert got.windows.tolist() == [1, len(windows.ids), 1]
    assert got.document.tolist() == [0] + [1] * len(windows.ids) + [2]
    assert [tuple(s) for s in got.spans[got.passage_range(1)]] == windows.spans
    for p, ids in zip(got.passage_range(1), windows.ids, strict=True):
        alone = encoder._encode_batch([ids])[0]
        assert_same_vector(got.passages.to_dict(p), _vector(encoder, *alone))
    queries = encoder.encode_queries(["sparse search vocabulary", "cluster passage"])
    best = got.best_scores(queries)
    dots = queries.dot(got.passages)
    for d in range(3):
        rows = list(got.passage_range(d))
        np.testing.assert_allclose(best[:, d], dots[:, rows].max(axis=1))


def test_max_windows_drops_the_rest_and_says_so(encoder):
    got = encoder.encode_documents(
        [LONG, SHORT], long_documents="maxpool", window=16, overlap=4, max_windows=2
    )
    assert got.windows.tolist() == [2, 1]
    assert got.truncated.tolist() == [True, False]
    stats = WindowStats()
    stats.add(got.windows, got.truncated)
    assert (stats.over_one_window, stats.hit_max_windows) == (1, 1)
    assert "1 cut at max_windows" in stats.summary()


def test_truncate_flags_what_it_drops(encoder):
    got = encoder.encode_documents([LONG, SHORT])
    assert got.truncated.tolist() == [True, False]
    assert got.windows is None


def test_streaming_windows_of_texts_agree_with_one_call(encoder):
    texts = [LONG, SHORT, "", LONG[:200], SHORT] * 3
    whole = encoder.encode_passages(texts, window=16, overlap=4, empty="empty_vector")
    streamed = list(
        encoder.iter_passages(
            texts,
            batch_size=2,
            window=4,
            empty="empty_vector",
            policy=WindowPolicy(window=16, overlap=4),
        )
    )
    assert [len(b) for b in streamed] == [4, 4, 4, 3]
    from splade_es.sparse import PassageBatch

    joined = PassageBatch.concat(streamed)
    assert joined.document.tolist() == whole.document.tolist()
    assert joined.windows[2] == 0, "an empty text has no passage"
    for a, b in zip(joined.to_dicts(), whole.to_dicts(), strict=True):
        assert [(p["start"], p["end"]) for p in a] == [(p["start"], p["end"]) for p in b]
        for pa, pb in zip(a, b, strict=True):
            assert_same_vector(pa["vector"], pb["vector"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 10_000}, "window must be at most the model's max length"),
        ({"window": 16, "overlap": 14}, "overlap must be >= 0 and below"),
        ({"window": 2}, "window must leave room for content"),
        ({"window": 16, "max_windows": 0}, "max_windows must be >= 1"),
    ],
)
def test_bad_window_options_are_refused_naming_the_option(encoder, options, message):
    with pytest.raises(ConfigurationError, match=message):
        encoder.encode_documents([LONG], long_documents="maxpool", **options)


def test_passages_are_not_one_vector(encoder):
    with pytest.raises(ConfigurationError, match="use encode_passages"):
        encoder.encode_documents([LONG], long_documents="passages")
    with pytest.raises(ConfigurationError, match="long_documents must be one of"):
        encoder.encode_documents([LONG], long_documents="chunks")


def test_queries_are_always_truncated(tiny_bert_dir):
    pooled = SpladeEncoder.from_pretrained(
        str(tiny_bert_dir), device="cpu", long_documents="maxpool", window=16, overlap=4
    )
    assert pooled.encode_queries([LONG]).truncated.tolist() == [True]
    assert pooled.encode_documents([LONG]).windows.tolist()[0] > 1


def test_window_ranges_step_and_bound():
    assert window_ranges(0, 4, 1) == ([(0, 0)], False)
    ranges, dropped = window_ranges(1000, 126, 32)
    assert ranges[0] == (0, 126) and ranges[1][0] == 94 and ranges[-1][1] == 1000
    assert not dropped and all(b - a <= 126 for a, b in ranges)


def test_a_5_mb_document_stays_within_bounded_memory(tiny_bert_dir):
    """Maxpool over ~1M tokens (thousands of windows) in a fresh process: the peak resident
    memory grows by far less than the text's token windows would take if all were padded into
    one batch, and the result is one vector."""
    script = textwrap.dedent(
        f"""
        import json, resource
        from splade_es import SpladeEncoder
        from tests.conftest import WORDS
        enc = SpladeEncoder.from_pretrained({str(tiny_bert_dir)!r}, device="cpu",
                                            long_documents="maxpool", max_windows=None,
                                            overlap=0)
        enc.encode_documents(["warm up"])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        words = " ".join(WORDS) + " "
        text = (words * (5_000_000 // len(words) + 1))[:5_000_000]
        out = enc.encode_documents([text], batch_size=512)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew_mb": (after - before) / 1024, "windows": int(out.windows[0]),
                          "nnz": int(out.nnz_per_row[0])}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["windows"] > 5_000
    assert report["nnz"] > 0
    assert report["grew_mb"] < 1500, report


@pytest.mark.parametrize("family", ["wordpiece", "byte-level-bpe", "unigram"])
def test_a_fast_tokenizers_one_window_is_truncates_call(family):
    """Windowed modes tokenize a batch whole, once, and give a text that fits one window its
    special tokens around its content: the ids truncate's own tokenizer call gives, for the
    tokenizer kinds of BERT, RoBERTa / ModernBERT and XLM-R (so one-window documents get the
    same vector in every mode whatever the family)."""
    from splade_es.encoding.window_tokens import WindowTokenizer
    from tests import model_zoo

    tokenizer = {
        "wordpiece": lambda: model_zoo._wordpiece(30_522),
        "byte-level-bpe": lambda: model_zoo._byte_level_bpe(50_265),
        "unigram": lambda: model_zoo.xlmr_tokenizer(6_000),
    }[family]()
    texts = [
        "sparse vectors for search",
        "  leading and trailing spaces  ",
        "Tax Code § 179: depreciation, état, 東京, emoji 🙂 and\ttabs\nnewlines",
        "\u200b\u200b",  # characters the tokenizer may drop entirely
        " ".join(["expand"] * 40),  # longer than the window: cut, not compared here
    ]
    policy = WindowPolicy("maxpool", window=24, overlap=4, max_windows=8).resolved(
        max_length=512, specials=WindowTokenizer(tokenizer).specials
    )
    windows = WindowTokenizer(tokenizer).windows_of(texts, policy)
    for text, cut in zip(texts, windows, strict=True):
        truncate = tokenizer(text, truncation=True, max_length=24)["input_ids"]
        if len(cut.ids) > 1:
            assert len(truncate) == 24 and cut.ids[0] == truncate
            continue
        only = cut.ids[0] if cut.ids else WindowTokenizer(tokenizer).affixes
        assert only == truncate, (family, text)
