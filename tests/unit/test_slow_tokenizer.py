"""Slow (Python) tokenizers, as the Japanese SPLADE models ship (BertJapaneseTokenizer, which
has no fast counterpart): accepted, with the same ids, special tokens and truncation as the
fast tokenizer of the same vocabulary, and the vectors of the reference formula."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import BertJapaneseTokenizer

from splade_es import SpladeEncoder
from splade_es.cli import main
from splade_es.encoding.static_query import StaticQueryEncoder
from tests.unit.reference import reference_vectors
from tests.vectors import assert_same_dense, assert_same_vectors

# ASCII and accented Latin text: the basic word splitter of BertJapaneseTokenizer and BERT's
# fast pre-tokenizer split these the same way (CJK characters they split differently).
LONG = "Section 179 depreciation: the tax code's deduction, for property cost! " * 12
TEXTS = [
    "what code section is depreciation",
    "Garlic powder, ounce; tablespoon -- café naïve ÉLAN",
    LONG,
    "abcdefghij" * 6,  # one long word: many word pieces
    "a",
]


@pytest.fixture(scope="module")
def slow_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's weights with a BertJapaneseTokenizer over its vocabulary (word
    splitter "basic": no MeCab needed), saved without tokenizer.json."""
    folder = tmp_path_factory.mktemp("slow-tokenizer")
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
    return SpladeEncoder.from_pretrained(str(slow_dir), device="cpu", max_length=24)


@pytest.fixture(scope="module")
def fast(tiny_bert_dir: Path) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu", max_length=24)


def test_the_slow_class_is_what_runs(slow: SpladeEncoder, fast: SpladeEncoder) -> None:
    assert type(slow.tokenizer) is BertJapaneseTokenizer and not slow.tokenizer.is_fast
    assert not slow.fast_tokenizer and fast.fast_tokenizer
    assert slow.vocab[:] == fast.vocab[:]
    assert slow.vocab.special_ids == fast.vocab.special_ids


def test_same_ids_and_truncation_as_the_fast_tokenizer_and_its_own_call(
    slow: SpladeEncoder, fast: SpladeEncoder
) -> None:
    ids, truncated = slow._token_ids(TEXTS)
    fast_ids, fast_truncated = fast._token_ids(TEXTS)
    assert ids == fast_ids
    assert truncated == fast_truncated == [False, False, True, True, False]
    for text, row in zip(TEXTS, ids, strict=True):
        own = slow.tokenizer(text, truncation=True, max_length=slow.max_length)["input_ids"]
        assert row == own
        assert row[0] == slow.tokenizer.cls_token_id and row[-1] == slow.tokenizer.sep_token_id
    # A text exactly max_length tokens long, special tokens included, is not cut.
    words = "tax " * (slow.max_length - 2)
    assert slow._token_ids([words, words + "tax"])[1] == [False, True]


def test_left_truncation_as_the_tokenizer_does_it(slow_dir: Path) -> None:
    encoder = SpladeEncoder.from_pretrained(str(slow_dir), device="cpu", max_length=16)
    encoder.tokenizer.truncation_side = "left"
    ids, truncated = encoder._token_ids([LONG])
    assert truncated == [True]
    assert ids[0] == encoder.tokenizer(LONG, truncation=True, max_length=16)["input_ids"]
    assert ids[0][0] == encoder.tokenizer.cls_token_id


def test_vectors_equal_the_reference(slow: SpladeEncoder, slow_dir: Path) -> None:
    expected = reference_vectors(slow_dir, TEXTS, max_length=slow.max_length)
    assert_same_dense(slow.encode_documents(TEXTS).to_scipy().toarray(), expected)
    # A stream: tokenized in the background thread, several windows.
    windows = list(slow.iter_encode(iter(TEXTS * 3), batch_size=2, window=4))
    assert len(windows) == 4
    streamed = [row for window in windows for row in window.to_dicts()]
    assert_same_vectors(streamed, slow.encode_documents(TEXTS * 3).to_dicts())


def test_inference_free_queries_through_a_slow_tokenizer(
    slow_dir: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    idf = {"tax": 2.5, "code": 1.5, "section": 0.5, "##s": 0.25, "[CLS]": 9.0}
    slow_free, fast_free = tmp_path / "slow", tmp_path / "fast"
    shutil.copytree(slow_dir, slow_free)
    shutil.copytree(tiny_bert_dir, fast_free)
    for folder in (slow_free, fast_free):
        (folder / "idf.json").write_text(json.dumps(idf))
    queries = ["tax code sections", "what is the tax code of this section " * 20]
    got = StaticQueryEncoder.from_pretrained(str(slow_free)).encode_queries(queries)
    expected = StaticQueryEncoder.from_pretrained(str(fast_free)).encode_queries(queries)
    assert got.to_dicts() == expected.to_dicts()
    assert list(got.truncated) == list(expected.truncated) == [False, True]
    # The whole model too: documents by the masked-LM, queries by the table.
    encoder = SpladeEncoder.from_pretrained(str(slow_free), device="cpu")
    assert encoder.mode == "inference-free"
    assert encoder.encode_queries(queries).to_dicts() == expected.to_dicts()


def test_encode_says_the_tokenizer_is_slow(slow_dir: Path, tmp_path: Path) -> None:
    docs, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    docs.write_text(
        "".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    result = CliRunner().invoke(
        main,
        [
            *("encode", "--model", str(slow_dir), "--device", "cpu"),
            *("--input", str(docs), "--output", str(out), "--quiet"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "slow (BertJapaneseTokenizer, Python)" in result.output
    assert len(out.read_text().splitlines()) == len(TEXTS)
