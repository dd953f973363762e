"""Long-document windows through a slow (Python) tokenizer (issue 26): BertJapaneseTokenizer, which
has no fast counterpart, over the tiny BERT vocabulary. Its windows hold the fast tokenizer's ids,
maxpool is the max of the windows encoded alone, and passages' character spans, rebuilt by
``SlowOffsets`` (a slow tokenizer gives no offsets), are the fast tokenizer's."""

from __future__ import annotations

import itertools
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import BertJapaneseTokenizer, BertTokenizerFast, PreTrainedTokenizer

from splade_es import SpladeEncoder
from splade_es.encoding.window_tokens import SlowOffsets
from splade_es.encoding.windows import max_pool
from tests.vectors import assert_same_vector, assert_same_vectors

SENTENCE = "Section 179 depreciation:  the tax code's deduction, for property cost!\n"
# Characters a normalizer changes or drops, and words that become [UNK]: the alignment's
# hard cases, which BERT's fast and basic tokenizers both split the same way.
ODD = "café naïve ÉLAN İstanbul tax😀code tax's😀 a\u200bb ﬁx—½ Ⅻ\t\u3000garlic powder. "
LONG = (SENTENCE + ODD) * 10
SHORT = "sparse vectors for search"


@pytest.fixture(scope="module")
def slow_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slow-windows")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / name, folder / name)
    tokenizer = BertJapaneseTokenizer(
        vocab_file=str(tiny_bert_dir / "vocab.txt"),
        do_lower_case=True,
        word_tokenizer_type="basic",
        subword_tokenizer_type="wordpiece",
    )
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(folder)
    assert not (folder / "tokenizer.json").exists()
    return folder


@pytest.fixture(scope="module")
def slow(slow_dir: Path) -> SpladeEncoder:
    encoder = SpladeEncoder.from_pretrained(str(slow_dir), device="cpu")
    assert not encoder.fast_tokenizer
    return encoder


@pytest.fixture(scope="module")
def fast(tiny_bert_dir: Path) -> SpladeEncoder:
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    assert encoder.fast_tokenizer
    return encoder


@pytest.mark.parametrize(("window", "overlap"), [(16, 4), (20, 0), (33, 7), (64, 32)])
def test_windows_and_spans_are_the_fast_tokenizers(
    slow: SpladeEncoder, fast: SpladeEncoder, window: int, overlap: int
) -> None:
    policy = slow.window_policy("passages", window=window, overlap=overlap)
    got = slow.window_tokenizer.windows(LONG, policy)
    expected = fast.window_tokenizer.windows(LONG, policy)
    assert len(got.ids) > 3
    assert got.ids == expected.ids
    assert got.spans == expected.spans
    assert not got.dropped
    # overlap exact, every token once in order
    prefix, suffix = slow.window_tokenizer.prefix, slow.window_tokenizer.suffix
    inner = [ids[len(prefix) : len(ids) - len(suffix)] for ids in got.ids]
    for a, b in itertools.pairwise(inner):
        assert len(a) == window - 2
        assert a[len(a) - overlap :] == b[:overlap]
    rebuilt = inner[0] + [t for w in inner[1:] for t in w[overlap:]]
    assert rebuilt == slow.tokenizer(LONG, add_special_tokens=False)["input_ids"]


def test_offsets_of_every_token_are_the_fast_tokenizers(slow: SpladeEncoder) -> None:
    """Every token, not only window boundaries, on seeded random texts of words, accents
    (precomposed and combining), case, punctuation, emoji, [UNK] words, dropped characters
    (NUL, U+FFFD, zero-width) and odd spaces: the fast tokenizer's offsets are the truth (its
    Rust normalizer tracks every character)."""
    fast_tokenizer = BertTokenizerFast(vocab=slow.tokenizer.get_vocab(), do_lower_case=True)
    alphabet = [
        *"abcdefxyz  ÉéïİÅß.,'-—😀½ﬁ\u200b\u3000\t\n\x00\ufffd",
        *("tax", "code", "depreciation", "e\u0301"),
    ]
    rng = random.Random(26)
    checked = 0
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        expected = fast_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = slow.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == expected["input_ids"], text
        offsets = SlowOffsets(slow.tokenizer, text, ids)
        got = [(offsets.start(k), offsets.end(k)) for k in range(len(ids))]
        assert got == [tuple(o) for o in expected["offset_mapping"]], text
        checked += len(ids)
    assert checked > 2000


def test_maxpool_is_the_max_of_the_windows_encoded_alone(
    slow: SpladeEncoder, fast: SpladeEncoder
) -> None:
    policy = slow.window_policy("maxpool", window=16, overlap=4)
    windows = slow.window_tokenizer.windows(LONG, policy, spans=False)
    assert windows.spans == [(0, len(LONG))] * len(windows.ids), "maxpool locates nothing"
    alone = [slow._encode_batch([ids])[0] for ids in windows.ids]
    ids, weights = max_pool(alone)
    expected = {slow.vocab[i]: float(w) for i, w in zip(ids, weights, strict=True)}
    got = slow.encode_documents([LONG, SHORT], long_documents="maxpool", window=16, overlap=4)
    assert got.windows.tolist() == [len(windows.ids), 1]
    assert_same_vector(got.to_dict(0), expected)
    # the same weights read through the fast tokenizer: the same vectors
    same = fast.encode_documents([LONG, SHORT], long_documents="maxpool", window=16, overlap=4)
    assert_same_vectors(got.to_dicts(), same.to_dicts())


def test_passages_spans_and_vectors_are_the_fast_tokenizers(
    slow: SpladeEncoder, fast: SpladeEncoder
) -> None:
    texts = [SHORT, LONG, LONG[100:900], SHORT]
    got = slow.encode_passages(texts, window=24, overlap=6, batch_size=4)
    expected = fast.encode_passages(texts, window=24, overlap=6, batch_size=4)
    assert got.windows.tolist() == expected.windows.tolist()
    assert got.windows[1] > 5
    assert got.document.tolist() == expected.document.tolist()
    assert got.spans.tolist() == expected.spans.tolist()
    for a, b in zip(got.to_dicts(), expected.to_dicts(), strict=True):
        for pa, pb in zip(a, b, strict=True):
            assert (pa["start"], pa["end"]) == (pb["start"], pb["end"])
            assert_same_vector(pa["vector"], pb["vector"])
    # each passage's characters, tokenized alone, hold its window's words
    policy = slow.window_policy("passages", window=24, overlap=6)
    windows = slow.window_tokenizer.windows(LONG, policy)
    for (start, end), ids in zip(windows.spans, windows.ids, strict=True):
        words = slow.tokenizer.convert_ids_to_tokens(ids[1:-1])
        alone = slow.tokenizer.tokenize(LONG[start:end])
        assert alone[-1] == words[-1] and len(alone) >= len(words) - 1


class _AcrossSpaces(PreTrainedTokenizer):
    """A slow tokenizer whose tokens cross spaces (letter pairs of each line, spaces left
    out), as a tokenizer reading context across words may: its words tokenized alone are not
    the text's tokens, so offsets come from its lines."""

    def __init__(self, **kwargs: Any) -> None:
        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        pieces = ["[UNK]", *letters, *(a + b for a in letters for b in letters)]
        self.pieces = {piece: i for i, piece in enumerate(pieces)}
        self.names = pieces
        super().__init__(unk_token="[UNK]", **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.pieces)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        tokens: list[str] = []
        for line in text.split("\n"):
            letters = "".join(line.split())
            tokens += [letters[i : i + 2] for i in range(0, len(letters), 2)]
        return tokens

    def _convert_token_to_id(self, token: str) -> int:
        return self.pieces.get(token, 0)

    def _convert_id_to_token(self, index: int) -> str:
        return self.names[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)


def test_a_tokenizer_reading_across_spaces_is_located_by_its_lines() -> None:
    tokenizer = _AcrossSpaces()
    text = "abc de\n  fgh ij k\nlmn"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["ab", "cd", "e", "fg", "hi", "jk", "lm", "n"]
    offsets = SlowOffsets(tokenizer, text, ids)
    assert offsets.pieces == [(0, 6), (9, 17), (18, 21)], "lines, words disagreeing"
    got = [text[offsets.start(k) : offsets.end(k)] for k in range(len(ids))]
    assert got == ["ab", "c d", "e", "fg", "h i", "j k", "lm", "n"]
    # across lines too: the text whole
    joined = _AcrossSpaces()
    joined._tokenize = lambda text, **kwargs: _pairs("".join(text.split()))  # type: ignore[method-assign]
    ids = joined(text, add_special_tokens=False)["input_ids"]
    offsets = SlowOffsets(joined, text, ids)
    assert offsets.pieces == [(0, len(text))]
    got = [text[offsets.start(k) : offsets.end(k)] for k in range(len(ids))]
    assert got == ["ab", "c d", "e\n  f", "gh", "ij", "k\nl", "mn"]


def _pairs(letters: str) -> list[str]:
    return [letters[i : i + 2] for i in range(0, len(letters), 2)]


class _MetaspacePieces(PreTrainedTokenizer):
    """A SentencePiece-like slow tokenizer: each word lower-cased, cut into pieces of three
    characters, its first piece marked ``▁``, ``convert_tokens_to_string`` turning ``▁`` into
    spaces as SentencePiece decoders do."""

    def __init__(self, **kwargs: Any) -> None:
        self.pieces: dict[str, int] = {"<unk>": 0}
        super().__init__(unk_token="<unk>", **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.pieces)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        tokens = []
        for word in text.lower().split():
            cut = [word[i : i + 3] for i in range(0, len(word), 3)]
            tokens += ["▁" + cut[0], *cut[1:]]
        return tokens

    def _convert_token_to_id(self, token: str) -> int:
        return self.pieces.setdefault(token, len(self.pieces))

    def _convert_id_to_token(self, index: int) -> str:
        return next(t for t, i in self.pieces.items() if i == index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens).replace("▁", " ").strip()


def test_sentencepiece_style_pieces_are_located_exactly() -> None:
    tokenizer = _MetaspacePieces()
    text = "  Déjà-VU Straße\tTAXES  naïveté x\n Москва "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = []
    for word in re.finditer(r"\S+", text):
        start, end = word.span()
        expected += [(i, min(i + 3, end)) for i in range(start, end, 3)]
    assert len(ids) == len(expected) > 10
    offsets = SlowOffsets(tokenizer, text, ids)
    assert [(offsets.start(k), offsets.end(k)) for k in range(len(ids))] == expected
