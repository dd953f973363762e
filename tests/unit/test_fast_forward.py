"""FastForward: transformers' BERT / DistilBERT forward without its per-call overhead, the
same numbers (checked here against transformers itself), and a refusal wherever it is not."""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from splade_es import SpladeEncoder
from splade_es.encoding.encoder import FAST_PATHS_ENV
from splade_es.encoding.fast_forward import FastForward
from tests.vectors import assert_same_dense


def transformed_hidden(model, ids, mask=None):
    """What transformers computes before the vocabulary projection (the encoder's input)."""
    captured = {}
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: captured.setdefault("hidden", args[0])
    )
    try:
        model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return captured["hidden"]


@torch.inference_mode()
def test_equals_transformers_on_single_and_padded_inputs(tiny_model_dir):
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_model_dir)).eval()
    fast = FastForward.for_model(model)
    assert fast is not None
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    one = torch.randint(5, vocab, (1, 17), generator=gen)
    expected = transformed_hidden(model, one)
    got = fast(one)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()

    batch = torch.randint(5, vocab, (3, 11), generator=gen)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 9:] = 0
    expected = transformed_hidden(model, batch, mask)
    got = fast(batch, mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5 * expected[real].abs().max()
    # A padded row equals the same text alone: padding leaks nowhere.
    alone = fast(batch[1:2, :4])
    assert (alone[0] - got[1, :4]).abs().max() <= 1e-5 * alone.abs().max()


def test_other_kinds_of_model_keep_transformers_forward():
    relative = BertForMaskedLM(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            position_embedding_type="relative_key",
        )
    ).eval()
    assert FastForward.for_model(relative) is None
    training = BertForMaskedLM(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    assert training.training and FastForward.for_model(training) is None


def test_a_model_it_does_not_reproduce_keeps_transformers_forward(tiny_bert_dir, caplog):
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_bert_dir)).eval()
    # A hook changes what transformers' forward computes; FastForward cannot see hooks, so
    # the load-time probe must notice the difference and refuse.
    model.bert.embeddings.register_forward_hook(lambda module, args, out: out + 0.5)
    with caplog.at_level(logging.WARNING, logger="splade_es.encoding.fast_forward"):
        assert FastForward.for_model(model) is None
    assert "disagrees" in caplog.text


def test_the_encoder_uses_it_and_gives_the_same_vectors_without_it(tiny_model_dir, monkeypatch):
    # FastForward itself is under test: the CI run with the fast paths forced off too.
    monkeypatch.setenv(FAST_PATHS_ENV, "auto")
    texts = ["what code section is depreciation", "a", "garlic powder, ounce; tablespoon!" * 4]
    fast = SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu")
    assert fast.fast_forward is not None
    slow = SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu")
    slow.fast_forward = None
    for batch_size in (1, 3):
        a = fast.encode_documents(texts, batch_size=batch_size).to_scipy().toarray()
        b = slow.encode_documents(texts, batch_size=batch_size).to_scipy().toarray()
        assert_same_dense(a, b)
        assert (a > 0).sum() > 10


@torch.inference_mode()
def test_packed_rows_equal_each_row_alone(tiny_model_dir):
    """Rows of mixed lengths, packed without padding, give each row's own hidden states."""
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_model_dir)).eval()
    fast = FastForward.for_model(model)
    gen = torch.Generator().manual_seed(2)
    lengths = [7, 3, 12, 1]
    rows = [torch.randint(5, model.config.vocab_size, (n,), generator=gen) for n in lengths]
    packed = fast.packed(torch.cat(rows), lengths)
    assert packed.shape[0] == sum(lengths)
    for row, got in zip(rows, torch.split(packed, lengths), strict=True):
        alone = transformed_hidden(model, row[None])[0]
        assert (got - alone).abs().max() <= 1e-5 * alone.abs().max()
    same = fast.packed(torch.cat([rows[0], rows[0]]), [7, 7])  # equal lengths: no padding
    assert torch.equal(same[:7], same[7:])
