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

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import scipy.sparse

from .exceptions import ConfigurationError


class Vocabulary(Sequence[str]):
    """The model's output vocabulary: ``vocab[i]`` names output id ``i``.

    ``special_ids`` are the tokenizer's special tokens ([CLS], [SEP], [PAD], ...): they carry
    weights in the reference formula, but mean nothing as search terms, so the token codec
    drops them.

    >>> vocab = Vocabulary(["[PAD]", "tax", "##."], special_ids={0})
    >>> vocab[1], len(vocab), vocab.is_special(0)
    ('tax', 3, True)
    """

    __slots__ = ("_tokens", "special_ids")

    def __init__(self, tokens: Iterable[str], *, special_ids: Iterable[int] = ()) -> None:
        self._tokens = tuple(tokens)
        self.special_ids = frozenset(int(i) for i in special_ids)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...
    def __getitem__(self, i: int | slice) -> str | tuple[str, ...]:
        return self._tokens[i]

    def __len__(self) -> int:
        return len(self._tokens)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Vocabulary):
            return self._tokens == other._tokens and self.special_ids == other.special_ids
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._tokens, self.special_ids))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, {len(self.special_ids)} special)"

    def is_special(self, i: int) -> bool:
        return i in self.special_ids


def stored_precision(values: np.ndarray | Sequence[float]) -> np.ndarray:
    """What a ``rank_features`` / ``sparse_vector`` field gives back for ``values``.

    Lucene's FeatureField keeps the top 17 bits of the float32 (exponent and 8 mantissa bits,
    truncated): relative error < 2^-8. Scoring in-memory with these values reproduces the
    engine's ``_score`` up to summation order.

    >>> stored_precision([0.7, 1.5]).tolist()
    [0.69921875, 1.5]
    """
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    stored: np.ndarray = (bits & np.uint32(0xFFFF8000)).view(np.float32)
    return stored


# What "the same vector" means, everywhere (tests, doctor, the README): two encodings of one text
# agree when no weight differs by more than VECTOR_TOLERANCE times the larger of the two
# vectors' largest weights, a token absent from one counting as 0 there. float32 results
# depend on the shape of the computation (a text alone, padded in a batch, packed in a
# micro-batch; oneDNN's and BLAS's blocking differ by CPU), so equality to the bit is not a
# property anyone can promise; benchmarks/vector_agreement.py measures what the shapes do.
# The same rule covers the non-zero set: a token may be present on one side only while its
# weight is within the tolerance of 0, i.e. a logit that rounds to either side of zero.
VECTOR_TOLERANCE = 1e-5


def vector_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest weight difference of two ``{token: weight}`` vectors, relative to the
    larger of their largest weights (0.0 for two empty vectors); see ``same_vector``.

    >>> vector_difference({"tax": 2.0, "code": 1.0}, {"tax": 2.0, "code": 0.5})
    0.25
    >>> vector_difference({"tax": 2.0}, {"tax": 2.0, "form": 1e-6})
    5e-07
    """
    scale = max((abs(w) for w in (*a.values(), *b.values())), default=0.0)
    if scale == 0.0:
        return 0.0
    worst = max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in a.keys() | b.keys())
    return worst / scale


def same_vector(
    a: dict[str, float], b: dict[str, float], *, tolerance: float = VECTOR_TOLERANCE
) -> bool:
    """Whether two encodings of one text are the same vector (the project's one rule:
    ``vector_difference(a, b) <= tolerance``).

    >>> same_vector({"tax": 2.0, "code": 1e-6}, {"tax": 2.000001})
    True
    >>> same_vector({"tax": 2.0, "code": 0.5}, {"tax": 2.0})
    False
    """
    return vector_difference(a, b) <= tolerance


@dataclass(frozen=True)
class SparseBatch:
    """``indptr`` [n+1], ``indices`` [nnz] (sorted within a row), ``values`` [nnz] float32."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    vocab: Sequence[str] = field(repr=False)
    truncated: np.ndarray | None = field(default=None, repr=False)  # bool per row
    # windows encoded per row (long_documents="maxpool"); None: one each
    windows: np.ndarray | None = field(default=None, repr=False)

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

    def stored(self) -> SparseBatch:
        """This batch with every weight at the engines' storage precision (``stored_precision``)."""
        return SparseBatch(
            indptr=self.indptr,
            indices=self.indices,
            values=stored_precision(self.values),
            vocab=self.vocab,
            truncated=self.truncated,
            windows=self.windows,
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
            raise ConfigurationError.bad_value("top_k", top_k, "must be >= 1")
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
        return SparseBatch.from_rows(
            rows, vocab=self.vocab, truncated=self.truncated, windows=self.windows
        )

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]],
        *,
        vocab: Sequence[str],
        truncated: np.ndarray | None = None,
        windows: np.ndarray | None = None,
    ) -> SparseBatch:
        indptr: list[int] = [0]
        indices: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for row_ids, weights in rows:
            ids = np.asarray(row_ids, dtype=np.int64)
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
            windows=windows,
        )

    @classmethod
    def concat(cls, batches: Sequence[SparseBatch]) -> SparseBatch:
        if not batches:
            raise ConfigurationError("concat needs at least one batch")
        offsets = np.cumsum([0] + [b.indptr[-1] for b in batches[:-1]])
        indptr = np.concatenate(
            [[0]] + [b.indptr[1:] + off for b, off in zip(batches, offsets, strict=True)]
        )
        return cls(
            indptr=indptr.astype(np.int64),
            indices=np.concatenate([b.indices for b in batches]),
            values=np.concatenate([b.values for b in batches]),
            vocab=batches[0].vocab,
            truncated=_concat_optional([b.truncated for b in batches]),
            windows=_concat_optional([b.windows for b in batches]),
        )


def _concat_optional(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The parts joined, or None when any is None."""
    present = [p for p in parts if p is not None]
    return np.concatenate(present) if len(present) == len(parts) else None


@dataclass(frozen=True)
class PassageBatch:
    """Documents as passages (``long_documents="passages"``): one sparse vector per window.

    ``passages`` has one row per passage, each document's passages together and in text
    order; ``document[p]`` is passage ``p``'s document (0 .. len-1), ``spans[p]`` its
    ``(start, end)`` character offsets in the encoded text (end exclusive); ``truncated[d]``
    whether document ``d``'s tail was dropped (``max_windows``). A document may have no
    passage (an empty text under ``empty="empty_vector"``).

    >>> rows = SparseBatch.from_rows([([0], [1.0]), ([1], [2.0]), ([0, 1], [0.5, 0.5])],
    ...                              vocab=("tax", "code"))
    >>> batch = PassageBatch(rows, np.array([0, 0, 1]), np.array([[0, 9], [7, 20], [0, 4]]),
    ...                      np.array([False, False]))
    >>> batch.to_dicts()[1]
    [{'vector': {'tax': 0.5, 'code': 0.5}, 'start': 0, 'end': 4}]
    >>> query = SparseBatch.from_rows([([0, 1], [1.0, 1.0])], vocab=("tax", "code"))
    >>> batch.best_scores(query).tolist()
    [[2.0, 1.0]]
    """

    passages: SparseBatch
    document: np.ndarray  # int64 [P]
    spans: np.ndarray  # int64 [P, 2]
    truncated: np.ndarray  # bool [D]

    def __len__(self) -> int:
        return len(self.truncated)

    @property
    def vocab(self) -> Sequence[str]:
        return self.passages.vocab

    @property
    def windows(self) -> np.ndarray:
        """Passages per document."""
        return np.bincount(self.document, minlength=len(self)).astype(np.int64)

    def passage_range(self, d: int) -> range:
        """The passage rows of document ``d``."""
        lo, hi = np.searchsorted(self.document, [d, d + 1])
        return range(int(lo), int(hi))

    def to_dicts(self) -> list[list[dict[str, object]]]:
        """Per document, its passages as the index stores them (``defaults.PASSAGE_*``)."""
        from . import defaults

        return [
            [
                {
                    defaults.PASSAGE_VECTOR: self.passages.to_dict(p),
                    defaults.PASSAGE_START: int(self.spans[p, 0]),
                    defaults.PASSAGE_END: int(self.spans[p, 1]),
                }
                for p in self.passage_range(d)
            ]
            for d in range(len(self))
        ]

    def prune(self, *, top_k: int | None = None, min_weight: float | None = None) -> PassageBatch:
        """Every passage pruned as ``SparseBatch.prune`` prunes a row."""
        pruned = self.passages.prune(top_k=top_k, min_weight=min_weight)
        return PassageBatch(pruned, self.document, self.spans, self.truncated)

    def stored(self) -> PassageBatch:
        return PassageBatch(self.passages.stored(), self.document, self.spans, self.truncated)

    def best_scores(self, queries: SparseBatch) -> np.ndarray:
        """[len(queries), len(self)]: each document's best passage's exact dot product (0 for a
        document without passages), the score of a ``nested`` query with ``score_mode: max``."""
        scores = np.zeros((len(queries), len(self)), dtype=np.float64)
        if len(self.document) == 0:
            return scores
        dots = queries.dot(self.passages)  # [Q, P]
        starts = np.flatnonzero(np.r_[True, self.document[1:] != self.document[:-1]])
        scores[:, self.document[starts]] = np.maximum.reduceat(dots, starts, axis=1)
        return scores

    @classmethod
    def concat(cls, batches: Sequence[PassageBatch]) -> PassageBatch:
        if not batches:
            raise ConfigurationError("concat needs at least one batch")
        offsets = np.cumsum([0] + [len(b) for b in batches[:-1]])
        return cls(
            passages=SparseBatch.concat([b.passages for b in batches]),
            document=np.concatenate(
                [b.document + off for b, off in zip(batches, offsets, strict=True)]
            ).astype(np.int64),
            spans=np.concatenate([b.spans.reshape(-1, 2) for b in batches]).astype(np.int64),
            truncated=np.concatenate([b.truncated for b in batches]).astype(bool),
        )
