"""A long text's windows as the model reads them: token ids with the special tokens added per
window, and each window's character span in the text (windows.py cuts; this tokenizes).

Spans come from a fast tokenizer's offsets. A slow (Python) tokenizer has none
(``return_offsets_mapping`` is the Rust tokenizers' only), so ``SlowOffsets`` rebuilds the
offsets of the tokens that begin and end windows; see there for how and why it is exact.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..exceptions import ConfigurationError
from .windows import WindowPolicy, window_ranges


@dataclass(frozen=True)
class TextWindows:
    ids: list[list[int]]  # per window, special tokens included
    spans: list[tuple[int, int]]  # per window, (start, end) characters of the text
    dropped: bool  # tokens past the last window were dropped (max_windows)


class WindowTokenizer:
    """Cuts texts into the windows of a ``WindowPolicy`` with one tokenizer.

    The special tokens a window gets are the ones the tokenizer adds to a single text (BERT's
    ``[CLS] ... [SEP]``, RoBERTa's ``<s> ... </s>``), read once from a probe text: transformers 5
    tokenizers no longer expose ``build_inputs_with_special_tokens``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix, self.suffix = _special_affixes(tokenizer)
        # A fast (Rust) tokenizer gives character offsets with the ids; a slow one's are
        # rebuilt for the window boundaries only (``SlowOffsets``).
        self.has_offsets = bool(getattr(tokenizer, "is_fast", False))

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)

    @property
    def affixes(self) -> list[int]:
        """The ids of a text with no content: its special tokens alone."""
        return self.prefix + self.suffix

    def windows(self, text: str, policy: WindowPolicy, *, spans: bool = True) -> TextWindows:
        """``text``'s windows under ``policy`` (resolved). The text is tokenized once, whole,
        without special tokens (a 5 MB text: ~1M tokens, well within memory). ``spans=False``
        (maxpool, which stores no offsets): a slow tokenizer's windows all span the whole text
        instead of being located (which costs a second tokenization, in pieces)."""
        encoded = self.tokenizer(text, **self._options())
        offsets = encoded.get("offset_mapping") if self.has_offsets else None
        return self._cut(text, list(encoded["input_ids"]), offsets, policy, spans)

    def windows_of(
        self, texts: Sequence[str], policy: WindowPolicy, *, spans: bool = True
    ) -> list[TextWindows]:
        """``windows`` of each text. A fast tokenizer takes them in one call: its batch
        encoding runs on every core, where a call per text runs on one (on a GPU, the
        per-text calls held maxpool to 0.45x of truncate's rows/s: benchmarks/README.md)."""
        if not self.has_offsets:
            return [self.windows(text, policy, spans=spans) for text in texts]
        cut: list[TextWindows] = []
        for group in _char_groups(texts, BATCH_CHARS):
            if len(group) == 1:
                cut.append(self.windows(group[0], policy, spans=spans))
                continue
            encoded = self.tokenizer(group, **self._options())
            cut.extend(
                self._cut(text, list(ids), offsets, policy, spans)
                for text, ids, offsets in zip(
                    group, encoded["input_ids"], encoded["offset_mapping"], strict=True
                )
            )
        return cut

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"add_special_tokens": False, "verbose": False}
        if self.has_offsets:
            options.update(return_offsets_mapping=True, return_attention_mask=False)
        return options

    def _cut(
        self,
        text: str,
        content: list[int],
        offsets: Any,
        policy: WindowPolicy,
        spans: bool,
    ) -> TextWindows:
        """The windows of ``text``, whose tokens are ``content`` (without special tokens) at
        ``offsets`` (None: a slow tokenizer's, located here when ``spans`` asks)."""
        ranges, dropped = window_ranges(
            len(content), policy.content, policy.overlap or 0, policy.max_windows
        )
        ids = [self.prefix + content[start:end] + self.suffix for start, end in ranges]
        if not content or (offsets is None and not spans):
            located = [(0, len(text))] * len(ranges)
        elif offsets is not None:
            located = [(int(offsets[start][0]), int(offsets[end - 1][1])) for start, end in ranges]
        else:
            slow = SlowOffsets(self.tokenizer, text, content)
            located = [(slow.start(start), slow.end(end - 1)) for start, end in ranges]
        return TextWindows(ids, located, dropped)


BATCH_CHARS = 1 << 20
"""Characters tokenized in one call at most (a longer text alone): a text's tokens and
offsets are Python objects, ~100 bytes a token, so a batch of 32 texts of 5 MB each in one
call would hold gigabytes where this holds tens of megabytes."""


def _char_groups(texts: Sequence[str], budget: int) -> list[list[str]]:
    """``texts`` in order, in groups of at most ``budget`` characters (a longer text alone).

    >>> [len(g) for g in _char_groups(["ab", "cd", "efghij", "k"], 5)]
    [2, 1, 1]
    """
    groups: list[list[str]] = []
    size = budget + 1  # the first text starts a group
    for text in texts:
        if size + len(text) > budget:
            groups.append([])
            size = 0
        groups[-1].append(text)
        size += len(text)
    return groups


class SlowOffsets:
    """Character offsets of a slow tokenizer's tokens in ``text``, for the few tokens asked
    (window boundaries), exact where they can be checked and never narrower than the token.

    1. Where the token is. The text is cut into pieces: its whitespace-separated words, else
       its lines, else the text whole (``_LEVELS``). Each piece is tokenized alone; the first
       level whose pieces' ids, concatenated, are the whole text's ids is used. Then every
       token belongs to one known piece: the check is of the same ids the windows hold, so a
       tokenizer that reads context across a space (MeCab's lattice may) only moves to a
       coarser level, never to a wrong piece. The whole text always agrees with itself.
    2. Where in its piece. ``convert_tokens_to_string`` gives each token's text as the
       tokenizer normalized it; the token's own part is what it adds to its predecessor's
       text (a WordPiece ``##`` continuation and a SentencePiece ``▁`` are only known in
       context), whitespace removed on both sides because the tokenizers drop or re-insert
       it. Those parts are laid over the piece's non-whitespace characters, one character
       each, from the piece's start while every character matches its source up to case,
       accents and compatibility forms (``_same_char``), then from its end the same way. A
       token neither pass places (an ``[UNK]``, a normalizer that changes lengths: NFKC's
       ``㈱`` -> ``(株)``) gets the characters left between the two: never narrower than its
       text, and the tokens on both sides stay exact.

    Only the pieces holding asked tokens are aligned; finding them costs one tokenization of
    the text in pieces (passages only: maxpool stores no spans).
    """

    def __init__(self, tokenizer: Any, text: str, ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.text = text
        self.pieces, counts = _agreeing_pieces(tokenizer, text, ids)
        self.firsts = [0]  # the index of each piece's first token
        for count in counts:
            self.firsts.append(self.firsts[-1] + count)
        self.ids = ids
        self._aligned: dict[int, list[tuple[int, int]]] = {}
        # Characters no token holds: whitespace, and what the tokenizer drops on its own
        # (control and zero-width characters), as a fast tokenizer's offsets leave them out.
        self.kept = cache(lambda char: not char.isspace() and bool(tokenizer.tokenize(char)))

    def start(self, token: int) -> int:
        return self._offsets(token)[0]

    def end(self, token: int) -> int:
        return self._offsets(token)[1]

    def _offsets(self, token: int) -> tuple[int, int]:
        # The last piece starting at or before the token: pieces of no tokens come first.
        piece = bisect_right(self.firsts, token) - 1
        if piece not in self._aligned:
            first, last = self.firsts[piece], self.firsts[piece + 1]
            self._aligned[piece] = _align(
                self.tokenizer, self.text, self.pieces[piece], self.ids[first:last], self.kept
            )
        return self._aligned[piece][token - self.firsts[piece]]


# Words, then lines (without their outer spaces), then the whole text (always agrees).
_LEVELS = (re.compile(r"\S+"), re.compile(r"\S(?:[^\n]*\S)?"))
_SPACE = re.compile(r"\s+")


def _agreeing_pieces(
    tokenizer: Any, text: str, ids: list[int]
) -> tuple[list[tuple[int, int]], list[int]]:
    """The finest pieces of ``text`` whose tokenizations, one piece at a time, concatenate to
    ``ids``, and the number of tokens of each."""
    for level in _LEVELS:
        pieces = [m.span() for m in level.finditer(text)]
        counts: list[int] = []
        position = 0
        for start, end in pieces:
            own = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text[start:end]))
            if own != ids[position : position + len(own)]:
                break
            counts.append(len(own))
            position += len(own)
        else:
            if position == len(ids):
                return pieces, counts
    return [(0, len(text))], [len(ids)]


def _align(
    tokenizer: Any, text: str, piece: tuple[int, int], ids: list[int], kept: Callable[[str], bool]
) -> list[tuple[int, int]]:
    """Each token's (start, end) in ``text``, ``ids`` being ``piece``'s tokens (step 2 of
    ``SlowOffsets``): tokens are laid over the piece's characters from its start while they
    match, then from its end; the tokens between (an ``[UNK]``, a length-changing form) are
    split where their characters tokenize apart (``_split``), else share those characters."""
    start, end = piece
    chars = [i for i in range(start, end) if kept(text[i])]
    if len(ids) == 1 and chars:  # the piece is that token: exact whatever the normalizer did
        return [(chars[0], chars[-1] + 1)]
    parts = _token_texts(tokenizer, tokenizer.convert_ids_to_tokens(ids))
    offsets: list[tuple[int, int] | None] = [None] * len(ids)
    low = 0  # characters matched from the start
    left = 0  # tokens placed from the start
    for part in parts:
        if not _matches(text, chars[low : low + len(part)], part):
            break
        offsets[left] = _span(chars, low, len(part), end)
        low += len(part)
        left += 1
    high = len(chars)  # characters not matched from the end
    right = len(ids)  # tokens not placed from the end
    while right > left:
        part = parts[right - 1]
        if high - len(part) < low or not _matches(text, chars[high - len(part) : high], part):
            break
        high -= len(part)
        right -= 1
        offsets[right] = _span(chars, high, len(part), end)
    if right > left:
        middle = (chars[low], chars[high - 1] + 1) if high > low else _span(chars, low, 0, end)
        offsets[left:right] = _split(tokenizer, text, middle, ids[left:right], kept)
    return [span for span in offsets if span is not None]


# Characters of an unplaced stretch that ``_split`` tries cutting (each cut: 2 tokenizations).
_SPLIT_CHARS = 256


def _split(
    tokenizer: Any, text: str, stretch: tuple[int, int], ids: list[int], kept: Callable[[str], bool]
) -> list[tuple[int, int]]:
    """The offsets of ``ids``, the tokens of ``text[stretch]`` that no character match placed:
    at the first character where the stretch's two sides, tokenized alone, are ``ids`` cut in
    two (``ﬁx—½``: three ``[UNK]`` of three words), each side is aligned on its own; without
    such a cut every token gets the whole stretch (never narrower than its text)."""
    start, end = stretch
    if len(ids) > 1 and end - start <= _SPLIT_CHARS:
        for cut in range(start + 1, end):
            if text[cut].isspace() or text[cut - 1].isspace():
                continue
            head = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text[start:cut]))
            if not head or len(head) >= len(ids) or ids[: len(head)] != head:
                continue
            tail = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text[cut:end]))
            if tail == ids[len(head) :]:
                return _align(tokenizer, text, (start, cut), head, kept) + _align(
                    tokenizer, text, (cut, end), tail, kept
                )
    return [stretch] * len(ids)


def _token_texts(tokenizer: Any, tokens: list[str]) -> list[str]:
    """Each token's own text as the tokenizer normalized it, whitespace removed: what it adds
    to its predecessor's text (a WordPiece ``##`` or a SentencePiece ``▁`` is only known in
    context). A token whose text does not extend its predecessor's gets one that matches
    no character (``\0``), so it is placed between."""
    parts: list[str] = []
    before = ""
    for k, token in enumerate(tokens):
        context = tokens[k - 1 : k + 1] if k else [token]
        both = _SPACE.sub("", tokenizer.convert_tokens_to_string(context))
        parts.append(both[len(before) :] if both.startswith(before) else "\0")
        before = _SPACE.sub("", tokenizer.convert_tokens_to_string([token]))
    return parts


def _matches(text: str, positions: list[int], part: str) -> bool:
    return len(positions) == len(part) and all(
        _same_char(text[i], c) for i, c in zip(positions, part, strict=True)
    )


def _span(chars: list[int], first: int, count: int, end: int) -> tuple[int, int]:
    """The characters ``chars[first:first + count]`` as (start, end); none: an empty span
    where the next character is (``end`` past the last)."""
    if count == 0:
        at = chars[first] if first < len(chars) else end
        return (at, at)
    return (chars[first], chars[first + count - 1] + 1)


@cache
def _folded(char: str) -> str:
    """``char`` without case, accents or compatibility form: what tokenizers normalize."""
    decomposed = unicodedata.normalize("NFKD", char)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _same_char(source: str, normalized: str) -> bool:
    return source == normalized or _folded(source) == _folded(normalized)


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text's own tokens."""
    probe = "splade"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ConfigurationError(
        "long_documents: cannot tell this tokenizer's special tokens from a text's own "
        f"(probe {probe!r}: {full} with them, {plain} without)"
    )


__all__ = ["SlowOffsets", "TextWindows", "WindowTokenizer"]
