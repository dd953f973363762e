"""SPLADE pooling over the vocabulary head, computed without the batch x length x vocab tensor.

The reference formula (per document, per vocabulary entry ``v``)::

    weight[v] = max over unmasked positions l of  log(1 + relu(h_l . w_v + b_v))

is computed here in vocabulary chunks. Three facts make it cheap and still exact:

* ``log1p(relu(.))`` is monotone, so the max can be taken on raw logits and the activation
  applied to ``B x V`` numbers instead of ``B x L x V``; the bias is constant over positions,
  so it is added after the max too.
* Padding positions are overwritten with a copy of the document's first position: a
  duplicate never changes a max, so no mask has to be applied to the big logits tensor.
* Optional *screening* (CPUs with fast bf16): a bf16 pass bounds every logit within a proven
  rounding margin; only entries whose upper bound can be positive are recomputed in fp32.
  Every other entry is provably <= 0, i.e. exactly 0 after relu. Results are fp32-exact.

Sum pooling (``pooling="sum"``) applies the activation per position, as the formula requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Pooling = Literal["max", "sum"]
Activation = Literal["relu", "log1p_relu"]

# Unit roundoff of bfloat16 (8 significant bits). The screening margin is 5u * |h| * |w|:
# 2u for rounding both inputs, u for rounding the product sum to bf16, and slack for the fp32
# accumulation (H * 2^-24, far below u for any hidden size under 65k).
_BF16_UNIT_ROUNDOFF = 2.0**-8
_SCREEN_MARGIN = 5 * _BF16_UNIT_ROUNDOFF


@dataclass(frozen=True)
class SparseRows:
    """Non-zero entries of a pooled batch, still on the compute device."""

    rows: torch.Tensor  # int64 [nnz], row within the batch
    cols: torch.Tensor  # int64 [nnz], vocabulary id
    values: torch.Tensor  # float32 [nnz]


def activate(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    x = torch.log1p(torch.relu(x))
    return torch.log1p(x) if activation == "log1p_relu" else x


class SpladeHead:
    """The MLM output projection plus SPLADE pooling, evaluated chunk by chunk.

    >>> head = SpladeHead(torch.randn(50, 8), torch.zeros(50), vocab_chunk=16)
    >>> out = head(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    >>> bool((out.values > 0).all())
    True
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        pooling: Pooling = "max",
        activation: Activation = "relu",
        vocab_chunk: int = 4096,
        screen: bool = False,
    ) -> None:
        if pooling not in ("max", "sum"):
            raise ValueError(f"pooling must be 'max' or 'sum', not {pooling!r}")
        if activation not in ("relu", "log1p_relu"):
            raise ValueError(f"activation must be 'relu' or 'log1p_relu', not {activation!r}")
        weight = weight.detach()
        vocab_size = weight.shape[0]
        self.pooling = pooling
        self.activation = activation
        self.screen = screen and pooling == "max"
        self.bias = (
            bias.detach().float()
            if bias is not None
            else weight.new_zeros(vocab_size, dtype=torch.float32)
        )
        # [H, Vc] contiguous slices: x @ W^T in chunks, the layout BLAS is fastest with.
        self.bounds = [
            (s, min(s + vocab_chunk, vocab_size)) for s in range(0, vocab_size, vocab_chunk)
        ]
        self.chunks = [weight[s:e].t().contiguous() for s, e in self.bounds]
        if self.screen:
            self.chunks_bf16 = [c.to(torch.bfloat16) for c in self.chunks]
            self.weight_norms = weight.float().norm(dim=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.chunks[0].dtype

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> SparseRows:
        """``hidden`` [B, L, H] (after the MLM transform), ``mask`` [B, L] bool."""
        hidden = hidden.to(self.dtype)
        if self.pooling == "max":
            # Pad positions become copies of position 0 (always a real token).
            hidden = torch.where(mask.unsqueeze(-1), hidden, hidden[:, :1, :])
        parts = [self._chunk(hidden, mask, i) for i in range(len(self.chunks))]
        return SparseRows(
            rows=torch.cat([p[0] for p in parts]),
            cols=torch.cat([p[1] for p in parts]),
            values=torch.cat([p[2] for p in parts]),
        )

    def _chunk(self, hidden: torch.Tensor, mask: torch.Tensor, i: int) -> tuple[torch.Tensor, ...]:
        start, end = self.bounds[i]
        if self.screen:
            pooled = self._screened_max(hidden, i)
        elif self.pooling == "max":
            pooled = activate(
                (hidden @ self.chunks[i]).amax(dim=1).float() + self.bias[start:end],
                self.activation,
            )
        else:
            logits = (hidden @ self.chunks[i]).float() + self.bias[start:end]
            pooled = (activate(logits, self.activation) * mask.unsqueeze(-1)).sum(dim=1)
        rows, cols = pooled.nonzero(as_tuple=True)
        return rows, cols + start, pooled[rows, cols].float()

    def _screened_max(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """Max pooling where a bf16 pass rules out entries that cannot be positive."""
        start, end = self.bounds[i]
        bias = self.bias[start:end]
        approx = (hidden.to(torch.bfloat16) @ self.chunks_bf16[i]).amax(dim=1).float()
        margin = (
            _SCREEN_MARGIN
            * hidden.norm(dim=-1).amax(dim=1, keepdim=True)
            * self.weight_norms[start:end]
        )
        candidate = approx + margin + bias > 0  # [B, Vc]
        pooled = torch.zeros_like(approx)
        for b in range(hidden.shape[0]):
            cols = candidate[b].nonzero(as_tuple=True)[0]
            if cols.numel():
                exact = (hidden[b] @ self.chunks[i][:, cols]).amax(dim=0) + bias[cols]
                pooled[b, cols] = activate(exact, self.activation)
        return pooled
