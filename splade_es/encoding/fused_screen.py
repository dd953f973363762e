"""The screen for short inputs (a query, a few of them): one bf16 product says which vocabulary
entries can be non-zero, so that only those are computed exactly.

For one query of ~20 tokens the head's cost is reading the [V, H] projection (7.8 MB in bf16
for a BERT vocabulary), and then every op over the [tokens, V] block of logits: torch's bf16
max over tokens alone costs a third of the product. So the threshold goes into the product,
and the reduction is done on integers. With ``n`` >= every token's ``||x||``, oneDNN computes,
on its prepacked copy of ``bf16(W)``,

    R = relu(bf16(x) . bf16(w) + beta)      beta >= b + 4u n ||w|| + 2^-10 |b| + 2^-100

per token and vocabulary row (``beta`` rounded up to bf16; u = 2^-8, bf16's unit roundoff),
and a vocabulary id is a candidate when some token has ``R > 0``. ``R`` is never negative, and
non-negative bf16 numbers order like their bits read as int16, whose max torch computes ~8x
faster than a bf16 max. Many tokens (a micro-batch) go through blocks of vocabulary rows.

Why no positive logit is missed. ``|x.w - bf16(x).bf16(w)| <= (2u + u^2) ||x|| ||w||``; if the
product is rounded to bf16 before the bias is added (oneDNN adds it in fp32, but the margin
does not rely on that), that costs at most ``u (1 + u)^2 ||x|| ||w||`` more. So the exact sum is

    >= (x.w + b) + (u - 3u^2 - u^3) ||x|| ||w|| + 2^-10 |b| + 2^-100,

and when ``x.w + b > 0`` that surplus exceeds the fp32 accumulation error (at most
~(H + 1) 2^-24 times the terms' magnitudes, ~(1 + 6u) ||x|| ||w|| + 2 |b|, for hidden sizes H
up to ~10,000; BERT-large's is 1,024). The 2^-100 also covers bf16 denormal inputs, which AMX
reads as zero. So ``R`` is at least 2^-100, a normal number that neither rounding to bf16 nor
a flush of denormal outputs takes to 0. Ids that are not candidates have a logit <= 0 for every
token: exactly 0 after ``relu``. The caller computes the candidates exactly, in fp32.
"""

from __future__ import annotations

import torch

_BF16 = torch.bfloat16
_U = 2.0**-8  # bfloat16 unit roundoff (8 significant bits)
_FLOOR = 2.0**-100
# Up to this many tokens (a query, a few short ones) one product covers the whole vocabulary:
# reading the weights is the cost there. Beyond, blocks of rows keep each product's output
# cache-sized (a micro-batch of 32 queries is ~700 tokens). Both measured on splade-tiny.
_WHOLE_PRODUCT_TOKENS = 64
_BLOCK_ROWS = 4096


def _bf16_at_least(x: torch.Tensor) -> torch.Tensor:
    """bf16 values >= ``x`` (fp32): x + |x| 2^-7 rounded to nearest never lands below x."""
    return torch.add(x, x.abs(), alpha=2.0**-7).to(_BF16)


class FusedScreen:
    """``columns(packed)`` -> the sorted vocabulary ids that may be non-zero for some token.

    >>> weight, bias = torch.randn(40, 8), torch.randn(40)
    >>> screen = FusedScreen.build(weight, bias)
    >>> x = torch.randn(5, 8)
    >>> positive = ((x @ weight.T + bias).amax(dim=0) > 0).nonzero().flatten()
    >>> screen is None or set(positive.tolist()) <= set(screen.columns(x).tolist())
    True
    """

    def __init__(
        self,
        whole: torch.Tensor,
        blocks: list[tuple[int, int, torch.Tensor]],
        margin: torch.Tensor,
        base: torch.Tensor,
    ) -> None:
        self._whole = whole  # oneDNN's prepacked bf16 [V, H], for a few tokens
        self._blocks = blocks  # (first id, end id, prepacked rows), for many tokens
        self._margin = margin  # 4u ||w||, per vocabulary row (fp32)
        self._base = base  # b + 2^-10 |b| + 2^-100 (fp32)

    @classmethod
    def build(
        cls, weight: torch.Tensor, bias: torch.Tensor, *, block_rows: int = _BLOCK_ROWS
    ) -> FusedScreen | None:
        """The screen for fp32 ``weight`` [V, H] and ``bias`` [V], or None where this torch
        has no prepacked bf16 product on this CPU (the caller screens block by block)."""
        mkldnn = getattr(torch.ops, "mkldnn", None)
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or mkldnn is None:
            return None
        weight, bias = weight.detach(), bias.detach().float()
        margin = (4 * _U * weight.double().norm(dim=1) * (1 + 2.0**-20)).float()
        base = bias + 2.0**-10 * bias.abs() + _FLOOR
        rounded = weight.to(_BF16)
        try:
            if not mkldnn._is_mkldnn_bf16_supported():
                return None
            whole = mkldnn._reorder_linear_weight(rounded, 32)
            vocab_size = rounded.shape[0]
            blocks = [
                (start, end, mkldnn._reorder_linear_weight(rounded[start:end], 256))
                for start in range(0, vocab_size, block_rows)
                for end in [min(start + block_rows, vocab_size)]
            ]
            screen = cls(whole, blocks, margin, base)
            # The margin assumes an fp32-accumulated product: accepted only if the prepacked
            # path gives the plain product's bits on a probe.
            probe = torch.randn(7, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(
                _BF16
            )
            if not torch.equal(_relu_product(probe, whole, None), torch.relu(probe @ rounded.t())):
                return None
        except (AttributeError, RuntimeError, TypeError):
            return None
        return screen

    def columns(self, packed: torch.Tensor) -> torch.Tensor:
        """``packed`` [T, H] fp32 (any rows' tokens): the ids, ascending, of the vocabulary
        entries whose logit may be > 0 for at least one of the tokens."""
        # The largest token norm, rounded up past fp32's error in computing it.
        n = float(packed.norm(dim=1).amax()) * (1 + 2.0**-10)
        beta = _bf16_at_least(torch.add(self._base, self._margin, alpha=n))
        tokens = _bucketed(packed.to(_BF16))
        if tokens.shape[0] <= _WHOLE_PRODUCT_TOKENS:
            return _positive_columns(_relu_product(tokens, self._whole, beta))
        parts = []
        for start, end, block in self._blocks:
            positive = _relu_product(tokens, block, beta[start:end])
            parts.append(_positive_columns(positive) + start)
        return torch.cat(parts)


def _bucketed(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` padded with copies of its last row (a duplicate never changes a max) to a
    multiple of 8 (up to 64 rows) or 64: oneDNN compiles a kernel for every new number of rows,
    ~1 ms for a query and ~20 ms for a micro-batch, so the row counts are kept to a few."""
    count = tokens.shape[0]
    step = 8 if count <= _WHOLE_PRODUCT_TOKENS else 64
    padded = -(-count // step) * step
    if padded == count:
        return tokens
    return torch.cat([tokens, tokens[-1:].expand(padded - count, -1)])


def _relu_product(x: torch.Tensor, packed: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """relu(x @ W^T + beta) on a prepacked bf16 W: [T, rows], never negative."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, beta, "relu", [None], "")


def _positive_columns(block: torch.Tensor) -> torch.Tensor:
    """Columns of a non-negative bf16 block with some entry > 0. Non-negative bf16 numbers
    order like their bits read as int16, and torch's int16 max is ~8x faster than its bf16 one."""
    return block.view(torch.int16).amax(dim=0).nonzero(as_tuple=True)[0]


__all__ = ["FusedScreen"]
