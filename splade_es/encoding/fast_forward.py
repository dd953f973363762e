"""An inference-only forward pass for BERT and DistilBERT masked-LM encoders.

transformers' modules spend most of a short input's forward in Python: a 2-layer model takes
~1.2 ms for a 20-token query where the arithmetic takes ~0.1 ms (mask helpers, output
dataclasses, attention-interface lookups, a dozen module calls per layer). ``FastForward``
runs the same operations, on the loaded model's own parameters and activation modules, as
one plain function: ~0.5 ms for the same query, with the same result.

"The same result" is checked, not assumed: ``FastForward.for_model`` runs a padded probe batch
through both and returns None (the caller keeps transformers' forward) when the model is not a
plain BERT or DistilBERT or the two disagree beyond float rounding.

The output is what the encoder reads from the model after its vocabulary projection was
swapped for a pass-through: the MLM transform's hidden states, [batch, length, hidden].

>>> import torch
>>> from transformers import BertConfig, BertForMaskedLM
>>> config = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2,
...                     num_attention_heads=2, intermediate_size=32)
>>> model = BertForMaskedLM(config).eval()
>>> fast = FastForward.for_model(model)
>>> ids = torch.tensor([[2, 7, 9, 3]])
>>> with torch.inference_mode():
...     reference = model.cls.predictions.transform(model.bert(ids).last_hidden_state)
...     bool(torch.allclose(fast(ids), reference, atol=1e-5))
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # transformers is imported when a model is built, not with this module
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )
    from transformers.models.distilbert.modeling_distilbert import TransformerBlock

    _MaskedLM = BertForMaskedLM | DistilBertForMaskedLM

log = logging.getLogger(__name__)

# What "the same result" means for the load-time check: float32 rounding differences between
# two orders of the same sums are ~1e-6 relative; a wrong wiring is off by far more.
_AGREEMENT = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}

Linear = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class _Norm:
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float

    @classmethod
    def of(cls, module: nn.LayerNorm) -> _Norm:
        return cls(module.weight, module.bias, module.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class _Layer:
    """One post-norm transformer block: attention, add & norm, feed-forward, add & norm."""

    query: Linear
    key: Linear
    value: Linear
    attention_out: Linear
    attention_norm: _Norm
    ffn_in: Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    ffn_out: Linear
    output_norm: _Norm


def _linear(module: nn.Linear) -> Linear:
    return module.weight, module.bias


class FastForward:
    """``fast(input_ids, attention_mask=None)`` -> the MLM transform's hidden states, and
    ``fast.packed(input_ids, lengths)`` for rows of mixed lengths without padding."""

    def __init__(
        self,
        *,
        word: torch.Tensor,
        position: torch.Tensor,
        token_type: torch.Tensor | None,
        embedding_norm: _Norm,
        layers: list[_Layer],
        heads: int,
        transform: Linear,
        transform_activation: Callable[[torch.Tensor], torch.Tensor],
        transform_norm: _Norm,
    ) -> None:
        self.word = word
        self.position = position
        # BERT adds token type 0 to every position (the encoder never passes other types).
        self.token_type = token_type
        self.embedding_norm = embedding_norm
        self.layers = layers
        self.heads = heads
        self.transform = transform
        self.transform_activation = transform_activation
        self.transform_norm = transform_norm

    @classmethod
    def for_model(cls, model: nn.Module) -> FastForward | None:
        """The fast forward of ``model`` (an eval-mode BERT or DistilBERT masked LM), or None
        when the model is of another kind or the fast forward does not reproduce its output."""
        masked_lm = _supported(model)
        if masked_lm is None:
            return None
        try:
            fast = _build(masked_lm)
        except (AttributeError, TypeError, ValueError) as exc:
            log.debug("no fast forward for this model: %s", exc)
            return None
        if fast is None:
            return None
        if not _agrees(fast, masked_lm):
            log.warning(
                "the fast forward disagrees with transformers' on this model; using transformers'"
            )
            return None
        return fast

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``input_ids`` [B, L] -> [B, L, H]. ``attention_mask`` [B, L] marks each row's real
        tokens, which come first (the padding the encoder and transformers' tokenizers add);
        padded positions hold zeros. The rows go through ``packed``."""
        batch, length = input_ids.shape
        if attention_mask is None or bool(attention_mask.all()):
            hidden = self.packed(input_ids.reshape(-1), [length] * batch)
            return hidden.view(batch, length, -1)
        real = attention_mask.bool()
        hidden = self.packed(input_ids[real], real.sum(dim=1).tolist())
        out = hidden.new_zeros(batch, length, hidden.shape[-1])
        out[real] = hidden
        return out

    def packed(
        self,
        input_ids: torch.Tensor,
        lengths: list[int],
        *,
        row_lengths: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rows of different lengths without padding: ``input_ids`` [T] holds the rows'
        tokens one row after another, ``lengths`` how many each. Returns [T, H].

        Everything but attention runs on the T real tokens only (a micro-batch of queries
        padded to its longest is ~2x more tokens); attention pads them into [B, L] for SDPA
        and takes its output back, per layer. ``row_lengths`` ([B], ``lengths`` on the
        device) and ``slots`` ([T], each token's place in [B * L]) may come precomputed
        (``DeviceBatch``): an accelerator then never waits for the device here."""
        batch, length = len(lengths), max(lengths)
        padded = min(lengths) < length
        x = self.word[input_ids]
        if self.token_type is not None:
            x = x + self.token_type
        mask = None
        if padded:
            device = input_ids.device
            if row_lengths is None:
                row_lengths = torch.tensor(lengths, device=device)
            real = torch.arange(length, device=device) < row_lengths[:, None]
            places = slots if slots is not None else real.flatten().nonzero(as_tuple=True)[0]
            mask = real[:, None, None, :]
            x = self.embedding_norm(x + self.position[places % length])
        else:  # a single row, or rows of one length: positions 0..L-1 in every row
            x = self.embedding_norm(
                (x.view(batch, length, -1) + self.position[:length]).view(batch * length, -1)
            )

        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            if padded:
                q, k, v = (
                    t.new_zeros(batch * length, t.shape[1]).index_copy_(0, places, t)
                    for t in (q, k, v)
                )
            q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            context = context.transpose(1, 2).reshape(batch * length, -1)
            return context.index_select(0, places) if padded else context

        return self._layers(x, attention)

    def _layers(
        self,
        x: torch.Tensor,
        attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The transformer blocks and the MLM transform over embedded tokens ``x``."""
        for layer in self.layers:
            q, k, v = (
                F.linear(x, *projection) for projection in (layer.query, layer.key, layer.value)
            )
            x = layer.attention_norm(F.linear(attention(q, k, v), *layer.attention_out) + x)
            hidden = layer.activation(F.linear(x, *layer.ffn_in))
            x = layer.output_norm(F.linear(hidden, *layer.ffn_out) + x)
        x = self.transform_activation(F.linear(x, *self.transform))
        return self.transform_norm(x)


def _supported(model: nn.Module) -> _MaskedLM | None:
    """``model`` when it is an eval-mode model this module can run, else None."""
    from transformers import BertForMaskedLM, DistilBertForMaskedLM

    if model.training:
        return None
    # transformers' own classes only, not subclasses or a checkpoint's own code that reuses
    # the model type "bert": their forward may differ where the load-time probe does not look
    # (longer inputs, other ids), which only the class itself can rule out.
    if type(model) is BertForMaskedLM or type(model) is DistilBertForMaskedLM:
        return model
    return None


def _build(model: _MaskedLM) -> FastForward | None:
    from transformers import BertForMaskedLM

    if isinstance(model, BertForMaskedLM):
        return _bert(model, model.config)
    return _distilbert(model, model.config)


def _bert(model: BertForMaskedLM, config: BertConfig) -> FastForward | None:
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    bert, head = model.bert, model.cls.predictions
    embeddings = bert.embeddings
    layers = []
    for block in bert.encoder.layer:
        attention = block.attention.self
        layers.append(
            _Layer(
                query=_linear(attention.query),
                key=_linear(attention.key),
                value=_linear(attention.value),
                attention_out=_linear(block.attention.output.dense),
                attention_norm=_Norm.of(block.attention.output.LayerNorm),
                ffn_in=_linear(block.intermediate.dense),
                activation=block.intermediate.intermediate_act_fn,
                ffn_out=_linear(block.output.dense),
                output_norm=_Norm.of(block.output.LayerNorm),
            )
        )
    return FastForward(
        word=embeddings.word_embeddings.weight,
        position=embeddings.position_embeddings.weight,
        token_type=embeddings.token_type_embeddings.weight[0],
        embedding_norm=_Norm.of(embeddings.LayerNorm),
        layers=layers,
        heads=config.num_attention_heads,
        transform=_linear(head.transform.dense),
        transform_activation=head.transform.transform_act_fn,
        transform_norm=_Norm.of(head.transform.LayerNorm),
    )


def _distilbert(model: DistilBertForMaskedLM, config: DistilBertConfig) -> FastForward | None:
    body = model.distilbert
    embeddings = body.embeddings
    layers = []
    # a ModuleList's items are typed as Module; DistilBERT's are TransformerBlocks
    for block in cast("list[TransformerBlock]", body.transformer.layer):
        attention = block.attention
        layers.append(
            _Layer(
                query=_linear(attention.q_lin),
                key=_linear(attention.k_lin),
                value=_linear(attention.v_lin),
                attention_out=_linear(attention.out_lin),
                attention_norm=_Norm.of(block.sa_layer_norm),
                ffn_in=_linear(block.ffn.lin1),
                activation=block.ffn.activation,
                ffn_out=_linear(block.ffn.lin2),
                output_norm=_Norm.of(block.output_layer_norm),
            )
        )
    return FastForward(
        word=embeddings.word_embeddings.weight,
        position=embeddings.position_embeddings.weight,
        token_type=None,
        embedding_norm=_Norm.of(embeddings.LayerNorm),
        layers=layers,
        heads=config.n_heads,
        transform=_linear(model.vocab_transform),
        transform_activation=model.activation,
        transform_norm=_Norm.of(model.vocab_layer_norm),
    )


@torch.inference_mode()
def _agrees(fast: FastForward, model: _MaskedLM) -> bool:
    """Run a probe batch (one unpadded row, one padded) through both forwards and compare."""
    device = fast.word.device
    vocab = fast.word.shape[0]
    length = min(12, fast.position.shape[0])
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, length), generator=generator).to(device)
    mask = torch.ones(2, length, dtype=torch.long, device=device)
    mask[1, length // 2 :] = 0
    out = model(input_ids=ids, attention_mask=mask)
    reference = out.logits if hasattr(out, "logits") else out[0]
    mine = fast(ids, mask)
    if mine.shape[-1] != reference.shape[-1]:  # the vocabulary projection is still attached
        mine = model.get_output_embeddings()(mine)
    if reference.shape != mine.shape:
        return False
    keep = mask.bool()
    scale = float(reference[keep].abs().max()) or 1.0
    tolerance = _AGREEMENT.get(reference.dtype, 1e-4) * scale
    return bool((reference[keep] - mine[keep]).abs().max() <= tolerance)


__all__ = ["FastForward"]
