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
  Short inputs (a query, a micro-batch of them: ``pool_packed``) are screened by
  ``FusedScreen`` (fused_screen.py): the margin and the bias go into one oneDNN product, and
  the union of their candidates is computed exactly for every row.

Sum pooling (``pooling="sum"``) applies the activation per position, as the formula requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..exceptions import ConfigurationError
from .fused_screen import FusedScreen

Pooling = Literal["max", "sum"]
Activation = Literal["relu", "log1p_relu"]

# Unit roundoff of bfloat16 (8 significant bits). The screening margin is 5u * |h| * |w|:
# 2u for rounding both inputs, u for rounding the product sum to bf16, and slack for the fp32
# accumulation (H * 2^-24, far below u for any hidden size under 65k).
_BF16_UNIT_ROUNDOFF = 2.0**-8
_SCREEN_MARGIN = 5 * _BF16_UNIT_ROUNDOFF

# Logits blocks up to this many entries are computed in one pass over the whole vocabulary
# (one query against a BERT vocabulary is ~0.4M; a micro-batch of 32 queries ~15M, 30 MB in
# bf16); larger ones chunk by chunk.
SINGLE_PASS_ELEMENTS = 24 * 1024 * 1024
# Packed batches on the fused screen go up to this many tokens: a micro-batch of 32 queries
# is ~800. Every row is computed exactly on the union of the batch's candidates, a product
# that grows with tokens x rows; long documents go the padded way, row by row.
FUSED_PACKED_TOKENS = 2048
# A packed block's logits stay about this size (2 MB in bf16: cache-resident).
_PACKED_BLOCK_ELEMENTS = 1024 * 1024
# ``dense_max`` (accelerators) evaluates the vocabulary in blocks of about this many logits
# (512 MB in bf16), whatever the batch: the block is transient and nothing waits between blocks.
DENSE_BLOCK_ELEMENTS = 1 << 28
# What one small op costs in dispatch overhead, in FLOPs of a CPU matmul (~10 us at
# ~50 GFLOP/s): the per-row recompute pays a handful of them for every row.
_ROW_OVERHEAD_FLOPS = 5_000_000


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

    The chunk width is chosen per call by size: a short input (a query) is done in one pass
    over the whole vocabulary, which saves the per-chunk overhead that dominates at that
    size; a long batch goes ``vocab_chunk`` columns at a time so the logits block stays small.
    Both compute every entry as the same fp32 dot product (chunks are views of one weight
    matrix), so they agree up to float32 rounding.

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
        single_pass_elements: int = SINGLE_PASS_ELEMENTS,
    ) -> None:
        if pooling not in ("max", "sum"):
            raise ConfigurationError.bad_value("pooling", pooling, "must be 'max' or 'sum'")
        if activation not in ("relu", "log1p_relu"):
            raise ConfigurationError.bad_value(
                "activation", activation, "must be 'relu' or 'log1p_relu'"
            )
        weight = weight.detach()
        vocab_size = weight.shape[0]
        self.pooling = pooling
        self.activation = activation
        self.screen = screen and pooling == "max"
        self.single_pass_elements = single_pass_elements
        self.bias = (
            bias.detach().float()
            if bias is not None
            else weight.new_zeros(vocab_size, dtype=torch.float32)
        )
        # One contiguous [H, V] matrix (x @ W^T is the layout BLAS is fastest with); chunks
        # are column views of it, so the single-pass path costs no extra memory.
        self.matrix = weight.t().contiguous()
        self.vocab_chunk = vocab_chunk
        self.bounds = [
            (s, min(s + vocab_chunk, vocab_size)) for s in range(0, vocab_size, vocab_chunk)
        ]
        self.fused: FusedScreen | None = None
        if self.screen:
            self.matrix_bf16 = self.matrix.to(torch.bfloat16)
            self.neg_bias = -self.bias
            self.margin_norms = _SCREEN_MARGIN * weight.float().norm(dim=1)
            # Short inputs (a query) are screened in one fused product (fused_screen.py);
            # None where torch has no oneDNN bf16 path: they go block by block then.
            self.fused = FusedScreen.build(weight, self.bias)
            # The candidates' exact recompute gathers their weight rows: contiguous in the
            # [V, H] layout (a gather of [H, V] columns costs ~8x more). Usually no copy: the
            # projection is tied to the input embeddings, which the model keeps anyway.
            self.rows = weight

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def vocab_size(self) -> int:
        return self.matrix.shape[1]

    def bounds_for(self, batch: int, length: int) -> list[tuple[int, int]]:
        """The column ranges to evaluate: the whole vocabulary at once when the
        ``batch x length x vocab`` logits block is small, else ``vocab_chunk`` at a time."""
        if batch * length * self.vocab_size <= self.single_pass_elements:
            return [(0, self.vocab_size)]
        return self.bounds

    def takes_packed(self, tokens: int) -> bool:
        """Whether ``pool_packed`` applies to a batch of ``tokens`` real tokens: short inputs
        (a query, a micro-batch of them; longer ones on the fused screen, whose products go
        block by block, up to ``FUSED_PACKED_TOKENS``). Longer batches pad to their longest
        row and screen each row on its own (fewer exact recomputes for long documents)."""
        if self.pooling != "max":
            return False
        if self.fused is not None and tokens <= FUSED_PACKED_TOKENS:
            return True
        return tokens * self.vocab_size <= self.single_pass_elements

    def pool_packed(self, packed: torch.Tensor, lengths: list[int]) -> SparseRows:
        """Max pooling of rows given without padding: ``packed`` [T, H], ``lengths`` tokens
        per row (all > 0). Needs ``takes_packed(T)``."""
        return self._packed_max(packed.to(self.dtype), lengths)

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> SparseRows:
        """``hidden`` [B, L, H] (after the MLM transform), ``mask`` [B, L] bool."""
        hidden = hidden.to(self.dtype)
        if self.pooling == "max":
            lengths = mask.sum(dim=1)
            tokens = int(lengths.sum())
            if tokens * self.vocab_size <= self.single_pass_elements and bool(lengths.all()):
                unpadded = tokens == mask.numel()  # one query, or queries of one length
                packed = hidden.reshape(tokens, -1) if unpadded else hidden[mask]
                return self._packed_max(packed, lengths.tolist())
            # Pad positions become copies of position 0 (always a real token).
            hidden = torch.where(mask.unsqueeze(-1), hidden, hidden[:, :1, :])
        bounds = self.bounds_for(hidden.shape[0], hidden.shape[1])
        parts = [self._chunk(hidden, mask, start, end) for start, end in bounds]
        if len(parts) == 1:
            rows, cols, values = parts[0]
            return SparseRows(rows=rows, cols=cols, values=values)
        return SparseRows(
            rows=torch.cat([p[0] for p in parts]),
            cols=torch.cat([p[1] for p in parts]),
            values=torch.cat([p[2] for p in parts]),
        )

    def dense_max(self, hidden: torch.Tensor) -> torch.Tensor:
        """Max pooling into the dense [B, V] fp32 weights (0 where the formula gives 0) of
        ``hidden`` [B, L, H] whose every position is a real token or a copy of one of its
        row's (``DeviceBatch.gather``): no mask, and nothing that makes the host wait for the
        device, so an accelerator can queue the next batch behind it. Max pooling only.

        >>> head = SpladeHead(torch.randn(50, 8), torch.zeros(50), vocab_chunk=16)
        >>> hidden = torch.randn(2, 5, 8)
        >>> rows = head(hidden, torch.ones(2, 5, dtype=torch.bool))
        >>> dense = head.dense_max(hidden)
        >>> bool(torch.allclose(dense[rows.rows, rows.cols], rows.values))
        True
        >>> int((dense > 0).sum()) == rows.values.numel()
        True
        """
        if self.pooling != "max":
            raise ConfigurationError("dense_max is max pooling only")
        hidden = hidden.to(self.dtype)
        batch, length, _ = hidden.shape
        vocab = self.vocab_size
        width = min(vocab, max(self.vocab_chunk, DENSE_BLOCK_ELEMENTS // max(batch * length, 1)))
        pooled = torch.empty(batch, vocab, dtype=torch.float32, device=hidden.device)
        for start in range(0, vocab, width):
            end = min(start + width, vocab)
            pooled[:, start:end] = (hidden @ self.matrix[:, start:end]).amax(dim=1)
        return activate(pooled.add_(self.bias), self.activation)

    def _packed_max(self, packed: torch.Tensor, lengths: list[int]) -> SparseRows:
        """Max pooling over the real tokens only: ``packed`` [T, H] holds the rows' tokens
        one row after another, so a micro-batch of short queries of mixed lengths does not
        pay for its longest one in every row. Columns go in blocks whose logits stay
        cache-sized (the whole vocabulary at once for one query)."""

        def row_max(x: torch.Tensor) -> torch.Tensor:  # [T, N] -> [B, N]
            if len(lengths) == 1:
                return x.amax(dim=0, keepdim=True)
            return torch.stack([part.amax(dim=0) for part in torch.split(x, lengths)])

        if self.screen:
            # Screen the union over all tokens (one reduction, not one per row), then compute
            # every row on those columns exactly: values > 0 there are exactly the non-zeros.
            columns = self.fused.columns(packed) if self.fused else self._bf16_columns(packed)
            weights = torch.index_select(self.rows, 0, columns)  # [n, H], contiguous rows
            values = activate(row_max(packed @ weights.t()) + self.bias[columns], self.activation)
            rows, at = (values > 0).nonzero(as_tuple=True)
            return SparseRows(rows, columns[at], values[rows, at])
        width = max(2048, _PACKED_BLOCK_ELEMENTS // packed.shape[0])
        parts = []
        for start in range(0, self.vocab_size, width):
            end = min(start + width, self.vocab_size)
            logits = row_max(packed @ self.matrix[:, start:end]).float()
            pooled = activate(logits + self.bias[start:end], self.activation)
            rows, cols = pooled.nonzero(as_tuple=True)
            parts.append((rows, cols + start, pooled[rows, cols]))
        if len(parts) == 1:
            return SparseRows(*parts[0])
        return SparseRows(*(torch.cat(column) for column in zip(*parts, strict=True)))

    def _bf16_columns(self, packed: torch.Tensor) -> torch.Tensor:
        """The screen without oneDNN's fused product: bf16 products block by block, each
        column's max over all tokens against its proven margin. Ascending column ids."""
        width = max(2048, _PACKED_BLOCK_ELEMENTS // packed.shape[0])
        norm = packed.norm(dim=-1).amax()
        tokens = packed.to(torch.bfloat16)
        parts = []
        for start in range(0, self.vocab_size, width):
            end = min(start + width, self.vocab_size)
            approx = (tokens @ self.matrix_bf16[:, start:end]).amax(dim=0)
            candidate = self._may_be_positive(approx, norm, start, end)
            parts.append(candidate.nonzero(as_tuple=True)[0] + start)
        return torch.cat(parts)

    def _may_be_positive(
        self, approx: torch.Tensor, norms: torch.Tensor, start: int, end: int
    ) -> torch.Tensor:
        """Which bf16 maxima ``approx`` (columns ``start:end``) can hide a positive logit:
        approx + margin + bias > 0, i.e. approx > -bias - |h| * (5u |w_v|), with the constant
        parts precomputed. ``norms`` is the largest token norm (per row, or of them all)."""
        threshold = torch.addcmul(
            self.neg_bias[start:end], norms, self.margin_norms[start:end], value=-1.0
        )
        return approx.float() > threshold

    def _chunk(
        self, hidden: torch.Tensor, mask: torch.Tensor, start: int, end: int
    ) -> tuple[torch.Tensor, ...]:
        if self.screen:
            return self._screened_max(hidden, start, end)
        if self.pooling == "max":
            pooled = activate(
                (hidden @ self.matrix[:, start:end]).amax(dim=1).float() + self.bias[start:end],
                self.activation,
            )
        else:
            logits = (hidden @ self.matrix[:, start:end]).float() + self.bias[start:end]
            pooled = (activate(logits, self.activation) * mask.unsqueeze(-1)).sum(dim=1)
        rows, cols = pooled.nonzero(as_tuple=True)
        return rows, cols + start, pooled[rows, cols].float()

    def _screened_max(self, hidden: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, ...]:
        """Max pooling where a bf16 pass rules out entries that cannot be positive; the
        candidates left are recomputed in fp32. Returns (rows, cols, values) of the non-zeros.
        """
        approx = (hidden.to(torch.bfloat16) @ self.matrix_bf16[:, start:end]).amax(dim=1)
        norms = hidden.norm(dim=-1).amax(dim=1, keepdim=True)  # per row
        candidate = self._may_be_positive(approx, norms, start, end)  # [B, Vc]
        batch, length, hidden_size = hidden.shape
        union = candidate.any(dim=0).nonzero(as_tuple=True)[0]
        # Recompute the candidates exactly, whichever way is cheaper: all rows against the
        # union of their candidate columns in one product (few ops: short inputs, where
        # per-op overhead dominates), or each row against its own columns (fewest FLOPs:
        # long documents, whose candidate sets differ). Both are the same fp32 dot products.
        union_flops = batch * length * hidden_size * union.numel()
        row_flops = length * hidden_size * int(candidate.sum())
        if union_flops <= row_flops + batch * _ROW_OVERHEAD_FLOPS:
            return self._exact_union(hidden, candidate, union, start)
        parts = []
        for b in range(batch):
            cols = candidate[b].nonzero(as_tuple=True)[0] + start
            if cols.numel():
                exact = (hidden[b] @ self.matrix[:, cols]).amax(dim=0) + self.bias[cols]
                values = activate(exact, self.activation)
                keep = values > 0
                cols = cols[keep]
                parts.append((torch.full_like(cols, b), cols, values[keep]))
        if not parts:
            empty = torch.zeros(0, dtype=torch.long, device=hidden.device)
            return empty, empty, torch.zeros(0, device=hidden.device)
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    def _exact_union(
        self, hidden: torch.Tensor, candidate: torch.Tensor, union: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, ...]:
        cols = union + start
        exact = (hidden @ self.matrix[:, cols]).amax(dim=1) + self.bias[cols]  # [B, n]
        values = activate(exact, self.activation)
        rows, at = (candidate[:, union] & (values > 0)).nonzero(as_tuple=True)
        return rows, cols[at], values[rows, at]
