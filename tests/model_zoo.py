"""Random-weight checkpoints of the families beyond BERT, built locally (nothing downloads):
an XLM-R-shaped masked LM with a 250,002-piece SentencePiece (Unigram) vocabulary, and
RoBERTa / XLM-R / ModernBERT of realistic size for the benchmarks (issue 26).

The large vocabulary holds what multilingual SPLADE keys must survive: non-ASCII pieces
(accents, Cyrillic, CJK), SentencePiece's ``▁`` word-start pieces next to the same text
without it, case-only different pieces (``▁Tax``, ``▁tax``, ``▁TAX``), and pieces with the
two characters the token key scheme escapes (``.`` and ``%``).
"""

from __future__ import annotations

import random
from pathlib import Path
from statistics import NormalDist
from typing import Any

XLMR_VOCAB = 250_002
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3 as in XLM-R; <mask> is the last id
# Pieces every vector of ``build_xlmr_250k(..., boosted=True)`` holds (their output bias is
# raised): what the engine tests read back through the key codec.
BOOSTED = [
    "▁café",
    "▁Straße",
    "▁Москва",
    "▁日本",
    "語",
    "▁Tax",
    "▁tax",
    "▁TAX",
    "tax",
    "▁e.g.",
    "▁100%",
]
WORDS = [
    *("the", "a", "of", "and", "in", "for", "is", "on", "with", "code", "section", "tax"),
    *("depreciation", "deduction", "property", "cost", "search", "engine", "sparse", "vector"),
    *("query", "document", "index", "cluster", "garlic", "powder", "brain", "imaging"),
    *("café", "naïve", "Straße", "Москва", "город", "日本", "語", "東京", "δίκτυο", "e.g.", "100%"),
]


def xlmr_pieces(size: int = XLMR_VOCAB, *, seed: int = 0) -> list[tuple[str, float]]:
    """``size`` (piece, log-probability) pairs in XLM-R's layout: ``<s> <pad> </s> <unk>``,
    then words (with and without ``▁``, three casings), every character the tests write,
    seeded filler pieces, and ``<mask>`` last. Words score best, single characters worst of
    the real pieces, so texts of the listed words tokenize into whole words."""
    pieces: dict[str, float] = {}
    for word in WORDS:
        for form in dict.fromkeys((word, word.capitalize(), word.upper())):
            pieces.setdefault("▁" + form, -2.0)
            pieces.setdefault(form, -4.0)
    for piece in BOOSTED:
        pieces.setdefault(piece, -2.0)
    chars = [chr(c) for c in range(0x21, 0x7F)] + [chr(c) for c in range(0xC0, 0x250)]
    chars += [chr(c) for c in range(0x391, 0x3CA)] + [chr(c) for c in range(0x410, 0x450)]
    chars += [chr(c) for c in range(0x4E00, 0x4E00 + 2000)] + ["語", "東", "京", "本"]
    for char in chars:
        pieces.setdefault(char, -12.0)
        pieces.setdefault("▁" + char, -12.0)
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzéèàüößçñøåжзиклмнопрстуαβγδεζ"
    while len(pieces) < size - len(SPECIALS) - 1:
        piece = "".join(rng.choice(letters) for _ in range(rng.randint(2, 7)))
        if rng.random() < 0.3:
            piece = piece.capitalize()
        pieces.setdefault(("▁" if rng.random() < 0.5 else "") + piece, -14.0 - rng.random())
    vocab = [(s, 0.0) for s in SPECIALS] + list(pieces.items()) + [("<mask>", 0.0)]
    assert len(vocab) == size and len(dict(vocab)) == size
    return vocab


def xlmr_tokenizer(size: int = XLMR_VOCAB) -> Any:
    """A fast XLM-R tokenizer (Unigram, ``▁`` metaspace) over ``xlmr_pieces(size)``."""
    from transformers import XLMRobertaTokenizerFast

    tokenizer = XLMRobertaTokenizerFast(vocab=xlmr_pieces(size))
    assert len(tokenizer) == size, len(tokenizer)
    return tokenizer


def build_xlmr_250k(
    directory: Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    max_length: int = 128,
    boosted: bool = True,
    seed: int = 0,
) -> Path:
    """An XLM-R-shaped random-weight masked LM over the 250,002-piece vocabulary. Its vectors
    are driven by their own tokens (large tied embeddings, a negative output bias: each text
    keeps a few dozen terms, as a trained model's), and with ``boosted`` every vector also
    holds ``BOOSTED``."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = xlmr_tokenizer()
    tokenizer.model_max_length = max_length
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=XLMR_VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        intermediate_size=hidden * 4,
        max_position_embeddings=max_length + 2,  # RoBERTa's positions start after pad_id
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = XLMRobertaForMaskedLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 0.6)  # tied to the projection
        bias = model.get_output_embeddings().bias
        bias.fill_(-13.0)  # ~100-250 terms per text over 250k pieces
        if boosted:
            bias[tokenizer.convert_tokens_to_ids(BOOSTED)] = 9.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def realistic_model(family: str, directory: Path, *, seed: int = 0) -> Path:
    """A base-size random-weight masked LM of ``family`` ("bert", "roberta", "xlm-roberta",
    "modernbert"): the published base models' layer shapes and vocabulary sizes, with a
    tokenizer of that family's kind (byte-level BPE, Unigram, WordPiece) whose vocabulary
    covers English text. Output bias shifted so ~200 terms per text are active, as a trained
    SPLADE model's."""
    import torch
    import transformers as tf

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if family == "xlm-roberta":
        tokenizer = xlmr_tokenizer()
        config: Any = tf.XLMRobertaConfig(vocab_size=XLMR_VOCAB, max_position_embeddings=514)
        model: Any = tf.XLMRobertaForMaskedLM(config)
    elif family == "roberta":
        tokenizer = _byte_level_bpe(50_265)
        config = tf.RobertaConfig(vocab_size=50_265, max_position_embeddings=514)
        model = tf.RobertaForMaskedLM(config)
    elif family == "modernbert":
        tokenizer = _byte_level_bpe(50_368)
        ids = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
        config = tf.ModernBertConfig(vocab_size=50_368, cls_token_id=0, sep_token_id=2, **ids)
        model = tf.ModernBertForMaskedLM(config)
    elif family == "bert":
        tokenizer = _wordpiece(30_522)
        config = tf.BertConfig(vocab_size=30_522)
        model = tf.BertForMaskedLM(config)
    else:
        raise ValueError(f"unknown family {family!r}")
    tokenizer.model_max_length = 512
    with torch.no_grad():
        bias = model.get_output_embeddings().bias
        if bias is not None:  # ~200 of the vocabulary above zero: a random model's logits ~0
            cut = NormalDist().inv_cdf(1 - 200 / bias.shape[0])
            bias.copy_(torch.randn(bias.shape) - cut)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _corpus_words() -> list[str]:
    from tests.conftest import WORDS as ENGLISH

    return [*ENGLISH, *WORDS]


def _byte_level_bpe(size: int) -> Any:
    """A RoBERTa tokenizer: byte-level BPE trained on seeded text of the test words (a few
    thousand merges: the model's ``size`` rows past them are never read)."""
    import tempfile

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    rng = random.Random(1)
    words = _corpus_words()
    text = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(2000)]
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(text, vocab_size=min(size, 4000), special_tokens=specials)
    folder = Path(tempfile.mkdtemp(prefix="bpe-"))
    bpe.save_model(str(folder))
    return RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def _wordpiece(size: int) -> Any:
    from transformers import BertTokenizerFast

    from tests.conftest import _tiny_vocab

    vocab = _tiny_vocab()
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
