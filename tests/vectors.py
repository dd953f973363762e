"""The suite's one equality rule for SPLADE vectors (``splade_es.sparse.same_vector``).

Every test that compares two encodings of the same text goes through these helpers, so the
rule is written once: no weight differs by more than ``VECTOR_TOLERANCE`` times the larger
vector's largest weight, a token missing on one side counting as 0 there. Equality to the bit
is not asked for: float32 results depend on the computation's shape (alone, padded, packed in
a micro-batch) and on the CPU's kernels (benchmarks/vector_agreement.py measures both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from splade_es.sparse import VECTOR_TOLERANCE, vector_difference


def assert_same_vector(
    got: Mapping[str, float], expected: Mapping[str, float], *, what: str = ""
) -> None:
    """``got`` and ``expected`` are the same vector by the project's rule."""
    got, expected = dict(got), dict(expected)
    difference = vector_difference(got, expected)
    if difference <= VECTOR_TOLERANCE:
        return
    scale = max(map(abs, [*got.values(), *expected.values()]))
    worst = sorted(
        got.keys() | expected.keys(),
        key=lambda k: -abs(got.get(k, 0.0) - expected.get(k, 0.0)),
    )[:5]
    detail = ", ".join(f"{k!r}: {got.get(k)} vs {expected.get(k)}" for k in worst)
    raise AssertionError(
        f"{what or 'vectors'} differ by {difference:.3g} x the largest weight ({scale:.6g}), "
        f"more than {VECTOR_TOLERANCE:g}; largest differences: {detail}"
    )


def assert_same_vectors(
    got: Sequence[Mapping[str, float]], expected: Sequence[Mapping[str, float]]
) -> None:
    assert len(got) == len(expected), f"{len(got)} vectors vs {len(expected)}"
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert_same_vector(a, b, what=f"vector {i}")


def assert_same_dense(got: np.ndarray, expected: np.ndarray) -> None:
    """Rows of dense vectors (a row per text, a column per vocabulary id), same rule."""
    got, expected = np.atleast_2d(np.asarray(got)), np.atleast_2d(np.asarray(expected))
    assert got.shape == expected.shape, f"shape {got.shape} vs {expected.shape}"
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert_same_vector(_as_dict(a), _as_dict(b), what=f"row {i}")


def _as_dict(row: np.ndarray) -> dict[str, float]:
    return {str(j): float(row[j]) for j in np.flatnonzero(row)}
