"""The accelerator path (device_batches.py) gives the CPU path's vectors.

It runs on any device; CPUs take the other path in production, so these tests call it
directly: the host-built layout (packed ids, slots, pooling gather), the dense pooling and the
one-batch-ahead placement in ``_encode_window``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splade_es import SpladeEncoder
from splade_es.encoding.device_batches import DeviceBatch, PendingRows
from tests.unit.test_encoder import TEXTS
from tests.vectors import assert_same_vector


def _ids(encoder: SpladeEncoder, texts: list[str]) -> list[list[int]]:
    return encoder._tokenize(texts, 0, "error", encoder.window_policy()).ids


@pytest.mark.parametrize("forward", ["fast", "transformers"])
def test_device_path_rows_equal_cpu_path_rows(tiny_model_dir, forward):
    encoder = SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu", screen=False)
    if forward == "transformers":
        encoder.fast_forward = None
    elif encoder.fast_forward is None:
        pytest.skip("this model has no fast forward")
    ids = _ids(encoder, TEXTS)
    expected = encoder._encode_batch(ids)
    got = encoder._queue_on_device(ids).collect()
    assert len(got) == len(expected) == len(TEXTS)
    for (ids_a, w_a), (ids_b, w_b) in zip(got, expected, strict=True):
        assert (np.diff(ids_a) > 0).all(), "ids ascending within a row"
        vocab = encoder.vocab
        assert_same_vector(
            {vocab[i]: float(w) for i, w in zip(ids_a, w_a, strict=True)},
            {vocab[i]: float(w) for i, w in zip(ids_b, w_b, strict=True)},
        )


def test_one_batch_ahead_places_every_row_in_input_order(tiny_bert_dir, monkeypatch):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu", screen=False)
    texts = TEXTS * 5
    expected = encoder.encode_documents(texts, batch_size=3).to_dicts()
    calls = []

    def queued(ids):
        pending = encoder._queue_on_device(ids)
        calls.append(len(ids))
        return pending.collect

    monkeypatch.setattr(encoder, "_launch", queued)
    got = encoder.encode_documents(texts, batch_size=3).to_dicts()
    assert sum(calls) == len(texts) and len(calls) > 3
    for a, b in zip(got, expected, strict=True):
        assert_same_vector(a, b)


def test_layout_of_rows_of_mixed_lengths():
    batch = DeviceBatch.build([[1, 2], [3, 4, 5, 6], [7]], torch.device("cpu"), pad_id=0)
    assert batch.lengths == [2, 4, 1] and batch.length == 4
    assert batch.ids.tolist() == [1, 2, 3, 4, 5, 6, 7]
    # each token's place in the padded [3 x 4] layout
    assert batch.slots.tolist() == [0, 1, 4, 5, 6, 7, 8]
    # pooling slots read their own token; pads read their row's first token
    assert batch.gather.tolist() == [0, 1, 0, 0, 2, 3, 4, 5, 6, 6, 6, 6]
    assert batch.padded_ids.tolist() == [[1, 2, 0, 0], [3, 4, 5, 6], [7, 0, 0, 0]]
    assert batch.mask.sum(dim=1).tolist() == [2, 4, 1]


def test_pending_rows_split_a_dense_block_by_row():
    pooled = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.5, 0.0]])
    rows = PendingRows(pooled).collect()
    assert [r[0].tolist() for r in rows] == [[1, 3], [], [0, 2]]
    assert [r[1].tolist() for r in rows] == [[2.0, 1.0], [], [3.0, 0.5]]
