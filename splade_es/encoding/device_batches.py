"""Batches for an accelerator (CUDA, XPU, MPS): laid out on the host, pooled without a wait.

On a CPU every torch call runs when it is made. On a GPU a call only queues work, and whatever
reads a result on the host (``int(t)``, ``.tolist()``, ``nonzero``, a boolean index, a copy
from pageable memory) waits until the queue has drained: the GPU then idles while Python
prepares the next batch. The CPU-shaped path did about twenty such waits per batch (one per
vocabulary chunk, and the mask and length reads of the forward), and the first H200 run
measured 1,026 docs/s for a DistilBERT-sized model whose forward alone ran 3x faster
(benchmarks/RESULTS.md, "GPU"). Here:

* ``DeviceBatch.build`` lays the batch out on the host from the token ids it already has: the
  packed ids, each row's length, where each token sits in the padded [B, L] layout attention
  uses, and which token each padded pooling slot copies (a row's first, for the pads: a
  duplicate never changes a max); the arrays go over through pinned memory without waiting;
* the head pools into a dense [B, V] block on the device (``SpladeHead.dense_max``), queued;
* ``PendingRows.collect`` is the batch's one wait: the block's non-zeros, copied to the host.

The encoder queues batch k+1 before it collects batch k, so the device has work while the
host splits results (``SpladeEncoder._encode_window``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

Rows = list[tuple[np.ndarray, np.ndarray]]


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` on ``device``, copied from pinned memory without making the host wait (the
    pinned buffer stays reserved until the copy has run: torch's host allocator records it)."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass(frozen=True)
class DeviceBatch:
    """One batch of token id rows, laid out for the device (tensors already there)."""

    lengths: list[int]
    length: int  # the longest row: L of the padded layouts
    ids: torch.Tensor  # [T] the rows' ids one row after another
    row_lengths: torch.Tensor  # [B]
    slots: torch.Tensor  # [T] each token's place in the padded [B * L] layout
    gather: torch.Tensor  # [B * L] the packed token each padded slot reads (pads: row's first)
    padded_ids: torch.Tensor | None = None  # [B, L] for a model that takes padded rows
    mask: torch.Tensor | None = None  # [B, L] bool, real tokens

    @classmethod
    def build(
        cls, ids: list[list[int]], device: torch.device, *, pad_id: int | None = None
    ) -> DeviceBatch:
        """``ids``: one row of token ids per text, none empty. With ``pad_id`` the padded
        [B, L] ids and mask are built too (for transformers' forward).

        >>> batch = DeviceBatch.build([[5, 6, 7], [8]], torch.device("cpu"), pad_id=0)
        >>> batch.slots.tolist(), batch.gather.tolist()
        ([0, 1, 2, 3], [0, 1, 2, 3, 3, 3])
        >>> batch.padded_ids.tolist()
        [[5, 6, 7], [8, 0, 0]]
        """
        lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        length = int(lengths.max())
        positions = np.arange(length, dtype=np.int64)
        real = positions[None, :] < lengths[:, None]  # [B, L]
        starts = np.cumsum(lengths) - lengths
        gather = starts[:, None] + np.where(real, positions[None, :], 0)
        padded_ids = mask = None
        if pad_id is not None:
            padded = np.full(real.shape, pad_id, dtype=np.int64)
            padded[real] = flat  # row-major: the rows' tokens in order
            padded_ids, mask = to_device(padded, device), to_device(real, device)
        return cls(
            lengths=lengths.tolist(),
            length=length,
            ids=to_device(flat, device),
            row_lengths=to_device(lengths, device),
            slots=to_device(np.flatnonzero(real), device),
            gather=to_device(gather.reshape(-1), device),
            padded_ids=padded_ids,
            mask=mask,
        )


class PendingRows:
    """A batch's pooled [B, V] weights still on the device; ``collect`` waits for them and
    returns (ids ascending, weights) per row."""

    def __init__(self, pooled: torch.Tensor) -> None:
        self.pooled = pooled

    def collect(self) -> Rows:
        count, vocab = self.pooled.shape
        flat = self.pooled.reshape(-1)
        at = flat.nonzero().squeeze(1)  # the wait: nonzero's size is known only afterwards
        values = flat[at].cpu().numpy()
        # row-major order: rows ascending, and ids ascending within a row
        rows, cols = np.divmod(at.cpu().numpy(), vocab)
        bounds = np.searchsorted(rows, np.arange(count + 1))
        return [
            (cols[bounds[i] : bounds[i + 1]], values[bounds[i] : bounds[i + 1]])
            for i in range(count)
        ]


__all__ = ["DeviceBatch", "PendingRows", "to_device"]
