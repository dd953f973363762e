"""A long text's windows as the model reads them: token ids with the special tokens added per
window, and each window's character span in the text (windows.py cuts; this tokenizes)."""

from __future__ import annotations

from dataclasses import dataclass
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
        # Character offsets come from a fast (Rust) tokenizer only; a slow one's windows span
        # the whole text (maxpool needs no spans; passages refuse a slow tokenizer).
        self.has_offsets = bool(getattr(tokenizer, "is_fast", False))

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def windows(self, text: str, policy: WindowPolicy) -> TextWindows:
        """``text``'s windows under ``policy`` (resolved). The text is tokenized once, whole,
        without special tokens (a 5 MB text: ~1M tokens, well within memory)."""
        options: dict[str, Any] = {"add_special_tokens": False, "verbose": False}
        if self.has_offsets:
            options.update(return_offsets_mapping=True, return_attention_mask=False)
        encoded = self.tokenizer(text, **options)
        content: list[int] = list(encoded["input_ids"])
        offsets = encoded.get("offset_mapping") if self.has_offsets else None
        ranges, dropped = window_ranges(
            len(content), policy.content, policy.overlap or 0, policy.max_windows
        )
        ids = [self.prefix + content[start:end] + self.suffix for start, end in ranges]
        if offsets is None or not content:
            spans = [(0, len(text))] * len(ranges)
        else:
            spans = [(int(offsets[start][0]), int(offsets[end - 1][1])) for start, end in ranges]
        return TextWindows(ids, spans, dropped)


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


__all__ = ["TextWindows", "WindowTokenizer"]
