"""Inference-free query encoding: a query is its distinct tokens, each weighted by a fixed table.

Document-only ("inference-free") sparse models encode documents with a masked-LM and SPLADE
pooling, and queries with a per-token weight table shipped with the model (``idf.json`` in the
OpenSearch layout, the ``SparseStaticEmbedding`` weights in a sentence-transformers ``Router``
folder). For one query, per distinct token ``t`` of its (truncated) tokenization::

    weight[t] = table[t]      kept when t is not a special token and table[t] > 0

Presence, not count: a token repeated in the query has its table weight once, as in both
reference implementations (sentence-transformers scatters a 0/1 mask; the OpenSearch model
cards assign 1 at the token ids). No torch and no model: the Rust tokenizer and a NumPy lookup.

>>> import numpy as np
>>> from tokenizers import Tokenizer, models, pre_tokenizers
>>> backend = Tokenizer(models.WordLevel({"[UNK]": 0, "tax": 1, "code": 2}, unk_token="[UNK]"))
>>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
>>> encoder = StaticQueryEncoder(
...     backend, np.array([9.0, 1.5, 0.0], np.float32), vocab=["[UNK]", "tax", "code"],
...     special_ids={0}, max_tokens=None,
... )
>>> encoder.encode_queries(["tax code tax what"]).to_dicts()
[{'tax': 1.5}]
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..exceptions import EmptyTextError, InputError, ModelLoadError
from ..sparse import SparseBatch, Vocabulary
from .model_files import StaticQueryFiles, read_layout, require_trusted_code, resolve_checkpoint

log = logging.getLogger(__name__)

# transformers' "no limit" model_max_length is 1e30; anything this large means "not set".
_NO_LIMIT = 10**9


class StaticQueryEncoder:
    """Query vectors from a token weight table; ``encode_queries`` like ``SpladeEncoder``'s."""

    mode = "inference-free"

    def __init__(
        self,
        backend: Any,
        table: np.ndarray,
        *,
        vocab: Sequence[str],
        special_ids: Iterable[int],
        max_tokens: int | None,
        truncate_left: bool = False,
        name: str = "",
    ) -> None:
        """``backend``: a ``tokenizers.Tokenizer`` (or ``_SlowBackend``); ``table[id]`` the
        weight of token ``id``; ``max_tokens``: how many non-added tokens of a query count
        (``None``: all)."""
        self.backend = backend
        self.vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary(vocab)
        size = max(len(self.vocab), len(table))
        weights = np.zeros(size, dtype=np.float32)
        weights[: len(table)] = table
        # Special tokens and non-positive weights never make it into a vector: zero them once
        # in the table so a query is one gather and one comparison.
        special = np.fromiter((i for i in special_ids if 0 <= i < size), dtype=np.int64)
        weights[special] = 0.0
        weights[~(weights > 0)] = 0.0  # also turns NaN into 0
        self.table = weights
        self.max_tokens = max_tokens
        self.truncate_left = truncate_left
        self.name = name

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_files(
        cls,
        files: StaticQueryFiles,
        *,
        vocab: Vocabulary | None = None,
        name: str = "",
        trust_remote_code: bool = False,
    ) -> StaticQueryEncoder:
        """Load the tokenizer and the weight table; ``vocab`` names the output ids (the
        document encoder's, so query and document batches share one vocabulary).
        ``trust_remote_code``: as ``SpladeEncoder.from_pretrained``'s (a tokenizer's own code)."""
        from transformers import AutoTokenizer

        require_trusted_code(
            files.tokenizer_dir, name or str(files.tokenizer_dir), trust_remote_code
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(files.tokenizer_dir), trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{files.tokenizer_dir}: no usable tokenizer ({exc})") from exc
        token_ids = tokenizer.get_vocab()
        if files.weights.suffix == ".json":
            table = _table_from_json(files.weights, token_ids, tokenizer.unk_token_id)
        else:
            table = _table_from_tensor_file(files.weights)
        if vocab is None:
            names = [f"[id:{i}]" for i in range(max(len(token_ids), len(table)))]
            for token, i in token_ids.items():
                names[i] = token
            vocab = Vocabulary(names, special_ids=tokenizer.all_special_ids)
        limit = getattr(tokenizer, "model_max_length", None)
        max_tokens = None
        if limit and limit < _NO_LIMIT:
            # HF truncation counts the added [CLS]/[SEP] against max_length.
            added = tokenizer.num_special_tokens_to_add() if files.add_special_tokens else 0
            max_tokens = max(int(limit) - added, 0)
        return cls(
            _plain_backend(tokenizer),
            table,
            vocab=vocab,
            special_ids=tokenizer.all_special_ids,
            max_tokens=max_tokens,
            truncate_left=getattr(tokenizer, "truncation_side", "right") == "left",
            name=name,
        )

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False
    ) -> StaticQueryEncoder:
        """The query side of an inference-free model alone: no torch model is loaded (for a
        process that only translates queries, such as a search front end)."""
        layout = read_layout(resolve_checkpoint(name_or_path, revision=revision))
        if layout.query_files is None:
            raise ModelLoadError(
                f"{name_or_path}: not an inference-free model (no idf.json and no "
                "SparseStaticEmbedding query route): its queries need the model"
            )
        return cls.from_files(
            layout.query_files, name=name_or_path, trust_remote_code=trust_remote_code
        )

    def over_vocabulary(self, vocab: Vocabulary) -> StaticQueryEncoder:
        """This tokenizer and table naming ids by ``vocab`` (a document encoder's, so query and
        document batches share one vocabulary), without reading the files again: what
        ``from_files(..., vocab=vocab)`` gives. The table is already cleaned (specials and
        non-positive weights zeroed); it is only padded to ``vocab``'s size."""
        return StaticQueryEncoder(
            self.backend,
            self.table,
            vocab=vocab,
            special_ids=(),
            max_tokens=self.max_tokens,
            truncate_left=self.truncate_left,
            name=self.name,
        )

    # ------------------------------------------------------------------ encoding
    def query_ids(self, text: str) -> tuple[np.ndarray, bool]:
        """Token ids of ``text`` as the reference sees them (truncated), and whether it was cut."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        limit = self.max_tokens
        cut = limit is not None and len(ids) > limit
        if limit is not None and cut:
            ids = ids[-limit:] if self.truncate_left else ids[:limit]
        return np.asarray(ids, dtype=np.int64), cut

    def encode_one(self, text: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(sorted ids, weights, truncated) of one query."""
        ids, cut = self.query_ids(text)
        ids = np.unique(ids[ids < len(self.table)])
        weights = self.table[ids]
        keep = weights > 0
        return ids[keep], weights[keep], cut

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = defaults.BATCH_SIZE,
        top_k: int | None = None,
        min_weight: float | None = None,
        empty: str = "error",
    ) -> SparseBatch:
        """Row ``i`` is the vector of ``texts[i]``. ``batch_size`` is accepted for the same
        call as ``SpladeEncoder.encode_queries`` and unused: there is nothing to batch."""
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        truncated = np.zeros(len(texts), dtype=bool)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(
                    f"text at position {i} is {type(text).__name__}, not a string", position=i
                )
            if not text.strip():
                if empty == "error":
                    raise EmptyTextError(
                        f"text at position {i} is empty (pass empty='empty_vector' to allow)",
                        position=i,
                    )
                rows.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
                continue
            ids, weights, truncated[i] = self.encode_one(text)
            rows.append((ids, weights))
        batch = SparseBatch.from_rows(rows, vocab=self.vocab, truncated=truncated)
        return batch.prune(top_k=top_k, min_weight=min_weight)


@dataclass(frozen=True)
class _Encoding:
    ids: list[int]


class _SlowBackend:
    """The two calls ``StaticQueryEncoder`` makes of a ``tokenizers.Tokenizer``, answered by a
    slow (Python) tokenizer of transformers, which has no Rust tokenizer to copy."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str, add_special_tokens: bool = False) -> _Encoding:
        # No truncation here either (query_ids applies it); verbose=False: no warning about
        # a query longer than the model's limit, which query_ids cuts.
        encoded = self.tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)
        return _Encoding(list(encoded["input_ids"]))

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        # transformers' get_vocab includes the added tokens.
        return dict(self.tokenizer.get_vocab())


def _plain_backend(tokenizer: Any) -> Any:
    """A copy of the Rust tokenizer without the truncation/padding a tokenizer.json may carry:
    truncation is applied here, the way transformers applies it for the reference. A slow
    tokenizer is used through ``_SlowBackend``."""
    from tokenizers import Tokenizer

    if not getattr(tokenizer, "is_fast", False):
        return _SlowBackend(tokenizer)

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _table_from_json(path: Path, token_ids: dict[str, int], unk_id: int | None) -> np.ndarray:
    try:
        idf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
    if not isinstance(idf, dict):
        raise ModelLoadError(f"{path}: expected a JSON object {{token: weight}}")
    table = np.zeros(len(token_ids), dtype=np.float32)
    unknown = []
    for token, weight in idf.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ModelLoadError(f"{path}: token {token!r} has weight {weight!r}, not a number")
        if not math.isfinite(weight):
            raise ModelLoadError(f"{path}: token {token!r} has a non-finite weight {weight!r}")
        i = token_ids.get(token)
        if i is None:
            # Both references map such a token to [UNK] (a special token: never weighted).
            unknown.append(token)
            continue
        table[i] = weight
    if unknown:
        log.warning(
            "%s: %d token(s) not in the tokenizer's vocabulary have no effect (first: %r)",
            path,
            len(unknown),
            unknown[0],
        )
    if unk_id is not None and unk_id < len(table):
        table[unk_id] = 0.0
    return table


def _table_from_tensor_file(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
        else:
            import torch

            tensors = {k: v.float().numpy() for k, v in torch.load(path, weights_only=True).items()}
    except Exception as exc:  # corrupt or truncated file: whatever the loader raises
        raise ModelLoadError(f"unreadable {path}: {type(exc).__name__}: {exc}") from exc
    if "weight" not in tensors or np.ndim(tensors["weight"]) != 1:
        raise ModelLoadError(f"{path}: no 1-D 'weight' tensor (the token weight table)")
    table = np.asarray(tensors["weight"], dtype=np.float32)
    if not np.isfinite(table).all():
        raise ModelLoadError(f"{path}: the token weight table has non-finite values")
    return table


__all__ = ["StaticQueryEncoder", "StaticQueryFiles"]
