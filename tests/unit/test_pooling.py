from __future__ import annotations

import pytest
import torch

from splade_es.encoding.pooling import SpladeHead


def brute_force(hidden, mask, weight, bias, pooling, activation):
    logits = hidden.double() @ weight.double().T + bias.double()  # [B, L, V]
    weights = torch.log1p(torch.relu(logits))
    if activation == "log1p_relu":
        weights = torch.log1p(weights)
    weights = weights * mask.unsqueeze(-1)
    return weights.amax(1) if pooling == "max" else weights.sum(1)


def to_dense(out, batch, vocab):
    dense = torch.zeros(batch, vocab, dtype=torch.float64)
    dense[out.rows, out.cols] = out.values.double()
    return dense


@pytest.mark.parametrize("pooling", ["max", "sum"])
@pytest.mark.parametrize("activation", ["relu", "log1p_relu"])
@pytest.mark.parametrize("screen", [False, True])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
@pytest.mark.parametrize("single_pass", [0, 10**9], ids=["chunked", "single-pass"])
def test_head_equals_brute_force(pooling, activation, screen, chunk, single_pass):
    gen = torch.Generator().manual_seed(1)
    batch, length, hidden_size, vocab = 4, 9, 16, 300
    hidden = torch.randn(batch, length, hidden_size, generator=gen) * 3
    weight = torch.randn(vocab, hidden_size, generator=gen)
    bias = torch.randn(vocab, generator=gen) * 4 - 6  # most entries inactive, like SPLADE
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 1:] = False
    # Padding positions hold garbage that must not leak into the result.
    hidden[~mask] = 50.0
    head = SpladeHead(
        weight,
        bias,
        pooling=pooling,
        activation=activation,
        vocab_chunk=chunk,
        screen=screen,
        single_pass_elements=single_pass,
    )
    expected_passes = 1 if single_pass else -(-vocab // chunk)
    assert len(head.bounds_for(batch, length)) == expected_passes
    got = to_dense(head(hidden, mask), batch, vocab)
    expected = brute_force(hidden, mask, weight, bias, pooling, activation)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert ((got > 0) == (expected > 0)).all()
    assert 0 < int((expected > 0).sum()) < batch * vocab


def test_screening_keeps_entries_just_above_zero():
    # Logits within bf16 rounding of the threshold are where screening could go wrong.
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 5, 32, generator=gen)
    weight = torch.randn(500, 32, generator=gen)
    exact = (hidden.double() @ weight.double().T).amax(1)  # [2, 500]
    bias = (-exact[0] + 1e-4).float()  # doc 0: every entry a hair above zero
    head = SpladeHead(weight, bias, screen=True, vocab_chunk=128)
    out = head(hidden, torch.ones(2, 5, dtype=torch.bool))
    row0 = out.cols[out.rows == 0]
    active0 = (exact[0] + bias.double() > 0).nonzero().flatten()
    assert set(row0.tolist()) == set(active0.tolist())
    assert len(active0) > 400


def test_short_inputs_take_one_pass_and_long_ones_are_chunked():
    head = SpladeHead(torch.randn(3000, 8), None, vocab_chunk=1000, single_pass_elements=30_000)
    assert head.bounds_for(1, 10) == [(0, 3000)]  # a query: 30k logits, one pass
    assert head.bounds_for(4, 10) == [(0, 1000), (1000, 2000), (2000, 3000)]


def test_screened_single_pass_equals_chunked():
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, 12, 32, generator=gen) * 3
    weight = torch.randn(900, 32, generator=gen)
    bias = torch.randn(900, generator=gen) * 4 - 8
    mask = torch.ones(1, 12, dtype=torch.bool)
    outs = [
        SpladeHead(weight, bias, vocab_chunk=128, screen=True, single_pass_elements=n)(hidden, mask)
        for n in (0, 10**9)
    ]
    dense = [to_dense(o, 1, 900) for o in outs]
    # Same entries; values equal up to float32 rounding (BLAS may order a dot product's
    # sum differently for a different number of columns).
    assert torch.equal(dense[0] > 0, dense[1] > 0)
    assert torch.allclose(dense[0], dense[1], rtol=1e-6, atol=0)
    assert int((dense[0] > 0).sum()) > 0


@pytest.mark.parametrize("screen", [False, True])
def test_packed_path_in_several_blocks_equals_brute_force(screen):
    """A micro-batch of mixed lengths, packed without padding, columns in cache-sized blocks."""
    gen = torch.Generator().manual_seed(5)
    batch, length, hidden_size, vocab = 4, 200, 8, 5000
    hidden = torch.randn(batch, length, hidden_size, generator=gen) * 3
    weight = torch.randn(vocab, hidden_size, generator=gen)
    bias = torch.randn(vocab, generator=gen) * 4 - 12
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 150:] = False
    mask[2, 3:] = False
    hidden[~mask] = 50.0
    head = SpladeHead(weight, bias, screen=screen)
    tokens = int(mask.sum())
    assert tokens * vocab <= head.single_pass_elements  # packed...
    assert 1024 * 1024 // tokens < vocab  # ...and more than one block of columns
    got = to_dense(head(hidden, mask), batch, vocab)
    expected = brute_force(hidden, mask, weight, bias, "max", "relu")
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert ((got > 0) == (expected > 0)).all()
    assert int((expected > 0).sum()) > 0
