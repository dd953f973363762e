from __future__ import annotations

import numpy as np
import pytest

from splade_es.sparse import SparseBatch

VOCAB = ("[CLS]", "tax", "code", "section", "garlic")


def batch():
    return SparseBatch.from_rows(
        [([3, 1], [0.5, 2.0]), ([], []), ([4, 2, 1], [1.0, 0.25, 0.75])], vocab=VOCAB
    )


def test_rows_are_sorted_by_id_and_named_by_the_vocab():
    b = batch()
    assert b.row(0)[0].tolist() == [1, 3]
    assert b.to_dicts() == [
        {"tax": 2.0, "section": 0.5},
        {},
        {"tax": 0.75, "code": 0.25, "garlic": 1.0},
    ]


def test_scipy_and_dot_agree_with_dicts():
    b = batch()
    assert b.to_scipy().shape == (3, len(VOCAB))
    scores = b.dot(b)
    assert scores[0, 2] == pytest.approx(2.0 * 0.75)
    assert scores[1].tolist() == [0.0, 0.0, 0.0]


def test_prune_top_k_and_min_weight():
    b = batch()
    assert b.prune(top_k=1).to_dicts() == [{"tax": 2.0}, {}, {"garlic": 1.0}]
    assert b.prune(min_weight=0.6).to_dicts() == [{"tax": 2.0}, {}, {"tax": 0.75, "garlic": 1.0}]
    assert b.prune(top_k=1, min_weight=1.5).to_dicts() == [{"tax": 2.0}, {}, {}]
    with pytest.raises(ValueError):
        b.prune(top_k=0)


def test_concat_keeps_rows_and_truncation_flags():
    a = SparseBatch.from_rows([([1], [1.0])], vocab=VOCAB, truncated=np.array([True]))
    b = SparseBatch.from_rows(
        [([2], [2.0]), ([3], [3.0])], vocab=VOCAB, truncated=np.array([False, False])
    )
    joined = SparseBatch.concat([a, b])
    assert joined.to_dicts() == [{"tax": 1.0}, {"code": 2.0}, {"section": 3.0}]
    assert joined.truncated.tolist() == [True, False, False]
