"""A long text is tokenized from a bounded prefix (``SpladeEncoder._token_ids``): the ids the
model reads and the ``truncated`` flag are those of the whole text, for each kind of fast
tokenizer (WordPiece, byte-level BPE, SentencePiece Unigram), and the work does not grow
with the text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splade_es.encoding.encoder import SpladeEncoder, _prefix
from tests.fuzz import FUZZ
from tests.vectors import assert_same_vector

MAX_LENGTH = 12  # a first cut at 96 characters: short generated texts cross it

CORPUS = [
    "the tax code's depreciation rules don't apply to land",
    "section 179 lets a business deduct equipment costs they're buying",
    "réservé à l'usage 東京 税金 ﬁnance naïve façade",
    "we'll see; it's 3.14 — or 2,718!  multiple   spaces\tand\nlines",
] * 20


def _bpe() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<s>", "</s>", "<pad>"],
        ),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _unigram() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(
        CORPUS,
        trainers.UnigramTrainer(
            vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>"
        ),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "unigram"])
def tokenizer(request: pytest.FixtureRequest, tiny_bert_dir: Any) -> Any:
    if request.param == "wordpiece":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    return _bpe() if request.param == "bpe" else _unigram()


class Spy:
    """The tokenizer, recording the length of every text it is given."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def __call__(self, texts: list[str], **options: Any) -> Any:
        self.lengths.extend(len(t) for t in texts)
        return self.tokenizer(texts, **options)


def bounded(tokenizer: Any, texts: list[str]) -> tuple[list[list[int]], list[bool], Spy]:
    spy = Spy(tokenizer)
    fake = SimpleNamespace(tokenizer=spy, max_length=MAX_LENGTH, cut_prefixes=True)
    ids, truncated = SpladeEncoder._token_ids(fake, texts)  # type: ignore[arg-type]
    return ids, truncated, spy


def whole(tokenizer: Any, text: str) -> tuple[list[int], bool]:
    """What the encoder read before: the whole text tokenized, then truncated."""
    enc = tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_overflowing_tokens=True)
    return enc["input_ids"][0], len(enc["input_ids"]) > 1


# Pieces a hostile or just unusual text is made of: words, contractions (byte-level BPE's
# regex splits "'re" apart from a lone "'"), whitespace runs of every kind, punctuation,
# CJK (one word per character for BERT), combining marks, ligatures (NFKC), long words.
PIECES = st.sampled_from(
    [
        "tax", "code", "they", "'re", "'", "s", " ", "  ", "\t", "\n", "\r\n", "\u3000",
        "\u00a0", ".", ",", "!", "—", "東京", "税", "e\u0301", "ﬁ", "3.14", "x" * 40,
        "y" * 130, "\x00", "\u200b", "-",
    ]
)  # fmt: skip


@FUZZ
@given(st.lists(PIECES, min_size=1, max_size=300))
def test_the_prefix_gives_the_whole_texts_ids_and_flag(tokenizer, pieces):
    text = "".join(pieces)
    ids, truncated, _ = bounded(tokenizer, [text])
    assert (ids[0], truncated[0]) == whole(tokenizer, text)


def test_a_long_text_is_tokenized_from_a_prefix_only(tokenizer):
    text = "token code, they're taxed. " * 400_000  # 10.8 MB
    ids, truncated, spy = bounded(tokenizer, [text, "tax"])
    assert (ids[0], truncated[0]) == whole(tokenizer, text[:5000])
    assert ids[1] == whole(tokenizer, "tax")[0] and truncated[1] is False
    assert max(spy.lengths) < 8 * MAX_LENGTH + 40  # the first cut sufficed


def test_a_text_with_few_tokens_per_character_is_cut_further_or_read_whole(tokenizer):
    # A whitespace run (no tokens for WordPiece) pushes the cut out until the prefix holds
    # the tokens; with no whitespace after the cut, the whole text is read.
    text = "a " + " " * 5000 + "tax code " * 50
    ids, truncated, _ = bounded(tokenizer, [text])
    assert (ids[0], truncated[0]) == whole(tokenizer, text)
    one_word = "a" * 3000
    ids, truncated, _ = bounded(tokenizer, [one_word])
    assert (ids[0], truncated[0]) == whole(tokenizer, one_word)


def test_the_cut_is_before_the_first_space_of_a_run():
    assert _prefix("abc def", 2) == "abc"
    assert _prefix("ab   cd  ef", 3) == "ab   cd"
    assert _prefix("ab\u3000 cd", 2) == "ab\u3000 cd"  # a space after other whitespace: none
    assert _prefix("short", 100) == "short"


def test_the_vector_of_a_10_mb_text_is_that_of_its_first_part(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    text = "token " * 2_000_000  # 12 MB, the query
    part = text[: 60 * encoder.max_length]
    batch = encoder.encode_documents([text, part])
    assert batch.truncated.tolist() == [True, True]
    assert_same_vector(batch.to_dict(0), batch.to_dict(1), what="10 MB text vs its first part")
    queries = encoder.encode_queries([text])
    assert_same_vector(queries.to_dict(0), batch.to_dict(1), what="as a query")
