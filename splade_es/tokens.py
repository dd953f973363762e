"""TokenCodec: vocabulary tokens <-> the feature keys stored in the engine.

Both engines refuse, or misread, some token strings as feature names:

* Elasticsearch rejects dots in ``rank_features`` keys ("fields do not support dots in feature
  names"), and the ``rank_feature`` query splits ``field.feature`` at a dot. BERT's vocabulary
  has ``.``, ``...``, ``##.`` and more.
* OpenSearch's ``sparse_vector`` (SEISMIC) field takes integer token ids as keys.

So there are two key schemes, chosen by the dialect for the field type:

``"token"``
    The token with ``%`` written ``%25`` and ``.`` written ``%2E`` (percent-encoding of just
    those two characters). Injective, hence collision-free; readable for every other token;
    reversible without the vocabulary. Rewriting ``.`` to ``_`` instead would merge ``.``
    with ``_`` and ``##.`` with ``##_``.
``"id"``
    The decimal vocabulary id. Reversible with the vocabulary.

Whatever the scheme, special tokens ([CLS], [SEP], [PAD], ...) and weights that the engines
cannot store (<= 0, below the smallest normal float32, NaN, inf) are dropped. The same codec
is used at ingest and at query time.

>>> codec = TokenCodec(Vocabulary(["[CLS]", ".", "##.", "%", "tax"], special_ids={0}))
>>> codec.encode_row([0, 1, 2, 3, 4], [9.0, 1.0, 2.0, 3.0, 0.0])
{'%2E': 1.0, '##%2E': 2.0, '%25': 3.0}
>>> [codec.token(key) for key in ("%2E", "##%2E", "%25")]
['.', '##.', '%']
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from .exceptions import ConfigurationError, InputError
from .sparse import SparseBatch, Vocabulary

KeyScheme = Literal["token", "id"]

# Lucene's FeatureField refuses values below the smallest normal float32.
MIN_STORABLE_WEIGHT = float(np.finfo(np.float32).tiny)

_ESCAPES = {"%": "%25", ".": "%2E"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_ESCAPE_RE = re.compile(r"[%.]")
_UNESCAPE_RE = re.compile(r"%25|%2E")


def escape_token(token: str) -> str:
    """``"##."`` -> ``"##%2E"``; every other character is kept as it is."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], token)


def unescape_key(key: str) -> str:
    """Inverse of ``escape_token``."""
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(0)], key)


def is_storable(weight: float) -> bool:
    """Whether an engine can store ``weight`` as a feature value."""
    return math.isfinite(weight) and weight >= MIN_STORABLE_WEIGHT


class TokenCodec:
    """Feature keys for one vocabulary under one key scheme (see the module docstring)."""

    def __init__(self, vocab: Sequence[str], *, scheme: KeyScheme = "token") -> None:
        if scheme not in ("token", "id"):
            raise ConfigurationError.bad_value("scheme", scheme, "must be 'token' or 'id'")
        self.vocab = vocab
        self.scheme = scheme
        special = vocab.special_ids if isinstance(vocab, Vocabulary) else frozenset()
        self._special = special
        self._keys = [
            str(i) if scheme == "id" else escape_token(token) for i, token in enumerate(vocab)
        ]
        self._ids = {key: i for i, key in enumerate(self._keys)}
        if len(self._ids) != len(self._keys):
            raise ConfigurationError(
                "the vocabulary has duplicate tokens: their feature keys would collide"
            )
        # The same, as arrays: a row's keys are one fancy index, not a Python loop.
        self._key_array = np.array(self._keys, dtype=object)
        self._special_mask = np.zeros(len(self._keys), dtype=bool)
        self._special_mask[[i for i in special if 0 <= i < len(self._keys)]] = True

    def __repr__(self) -> str:
        return f"TokenCodec({len(self.vocab)} tokens, scheme={self.scheme!r})"

    # ------------------------------------------------------------------ ids <-> keys
    def key(self, token_id: int) -> str:
        return self._keys[token_id]

    def token_id(self, key: str) -> int:
        """Vocabulary id of a stored key; ``InputError`` for a key this codec never makes."""
        try:
            return self._ids[key]
        except KeyError:
            raise InputError(f"{key!r} is not a feature key of this vocabulary") from None

    def token(self, key: str) -> str:
        return self.vocab[self.token_id(key)]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    # ------------------------------------------------------------------ vectors
    def encode_row(self, ids: Iterable[int], weights: Iterable[float]) -> dict[str, float]:
        """``{key: weight}`` for one sparse row, without special tokens or unstorable weights."""
        id_array = np.asarray(_listed(ids), dtype=np.int64)
        weight_array = np.asarray(_listed(weights), dtype=np.float64)
        if id_array.shape != weight_array.shape or id_array.ndim != 1:
            raise ValueError("ids and weights must be two sequences of the same length")
        kept = self.storable(id_array, weight_array)
        keys: list[str] = self._key_array[id_array[kept]].tolist()
        values: list[float] = weight_array[kept].tolist()
        return dict(zip(keys, values, strict=True))

    def storable(self, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Which of the (id, weight) pairs ``encode_row`` keeps (a bool array): not a special
        token, a weight the engines can store (``is_storable``)."""
        # float32 and float64 compare the same here: the float32 bound is exact in both.
        kept: np.ndarray = np.isfinite(weights) & (weights >= MIN_STORABLE_WEIGHT)
        kept &= ~self._special_mask[ids]
        return kept

    def check_vocab(self, batch: SparseBatch) -> None:
        """``ConfigurationError`` unless ``batch`` is over a vocabulary of this codec's size."""
        if len(batch.vocab) != len(self.vocab):
            raise ConfigurationError(
                f"the batch has a {len(batch.vocab)}-token vocabulary, the codec "
                f"{len(self.vocab)}: encode with the model the index was built with"
            )

    def encode(self, batch: SparseBatch, row: int) -> dict[str, float]:
        """Feature dict for row ``row`` of ``batch`` (which must use this codec's vocabulary)."""
        self.check_vocab(batch)
        return self.encode_row(*batch.row(row))

    def encode_tokens(self, vector: Mapping[str, float]) -> dict[str, float]:
        """Feature dict from a ``{token: weight}`` dict (as ``SparseBatch.to_dict`` gives)."""
        ids, weights = [], []
        for token, weight in vector.items():
            i = self._token_ids().get(token)
            if i is None:
                raise InputError(f"token {token!r} is not in the model's vocabulary")
            ids.append(i)
            weights.append(weight)
        return self.encode_row(ids, weights)

    def decode(self, features: Mapping[str, float]) -> dict[str, float]:
        """``{token: weight}`` from a stored feature dict."""
        return {self.token(key): float(w) for key, w in features.items()}

    def _token_ids(self) -> dict[str, int]:
        if not hasattr(self, "_by_token"):
            self._by_token = {token: i for i, token in enumerate(self.vocab)}
        return self._by_token


def _listed(values: Iterable[object]) -> object:
    """``values`` as NumPy takes it: arrays and sequences as they are, other iterables listed."""
    return values if isinstance(values, (np.ndarray, Sequence)) else list(values)
