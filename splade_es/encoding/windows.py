"""Long documents: a text's tokens cut into overlapping windows, and the windows pooled back.

A SPLADE model reads ``max_length`` tokens. Three ways to treat the rest (``LongDocuments``):

* ``truncate``  the model reads the first window; the rest is dropped (and counted);
* ``maxpool``   every window is encoded and the document's vector is the elementwise max over
                its windows: SPLADE's own max over positions, taken over the whole text. One
                vector, the same mapping and query;
* ``passages``  one vector per window, stored as nested passages; a document scores as its
                best passage.

Windows are cut from the text's tokenization *without* special tokens, ``content`` tokens each
(the window minus the model's special tokens, which every window gets as the model expects),
consecutive windows sharing ``overlap`` tokens. A window never splits a token. A document that
fits one window is encoded exactly as ``truncate`` encodes it, in every mode.

Pure: token counts in, token ranges out; sparse rows in, pooled rows out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from .. import defaults
from ..exceptions import ConfigurationError

LongDocuments = Literal["truncate", "maxpool", "passages"]
LONG_DOCUMENT_MODES: tuple[LongDocuments, ...] = get_args(LongDocuments)
Row = tuple[np.ndarray, np.ndarray]  # (ids ascending, weights)


@dataclass(frozen=True)
class WindowPolicy:
    """How a document longer than one window is encoded.

    ``window``: model tokens per window, special tokens included (None: the encoder's
    ``max_length``); ``overlap``: content tokens shared by consecutive windows (None:
    ``defaults.WINDOW_OVERLAP``, or a quarter of a smaller window's content);
    ``max_windows``: windows per document at most (None: no bound).

    >>> WindowPolicy("maxpool", window=128).resolved(max_length=512, specials=2).content
    126
    """

    mode: LongDocuments = defaults.LONG_DOCUMENTS
    window: int | None = None
    overlap: int | None = None  # None: WINDOW_OVERLAP, at most a quarter of the window
    max_windows: int | None = defaults.MAX_WINDOWS
    specials: int = 0  # the model's special tokens per window (``resolved`` sets it)

    @property
    def windowed(self) -> bool:
        return self.mode != "truncate"

    @property
    def content(self) -> int:
        """Content (non-special) tokens per window."""
        return (self.window or 0) - self.specials

    def resolved(self, *, max_length: int, specials: int) -> WindowPolicy:
        """This policy for a model that reads ``max_length`` tokens and adds ``specials``
        special tokens per text: the window filled in and every bound checked
        (``ConfigurationError`` naming the option)."""
        if self.mode not in LONG_DOCUMENT_MODES:
            raise ConfigurationError.bad_value(
                "long_documents", self.mode, f"must be one of {', '.join(LONG_DOCUMENT_MODES)}"
            )
        window = self.window or max_length
        if not self.windowed:  # the model reads max_length tokens; no window applies
            return WindowPolicy(self.mode, max_length, 0, self.max_windows, specials)
        if window > max_length:
            raise ConfigurationError.bad_value(
                "window", window, f"must be at most the model's max length ({max_length})"
            )
        if window - specials < 1:
            raise ConfigurationError.bad_value(
                "window", window, f"must leave room for content after {specials} special tokens"
            )
        content = window - specials
        overlap = (
            min(defaults.WINDOW_OVERLAP, content // 4) if self.overlap is None else self.overlap
        )
        if overlap < 0 or overlap >= content:
            raise ConfigurationError.bad_value(
                "overlap", overlap, f"must be >= 0 and below the window's {content} content tokens"
            )
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigurationError.bad_value("max_windows", self.max_windows, "must be >= 1")
        return WindowPolicy(self.mode, window, overlap, self.max_windows, specials)


def window_ranges(
    tokens: int, content: int, overlap: int, max_windows: int | None = None
) -> tuple[list[tuple[int, int]], bool]:
    """The ``[start, end)`` token ranges of the windows over ``tokens`` content tokens, and
    whether tokens past the last window were dropped (``max_windows``).

    Each window starts ``content - overlap`` tokens after the previous one; the last one ends
    at the text's end (it may be shorter). Every token is in some window (unless dropped).

    >>> window_ranges(10, 4, 1)
    ([(0, 4), (3, 7), (6, 10)], False)
    >>> window_ranges(10, 4, 1, max_windows=2)
    ([(0, 4), (3, 7)], True)
    >>> window_ranges(3, 4, 1)
    ([(0, 3)], False)
    """
    step = content - overlap
    if step < 1:
        raise ConfigurationError.bad_value("overlap", overlap, "must be below the window")
    ranges: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + content, tokens)
        ranges.append((start, end))
        if end >= tokens:
            return ranges, False
        if max_windows is not None and len(ranges) >= max_windows:
            return ranges, True
        start += step


def max_pool(rows: Sequence[Row]) -> Row:
    """The elementwise max of sparse rows (an id absent from a row counts as 0 there; every
    weight is > 0): ids ascending.

    >>> ids, weights = max_pool([(np.array([1, 4]), np.array([0.5, 2.0], np.float32)),
    ...                          (np.array([1, 7]), np.array([1.5, 0.25], np.float32))])
    >>> ids.tolist(), weights.tolist()
    ([1, 4, 7], [1.5, 2.0, 0.25])
    """
    if len(rows) == 1:
        return rows[0]
    ids = np.concatenate([r[0] for r in rows]).astype(np.int64, copy=False)
    weights = np.concatenate([r[1] for r in rows]).astype(np.float32, copy=False)
    if ids.size == 0:
        return ids, weights
    order = np.argsort(ids, kind="stable")
    ids, weights = ids[order], weights[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return ids[starts], np.maximum.reduceat(weights, starts)


@dataclass
class WindowStats:
    """What a run's summary says of long documents: how many exceeded one window, windows per
    document (mean, p99), and how many hit ``max_windows`` (their tail was dropped).

    >>> stats = WindowStats()
    >>> stats.add([1, 1, 3], dropped=[False, False, True])
    >>> stats.documents, stats.over_one_window, stats.hit_max_windows, stats.mean
    (3, 1, 1, 1.6666666666666667)
    """

    documents: int = 0
    over_one_window: int = 0
    hit_max_windows: int = 0
    counts: dict[int, int] = field(default_factory=dict)  # windows -> documents

    def add(
        self, windows: Sequence[int] | np.ndarray, dropped: Sequence[bool] | np.ndarray
    ) -> None:
        pairs = zip(np.asarray(windows).tolist(), np.asarray(dropped).tolist(), strict=True)
        for count, cut in pairs:
            self.documents += 1
            self.over_one_window += count > 1
            self.hit_max_windows += bool(cut)
            self.counts[count] = self.counts.get(count, 0) + 1

    @property
    def mean(self) -> float:
        total = sum(k * n for k, n in self.counts.items())
        return total / self.documents if self.documents else 0.0

    def percentile(self, q: float) -> int:
        """Windows per document at percentile ``q`` (0-100), nearest rank."""
        if not self.documents:
            return 0
        rank = max(1, int(np.ceil(q / 100 * self.documents)))
        seen = 0
        for count in sorted(self.counts):
            seen += self.counts[count]
            if seen >= rank:
                return count
        return max(self.counts)

    def summary(self) -> str:
        """One line for a run's report."""
        return (
            f"{self.over_one_window:,} of {self.documents:,} documents longer than one window; "
            f"windows per document mean {self.mean:.2f}, p99 {self.percentile(99)}; "
            f"{self.hit_max_windows:,} cut at max_windows"
        )


__all__ = [
    "LONG_DOCUMENT_MODES",
    "LongDocuments",
    "WindowPolicy",
    "WindowStats",
    "max_pool",
    "window_ranges",
]
