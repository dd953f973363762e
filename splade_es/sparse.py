"""SparseBatch: what crosses from the encoder to the rest of the package.

Rows of (vocabulary id, weight) pairs in CSR layout plus the vocabulary that names the ids.
NumPy only: nothing downstream of the encoder needs torch.

>>> batch = SparseBatch.from_rows([([3, 1], [0.5, 2.0]), ([], [])], vocab=("a", "b", "c", "d"))
>>> batch.to_dicts()
[{'b': 2.0, 'd': 0.5}, {}]
>>> float(batch.dot(batch)[0, 0])
4.25
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse


@dataclass(frozen=True)
class SparseBatch:
    """``indptr`` [n+1], ``indices`` [nnz] (sorted within a row), ``values`` [nnz] float32."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    vocab: Sequence[str] = field(repr=False)
    truncated: np.ndarray | None = field(default=None, repr=False)  # bool per row

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, weights) of row ``i``."""
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    def to_dict(self, i: int) -> dict[str, float]:
        ids, weights = self.row(i)
        return {
            self.vocab[j]: float(w) for j, w in zip(ids.tolist(), weights.tolist(), strict=True)
        }

    def to_dicts(self) -> list[dict[str, float]]:
        return [self.to_dict(i) for i in range(len(self))]

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        return scipy.sparse.csr_matrix(
            (self.values, self.indices, self.indptr), shape=(len(self), len(self.vocab))
        )

    def dot(self, other: SparseBatch) -> np.ndarray:
        """Dense [len(self), len(other)] matrix of exact dot products (float64)."""
        a = self.to_scipy().astype(np.float64)
        b = other.to_scipy().astype(np.float64)
        return np.asarray((a @ b.T).todense())

    @property
    def nnz_per_row(self) -> np.ndarray:
        return np.diff(self.indptr)

    def prune(self, *, top_k: int | None = None, min_weight: float | None = None) -> SparseBatch:
        """Keep per row the ``top_k`` largest weights and/or those >= ``min_weight``."""
        if top_k is None and min_weight is None:
            return self
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be >= 1")
        rows = []
        for i in range(len(self)):
            ids, weights = self.row(i)
            keep = np.ones(len(ids), dtype=bool)
            if min_weight is not None:
                keep &= weights >= min_weight
            if top_k is not None and keep.sum() > top_k:
                order = np.argsort(-weights, kind="stable")
                top = np.zeros(len(ids), dtype=bool)
                top[order[:top_k]] = True
                keep &= top
            rows.append((ids[keep], weights[keep]))
        return SparseBatch.from_rows(rows, vocab=self.vocab, truncated=self.truncated)

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[Sequence[int], Sequence[float]]],
        *,
        vocab: Sequence[str],
        truncated: np.ndarray | None = None,
    ) -> SparseBatch:
        indptr, indices, values = [0], [], []
        for ids, weights in rows:
            ids = np.asarray(ids, dtype=np.int64)
            order = np.argsort(ids, kind="stable")
            indices.append(ids[order])
            values.append(np.asarray(weights, dtype=np.float32)[order])
            indptr.append(indptr[-1] + len(ids))
        return cls(
            indptr=np.asarray(indptr, dtype=np.int64),
            indices=np.concatenate(indices).astype(np.int32) if indices else np.zeros(0, np.int32),
            values=np.concatenate(values) if values else np.zeros(0, np.float32),
            vocab=vocab,
            truncated=truncated,
        )

    @classmethod
    def concat(cls, batches: Sequence[SparseBatch]) -> SparseBatch:
        if not batches:
            raise ValueError("concat needs at least one batch")
        offsets = np.cumsum([0] + [b.indptr[-1] for b in batches[:-1]])
        indptr = np.concatenate(
            [[0]] + [b.indptr[1:] + off for b, off in zip(batches, offsets, strict=True)]
        )
        truncated = (
            np.concatenate([b.truncated for b in batches])
            if all(b.truncated is not None for b in batches)
            else None
        )
        return cls(
            indptr=indptr.astype(np.int64),
            indices=np.concatenate([b.indices for b in batches]),
            values=np.concatenate([b.values for b in batches]),
            vocab=batches[0].vocab,
            truncated=truncated,
        )
