"""Vectors as JSON a window at a time (``splade_es.ingest.vector_json``): the bytes must be
``json.dumps``'s, byte for byte, for every weight and every key; ``weight_texts`` is checked
against ``repr`` on millions of float32 values in ``benchmarks`` runs, here on a few hundred
thousand chosen where the arithmetic has its edges."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from splade_es.ingest import vector_json
from splade_es.ingest.bulk import make_action, vector_action
from splade_es.ingest.vector_json import VectorJson, weight_texts
from splade_es.sparse import SparseBatch, Vocabulary
from splade_es.tokens import TokenCodec
from tests.fuzz import FUZZ


def texts_of(values: np.ndarray) -> list[bytes]:
    words, sizes = weight_texts(values)
    texts = [row.tobytes().translate(None, b"\0") for row in words]
    assert [len(t) for t in texts] == sizes.tolist()
    return texts


def reprs_of(values: np.ndarray) -> list[bytes]:
    return [repr(v).encode() + b"," for v in values.astype(np.float64).tolist()]


def between(lo: float, hi: float, n: int, seed: int = 0) -> np.ndarray:
    """``n`` float32 values with bit patterns uniform in [lo, hi)."""
    a, b = np.float32(lo).view(np.uint32), np.float32(hi).view(np.uint32)
    bits = np.random.default_rng(seed).integers(a, b, n, dtype=np.uint32)
    return bits.view(np.float32)


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (1e-4, 1e-3),  # "0.000ddd", the smallest fixed notation
        (1e-3, 1.0),  # SPLADE's weights
        (1.0, 10.0),
        (10.0, 1e4),  # few fraction bits: ties at 17 digits, broken to the even digit
        (1e4, 1e15),
        (1e14, 1e17),  # the fast path's end; repr's exponent notation from 1e16
        (1e-38, 1e-4),  # exponent notation: repr itself
    ],
)
def test_weights_are_written_as_repr_writes_them(lo, hi):
    values = between(lo, hi, 40_000, seed=int(np.log10(hi) + 50))
    assert texts_of(values) == reprs_of(values)


def test_every_kind_of_float32_is_written_as_repr_writes_it():
    bits = np.random.default_rng(7).integers(0, 2**32, 100_000, dtype=np.uint32)
    values = bits.view(np.float32)  # negatives, zeros, subnormals, inf, NaN too
    finite = values[np.isfinite(values)]
    assert texts_of(finite) == reprs_of(finite)
    odd = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], dtype=np.float32)
    assert texts_of(odd) == [b"inf,", b"-inf,", b"nan,", b"0.0,", b"-0.0,"]


def test_numbers_next_to_short_decimals_and_powers_are_written_as_repr_writes_them():
    shorts = [10.0**p for p in range(-5, 17)] + [k / 8 for k in range(1, 200)]
    shorts += [k / 1000 for k in range(1, 2000)] + [2.0**p for p in range(-20, 50)]
    centers = np.array(shorts, dtype=np.float32).view(np.uint32).astype(np.int64)
    bits = (centers[:, None] + np.arange(-40, 41)[None, :]).ravel()
    values = bits.astype(np.uint32).view(np.float32)
    assert texts_of(values) == reprs_of(values)


@FUZZ
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=64))
def test_any_float32_is_written_as_repr_writes_it(numbers):
    values = np.array(numbers, dtype=np.float32)
    assert texts_of(values) == reprs_of(values)


# ---------------------------------------------------------------------- whole vectors
TOKENS = ["[PAD]", "[CLS]", ".", "##.", "%", "tax", 'say"', "back\\slash", "tab\t", "é", "日本"]


def reference(codec: TokenCodec, batch: SparseBatch) -> list[bytes]:
    return [
        json.dumps(codec.encode(batch, i), ensure_ascii=False, separators=(",", ":")).encode()
        for i in range(len(batch))
    ]


def random_batch(vocab, rows: int, seed: int) -> SparseBatch:
    rng = np.random.default_rng(seed)
    tiny = np.finfo(np.float32).tiny
    odd = np.array([0.0, -1.0, np.nan, np.inf, tiny / 2, tiny, 1.0, 3.0], dtype=np.float32)
    made = []
    for _ in range(rows):
        ids = np.sort(rng.choice(len(vocab), rng.integers(0, len(vocab) + 1), replace=False))
        weights = rng.gamma(1.5, 0.5, len(ids)).astype(np.float32)
        swap = rng.random(len(ids)) < 0.2
        weights[swap] = rng.choice(odd, swap.sum())
        made.append((ids, weights))
    return SparseBatch.from_rows(made, vocab=vocab)


@pytest.mark.parametrize("scheme", ["token", "id"])
def test_rows_are_the_json_of_the_codecs_feature_dicts(scheme):
    codec = TokenCodec(Vocabulary(TOKENS, special_ids={0, 1}), scheme=scheme)
    batch = random_batch(codec.vocab, 300, seed=1)
    assert VectorJson(codec).rows(batch) == reference(codec, batch)


def test_rows_written_in_slices_and_on_big_endian_machines_are_the_same(monkeypatch):
    codec = TokenCodec(Vocabulary(TOKENS, special_ids={0}))
    batch = random_batch(codec.vocab, 200, seed=2)
    monkeypatch.setattr(vector_json, "SLICE_VALUES", 7)  # rows cut into many slices
    assert VectorJson(codec).rows(batch) == reference(codec, batch)
    monkeypatch.setattr(vector_json, "_NATIVE", False)  # json.dumps's path
    assert VectorJson(codec).rows(batch) == reference(codec, batch)


def test_a_key_json_cannot_encode_fails_its_rows_as_json_dumps_did():
    codec = TokenCodec(["[PAD]", "tax", "bad\ud800"])
    fine = SparseBatch.from_rows([([1], [1.5])], vocab=codec.vocab)
    assert VectorJson(codec).rows(fine) == [b'{"tax":1.5}']
    broken = SparseBatch.from_rows([([1], [1.5]), ([1, 2], [1.0, 2.0])], vocab=codec.vocab)
    with pytest.raises(UnicodeEncodeError):
        VectorJson(codec).rows(broken)
    with pytest.raises(UnicodeEncodeError):
        reference(codec, broken)


def test_a_batch_of_another_vocabulary_is_refused():
    from splade_es.exceptions import ConfigurationError

    codec = TokenCodec(TOKENS)
    with pytest.raises(ConfigurationError, match="vocabulary"):
        VectorJson(codec).rows(SparseBatch.from_rows([([0], [1.0])], vocab=["a", "b"]))


def test_a_documents_bytes_are_make_actions_and_its_vector_is_made_only_if_read():
    made = []

    def vector() -> dict:
        made.append(1)
        return {"tax": 1.5}

    for fields in ({"title": "T", "id": "d1"}, {}, {"v": "kept in place", "id": "x"}):
        made.clear()
        action = vector_action(3, "d1", fields, "v", (b'{"tax":1.5}', vector))
        expected = make_action(3, "d1", {**fields, "v": {"tax": 1.5}})
        assert (action.encoded, action.encoded_id) == (expected.encoded, expected.encoded_id)
        assert len(made) == ("v" in fields)  # a field already there: serialized in its place
        assert action.source == expected.source and action.source is action.source
        assert len(made) == 1


def test_a_documents_fields_are_written_as_json_dumps_writes_them():
    from splade_es.ingest.bulk import json_object_head, to_json

    texts = ["", "tax", 'say "hi"', "back\\slash", "tab\tnew\nline\x00\x1f"]
    texts.append("\x7f é 日本 \u2028 😀")
    cases = [{}, {1: "a", "b": 2}, {"n": None, "f": 1.5, "t": True, "l": [1, {"k": 'v"'}]}]
    cases += [{"title": t, "text": u, "id": "d1"} for t in texts for u in texts]
    cases += [{t: u} for t in texts for u in texts]
    for fields in cases:
        assert json_object_head(fields) + b"}" == to_json(fields)
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: as to_json
        json_object_head({"t": "bad\ud800"})
