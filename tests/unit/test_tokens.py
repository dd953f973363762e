"""TokenCodec: reversible, collision-free feature keys that every engine accepts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from transformers import AutoTokenizer

from splade_es.exceptions import InputError
from splade_es.sparse import SparseBatch, Vocabulary
from splade_es.tokens import MIN_STORABLE_WEIGHT, TokenCodec, escape_token, unescape_key


def assert_codec_is_a_bijection(vocab: Vocabulary, scheme: str) -> None:
    codec = TokenCodec(vocab, scheme=scheme)
    keys = [codec.key(i) for i in range(len(vocab))]
    assert len(set(keys)) == len(keys), "two tokens share a key"
    for i, key in enumerate(keys):
        assert "." not in key  # Elasticsearch rejects dots in rank_features keys
        assert key  # no empty field name
        assert codec.token_id(key) == i
        assert codec.token(key) == vocab[i]
        if scheme == "token":
            assert unescape_key(key) == vocab[i]  # reversible without the vocabulary


def _vocab_of(model_dir) -> Vocabulary:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    names = [""] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        names[i] = token
    return Vocabulary(names, special_ids=tokenizer.all_special_ids)


@pytest.mark.parametrize("scheme", ["token", "id"])
def test_whole_real_bert_vocabulary_round_trips_without_collisions(real_model_dir, scheme):
    vocab = _vocab_of(real_model_dir)
    assert len(vocab) > 30000
    # The tokens that make naive rewriting wrong are really there.
    for token in (".", "...", "##.", "_", '"', "\\", "/", "*", "%", "[unused0]", "[unused993]"):
        assert token in vocab._tokens
    assert_codec_is_a_bijection(vocab, scheme)


@pytest.mark.parametrize("scheme", ["token", "id"])
def test_tiny_model_vocabulary_round_trips(tiny_bert_dir, scheme):
    assert_codec_is_a_bijection(_vocab_of(tiny_bert_dir), scheme)


def test_escaping_is_injective_on_every_short_string_of_the_tricky_alphabet():
    alphabet = ".%2E5_#a"
    strings = ["".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    keys = {escape_token(s) for s in strings}
    assert len(keys) == len(strings)
    assert all(unescape_key(escape_token(s)) == s for s in strings)
    assert all("." not in k for k in keys)


def test_dot_and_underscore_stay_distinct():
    # sentence-transformers' helper rewrites "." to "_": "##." and "##_" would merge.
    assert escape_token("##.") != escape_token("##_")
    assert escape_token(".") == "%2E" and escape_token("%2E") == "%252E"


def test_special_tokens_and_unstorable_weights_are_dropped():
    vocab = Vocabulary(["[CLS]", "a", "b", "c", "d", "e", "f", "[SEP]"], special_ids={0, 7})
    codec = TokenCodec(vocab)
    tiny = MIN_STORABLE_WEIGHT / 2
    row = codec.encode_row(range(8), [5.0, 1.0, 0.0, -1.0, math.nan, math.inf, tiny, 3.0])
    assert row == {"a": 1.0}


def test_encode_reads_a_sparse_batch_row_and_decode_inverts_it():
    vocab = Vocabulary(["[PAD]", ".", "tax", "%"], special_ids={0})
    batch = SparseBatch.from_rows([([0, 1, 2, 3], [9.0, 0.5, 2.0, 1.5])], vocab=vocab)
    codec = TokenCodec(vocab)
    features = codec.encode(batch, 0)
    assert features == {"%2E": 0.5, "tax": 2.0, "%25": 1.5}
    assert codec.decode(features) == {".": 0.5, "tax": 2.0, "%": 1.5}
    ids = TokenCodec(vocab, scheme="id")
    assert ids.encode(batch, 0) == {"1": 0.5, "2": 2.0, "3": 1.5}
    assert ids.decode({"1": 0.5}) == {".": 0.5}


def test_unknown_keys_and_tokens_raise_input_errors():
    codec = TokenCodec(Vocabulary(["a", "b"]))
    with pytest.raises(InputError, match="not a feature key"):
        codec.token_id("zzz")
    with pytest.raises(InputError, match="not in the model's vocabulary"):
        codec.encode_tokens({"zzz": 1.0})
    assert codec.encode_tokens({"b": 2.0}) == {"b": 2.0}


def test_a_batch_from_another_vocabulary_is_refused():
    codec = TokenCodec(Vocabulary(["a", "b"]))
    other = SparseBatch.from_rows([([0], [1.0])], vocab=Vocabulary(["a", "b", "c"]))
    with pytest.raises(ValueError, match="vocabulary"):
        codec.encode(other, 0)


def test_stored_keys_are_stable_numpy_types_free():
    vocab = Vocabulary(["a", "b"])
    row = TokenCodec(vocab).encode_row(np.array([0, 1]), np.array([1.0, 2.0], np.float32))
    assert all(type(k) is str and type(v) is float for k, v in row.items())


def test_a_row_is_encoded_as_the_one_pair_at_a_time_rule_says():
    """``encode_row`` works on whole arrays; the rule is still the per-pair one: keep a pair
    unless its token is special or its weight unstorable, a repeated id's last weight wins."""
    vocab = Vocabulary([f"t{i}." for i in range(50)], special_ids={0, 7, 49})
    codec = TokenCodec(vocab)
    rng = np.random.default_rng(3)
    odd = [0.0, -2.0, math.nan, math.inf, -math.inf, MIN_STORABLE_WEIGHT / 2, MIN_STORABLE_WEIGHT]
    for _ in range(200):
        ids = rng.integers(0, 50, rng.integers(0, 30)).tolist()
        weights = [float(rng.choice(odd)) if rng.random() < 0.3 else rng.random() for _ in ids]
        expected = {}
        for i, w in zip(ids, weights, strict=True):
            if i not in vocab.special_ids and math.isfinite(w) and w >= MIN_STORABLE_WEIGHT:
                expected[codec.key(i)] = w
        for given in (
            (ids, weights),
            (iter(ids), (w for w in weights)),
            (np.array(ids, dtype=np.int32), np.array(weights, dtype=np.float32)),
        ):
            row = codec.encode_row(*given)
            if isinstance(given[1], np.ndarray):  # float32 weights: their float64 values
                expected32 = {k: float(np.float32(w)) for k, w in expected.items()}
                assert row == expected32 and list(row) == list(expected32)
            else:
                assert row == expected and list(row) == list(expected)
    with pytest.raises(ValueError):
        codec.encode_row([1, 2], [1.0])
