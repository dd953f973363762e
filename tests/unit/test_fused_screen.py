"""FusedScreen: the one-product screen for short inputs must never drop an entry whose logit is
positive (the head's exactness rests on it) and must leave few others to recompute."""

from __future__ import annotations

import pytest
import torch

from splade_es.encoding.fused_screen import FusedScreen
from splade_es.encoding.pooling import SpladeHead

pytestmark = pytest.mark.skipif(
    FusedScreen.build(torch.randn(64, 16), torch.zeros(64)) is None,
    reason="this torch / CPU has no oneDNN bf16 product (the head screens block by block)",
)


def positive_ids(packed, weight, bias):
    """Vocabulary ids whose exact logit (float64) is > 0 for some token."""
    logits = packed.double() @ weight.double().T + bias.double()
    return set((logits.amax(0) > 0).nonzero().flatten().tolist())


@pytest.mark.parametrize("hidden_size", [8, 128, 768])
@pytest.mark.parametrize("tokens", [1, 23, 64, 65, 300])  # one product, or blocks of rows
def test_no_positive_entry_is_missed_even_a_hair_above_zero(hidden_size, tokens):
    gen = torch.Generator().manual_seed(hidden_size + tokens)
    vocab = 9000
    packed = torch.randn(tokens, hidden_size, generator=gen) * 4
    weight = torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5
    exact = (packed.double() @ weight.double().T).amax(0)
    # Put every logit's maximum within a few float32 ulps of zero, on both sides: where a
    # screen with too small a margin would drop entries.
    bias = (-exact + torch.linspace(-1e-5, 1e-5, vocab, dtype=torch.float64)).float()
    screen = FusedScreen.build(weight, bias)
    assert screen is not None
    columns = screen.columns(packed)
    assert torch.equal(columns, columns.sort().values)  # ascending, no repeats
    assert len(set(columns.tolist())) == len(columns)
    truth = positive_ids(packed, weight, bias)
    assert len(truth) > 100
    assert truth <= set(columns.tolist())


def test_splade_like_logits_leave_few_candidates():
    gen = torch.Generator().manual_seed(3)
    hidden_size, vocab = 128, 30000
    packed = torch.randn(20, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5
    bias = torch.full((vocab,), -3.0)  # a fraction of a percent active, as with SPLADE
    truth = positive_ids(packed, weight, bias)
    columns = set(FusedScreen.build(weight, bias).columns(packed).tolist())
    assert truth <= columns
    assert len(truth) > 50
    assert len(columns) < 3 * len(truth)


def test_head_with_the_fused_screen_equals_brute_force():
    gen = torch.Generator().manual_seed(11)
    hidden_size, vocab = 32, 4000
    hidden = torch.randn(3, 10, hidden_size, generator=gen) * 3
    weight = torch.randn(vocab, hidden_size, generator=gen)
    bias = torch.randn(vocab, generator=gen) * 4 - 14
    head = SpladeHead(weight, bias, screen=True)
    assert head.fused is not None
    for mask_lengths in ([10], [10, 10, 10], [10, 3, 7], [1, 1]):
        batch = len(mask_lengths)
        mask = torch.zeros(batch, 10, dtype=torch.bool)
        for row, length in enumerate(mask_lengths):
            mask[row, :length] = True
        out = head(hidden[:batch], mask)
        got = torch.zeros(batch, vocab, dtype=torch.float64)
        got[out.rows, out.cols] = out.values.double()
        logits = hidden[:batch].double() @ weight.double().T + bias.double()
        logits = logits.masked_fill(~mask[..., None], float("-inf"))
        expected = torch.log1p(torch.relu(logits.amax(1)))
        assert torch.equal(got > 0, expected > 0)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert int((expected > 0).sum()) > 0


def test_only_fp32_weights_on_the_cpu_get_one():
    weight = torch.randn(64, 16)
    assert FusedScreen.build(weight.double(), torch.zeros(64)) is None
    assert FusedScreen.build(weight.to(torch.bfloat16), torch.zeros(64)) is None
