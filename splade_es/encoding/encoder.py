"""SpladeEncoder: text in, SPLADE sparse vectors out.

>>> encoder = SpladeEncoder.from_pretrained("naver/splade-v3")          # or a local folder
>>> docs = encoder.encode_documents(["Section 179 depreciation deduction."])
>>> docs.to_dicts()[0]["depreciation"]                                   # doctest: +SKIP
2.31...

Texts are tokenized in a background thread, grouped by length inside a bounded window (so
padding is small and memory does not grow with the input), and pooled by ``SpladeHead``,
which never materialises the batch x length x vocabulary logits.

Inference-free models (``mode == "inference-free"``: OpenSearch's document-only models, a
sentence-transformers Router with a ``SparseStaticEmbedding`` query route) encode documents the
same way and queries with ``StaticQueryEncoder``: a token weight lookup, no forward pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import chain, islice, repeat
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from torch import nn

from .. import defaults
from ..exceptions import ConfigurationError, EmptyTextError, InputError, ModelLoadError
from ..sparse import PassageBatch, SparseBatch, Vocabulary
from .device_batches import DeviceBatch, PendingRows, Rows
from .fast_forward import FastForward
from .model_files import (
    CheckpointLayout,
    Mode,
    StaticQueryFiles,
    default_model,
    read_layout,
    require_trusted_layout,
    resolve_checkpoint,
)
from .pooling import SparseRows, SpladeHead
from .static_query import StaticQueryEncoder
from .window_tokens import TextWindows, WindowTokenizer
from .windows import LongDocuments, WindowPolicy, max_pool

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

EmptyPolicy = Literal["error", "empty_vector"]
ProgressCallback = Callable[[int], None]


class _PassThrough(nn.Module):
    """Stands in for the vocabulary projection so the model returns transformed hidden states."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


@dataclass(frozen=True)
class _Tokenized:
    """The rows to encode for a window of texts: one per text, or one per token window of a
    long text (``long_documents`` maxpool / passages), a text's rows together and in order."""

    positions: list[int]  # per row: index of its text within the window
    ids: list[list[int]]  # per row: the token ids the model reads
    truncated: list[bool]  # per row: its text lost tokens (past max_length / max_windows)
    spans: list[tuple[int, int]] = field(default_factory=list)  # per row (windowed modes)

    def add_row(self, position: int, ids: list[int], span: tuple[int, int]) -> None:
        """A text read as one row, whole."""
        self.positions.append(position)
        self.ids.append(ids)
        self.truncated.append(False)
        self.spans.append(span)

    def add_windows(self, position: int, windows: TextWindows) -> None:
        """A text's windows, one row each."""
        self.positions.extend([position] * len(windows.ids))
        self.ids.extend(windows.ids)
        self.truncated.extend([windows.dropped] * len(windows.ids))
        self.spans.extend(windows.spans)


class SpladeEncoder:
    """Encode documents and queries into SPLADE vectors (see ``from_pretrained``)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        head: SpladeHead,
        *,
        device: torch.device,
        max_length: int,
        name: str = "",
        max_batch_tokens: int = 16384,
        query_encoder: StaticQueryEncoder | None = None,
        fast_forward: bool = True,
        long_documents: WindowPolicy | None = None,
    ) -> None:
        self.model = model
        # transformers' forward costs ~1 ms of Python per call, most of a short query's time:
        # BERT and DistilBERT run through FastForward instead (same operations, same result,
        # checked on a probe batch here; any other model keeps transformers' forward).
        self.fast_forward = FastForward.for_model(model) if fast_forward else None
        self.tokenizer = tokenizer
        self.head = head
        self.device = device
        self.max_length = max_length
        # Long texts are tokenized from a prefix (``_token_ids``); with left truncation the
        # model reads the end of a text instead, so there is nothing to cut.
        self.cut_prefixes = getattr(tokenizer, "truncation_side", "right") == "right"
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        # Models may have more output ids than the tokenizer names (vocab padded to a
        # multiple of 8, say): those get a placeholder name that no real token can have.
        names = [f"[id:{i}]" for i in range(head.bias.shape[0])]
        for token, i in tokenizer.get_vocab().items():
            if i < len(names):
                names[i] = token
        self.vocab = Vocabulary(names, special_ids=tokenizer.all_special_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.query_encoder = query_encoder
        # Resolved per call (``window_policy``): max_length may change after construction.
        self.long_documents = long_documents or WindowPolicy()

    @cached_property
    def window_tokenizer(self) -> WindowTokenizer:
        return WindowTokenizer(self.tokenizer)

    def window_policy(
        self,
        long_documents: LongDocuments | WindowPolicy | None = None,
        *,
        window: int | None = None,
        overlap: int | None = None,
        max_windows: int | None = None,
    ) -> WindowPolicy:
        """The encoder's ``long_documents`` policy with the given parts replaced, checked
        against this model (``ConfigurationError`` naming the option)."""
        if isinstance(long_documents, WindowPolicy):
            policy = long_documents
        else:
            base = self.long_documents
            policy = replace(
                base,
                mode=long_documents or base.mode,
                window=base.window if window is None else window,
                overlap=base.overlap if overlap is None else overlap,
                max_windows=base.max_windows if max_windows is None else max_windows,
            )
        if not policy.windowed:
            return policy.resolved(max_length=self.max_length, specials=0)
        return policy.resolved(max_length=self.max_length, specials=self.window_tokenizer.specials)

    @property
    def fast_tokenizer(self) -> bool:
        """Whether the tokenizer is a fast (Rust) one. A slow (Python) one, such as the
        Japanese SPLADE models' BertJapaneseTokenizer, has no word ids or overflow rows:
        ``_token_ids`` tokenizes its texts whole."""
        return bool(getattr(self.tokenizer, "is_fast", False))

    @property
    def mode(self) -> Mode:
        """How queries are encoded: "siamese" (by the model) or "inference-free" (a lookup)."""
        return "siamese" if self.query_encoder is None else "inference-free"

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        *,
        device: str = defaults.DEVICE,
        dtype: str = "auto",
        max_length: int | None = None,
        vocab_chunk: int = 2048,
        screen: bool | Literal["auto"] = "auto",
        compile: bool = False,
        revision: str | None = None,
        trust_remote_code: bool = False,
        layout: CheckpointLayout | None = None,
        query_encoder: StaticQueryEncoder | None = None,
        long_documents: LongDocuments = defaults.LONG_DOCUMENTS,
        window: int | None = None,
        overlap: int | None = None,
        max_windows: int | None = defaults.MAX_WINDOWS,
    ) -> SpladeEncoder:
        """Load a checkpoint by Hub id or local path; none: ``model_files.default_model()``
        (``SPLADE_ES_MODEL``, ``../shared/models/splade-tiny``, the user cache folder, then
        ``rasyosef/splade-tiny`` through the Hugging Face cache).

        ``device``: "auto" (CUDA when present), "cpu", "cuda", "cuda:1"...
        ``dtype``: "auto" (bf16/fp16 on GPU, fp32 on CPU), "float32", "bfloat16", "float16".
        ``screen``: the exact bf16-screened head (default on for fp32 on CPUs with fast bf16).
        ``trust_remote_code``: run the Python code a checkpoint ships (its config.json or
        tokenizer_config.json ``auto_map``); off, such a checkpoint is refused
        (``ModelLoadError``). Only for checkpoints whose source you trust: the code runs in
        this process with its rights.
        ``layout``: ``name_or_path``'s layout when the caller has read it already
        (``read_layout``): it is not resolved and read again (``revision`` is then unused).
        ``query_encoder``: an inference-free checkpoint's query side when the caller has
        loaded it already (``StaticQueryEncoder.from_files`` of this layout): its table is
        reused, over this model's vocabulary, instead of being read again.
        ``long_documents``: "truncate" (the model reads the first ``max_length`` tokens),
        "maxpool" (every ``window``-token window encoded, the elementwise max taken) or
        "passages" (``encode_passages``: one vector per window); ``window`` counts model
        tokens with the special ones (default ``max_length``), ``overlap`` content tokens
        shared by consecutive windows (default ``defaults.WINDOW_OVERLAP``, at most a quarter
        of the window), ``max_windows`` bounds the windows per document
        (windows.py).
        """
        if name_or_path is None:
            name_or_path = default_model()
        # Options first: a typo in them is reported before any file is read.
        torch_device = parse_device(device)
        torch_dtype = parse_dtype(dtype, torch_device)
        if layout is None:
            layout = read_layout(resolve_checkpoint(name_or_path, revision=revision))
        require_trusted_layout(layout, name_or_path, trust_remote_code)
        tokenizer, model = _load_masked_lm(layout, name_or_path, trust_remote_code)
        fast_paths = cpu_fast_paths()
        head = _splade_head(
            _detach_vocab_projection(model, name_or_path),
            layout,
            torch_device,
            torch_dtype,
            vocab_chunk=vocab_chunk,
            screen=_use_screen(screen, fast_paths, torch_device, torch_dtype),
        )
        placed = _placed(model, torch_device, torch_dtype, compile=compile)
        encoder = cls(
            placed,
            tokenizer,
            head,
            device=torch_device,
            max_length=_max_length(max_length, layout, tokenizer, placed),
            name=name_or_path,
            max_batch_tokens=_default_batch_tokens(torch_device),
            fast_forward=not compile and fast_paths != "off",
            long_documents=WindowPolicy(long_documents, window, overlap, max_windows),
        )
        encoder.window_policy()  # a bad window / overlap is reported at load, not later
        if layout.query_files is not None:
            encoder.query_encoder = _query_side(
                layout.query_files, encoder, tokenizer, query_encoder, trust_remote_code
            )
        return encoder

    # ------------------------------------------------------------------ encoding
    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = defaults.BATCH_SIZE,
        top_k: int | None = None,
        min_weight: float | None = None,
        empty: EmptyPolicy = "error",
        progress: ProgressCallback | None = None,
        long_documents: LongDocuments | WindowPolicy | None = None,
        window: int | None = None,
        overlap: int | None = None,
        max_windows: int | None = None,
    ) -> SparseBatch:
        """Encode a sequence of texts; row ``i`` of the result belongs to ``texts[i]``.
        ``long_documents`` .. ``max_windows`` override the encoder's own for this call
        ("truncate" or "maxpool"; passages: ``encode_passages``)."""
        policy = self.window_policy(
            long_documents, window=window, overlap=overlap, max_windows=max_windows
        )
        _require_one_vector(policy)
        batch = self._encode_all(texts, batch_size, empty, progress, policy)
        assert isinstance(batch, SparseBatch)
        return batch.prune(top_k=top_k, min_weight=min_weight)

    def encode_passages(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = defaults.BATCH_SIZE,
        top_k: int | None = None,
        min_weight: float | None = None,
        empty: EmptyPolicy = "error",
        progress: ProgressCallback | None = None,
        window: int | None = None,
        overlap: int | None = None,
        max_windows: int | None = None,
    ) -> PassageBatch:
        """Encode texts as passages: one vector per window of each text (windows.py);
        ``top_k`` / ``min_weight`` prune every passage."""
        policy = self.window_policy(
            "passages", window=window, overlap=overlap, max_windows=max_windows
        )
        batch = self._encode_all(texts, batch_size, empty, progress, policy)
        assert isinstance(batch, PassageBatch)
        return batch.prune(top_k=top_k, min_weight=min_weight)

    def _encode_all(
        self,
        texts: Sequence[str],
        batch_size: int,
        empty: EmptyPolicy,
        progress: ProgressCallback | None,
        policy: WindowPolicy,
    ) -> SparseBatch | PassageBatch:
        if isinstance(texts, Sequence) and 0 < len(texts) <= batch_size:
            # One batch (a query, a micro-batch): no tokenizer thread to start and join, which
            # costs more than the tokenizing itself at this size.
            tokenized = self._tokenize(list(texts), 0, empty, policy)
            batch = self._encode_window(tokenized, len(texts), batch_size, policy)
            if progress:
                progress(len(texts))
            return batch
        windows = list(self._stream(texts, batch_size, None, empty, progress, policy))
        passages = [w for w in windows if isinstance(w, PassageBatch)]
        vectors = [w for w in windows if isinstance(w, SparseBatch)]
        if policy.mode == "passages":
            return PassageBatch.concat(passages) if passages else _no_passages(self.vocab)
        if not vectors:
            return SparseBatch.from_rows([], vocab=self.vocab, truncated=np.zeros(0, bool))
        return SparseBatch.concat(vectors)

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = defaults.BATCH_SIZE,
        top_k: int | None = None,
        min_weight: float | None = None,
        empty: EmptyPolicy = "error",
    ) -> SparseBatch:
        """Encode queries: through the model (siamese), or by weight lookup (inference-free;
        ``max_length`` does not apply there: the model's query truncation does). A query is
        always truncated at ``max_length``, whatever ``long_documents`` says."""
        if self.query_encoder is not None:
            return self.query_encoder.encode_queries(
                texts, top_k=top_k, min_weight=min_weight, empty=empty
            )
        return self.encode_documents(
            texts,
            batch_size=batch_size,
            top_k=top_k,
            min_weight=min_weight,
            empty=empty,
            long_documents="truncate",
        )

    def iter_encode(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = defaults.BATCH_SIZE,
        window: int | None = None,
        empty: EmptyPolicy = "error",
        progress: ProgressCallback | None = None,
        long_documents: LongDocuments | WindowPolicy | None = None,
    ) -> Iterator[SparseBatch]:
        """Stream: yields one SparseBatch per window of ``window`` texts, in input order.

        Memory is bounded by the window, whatever the length of ``texts``. Tokenization of the
        next window runs in a background thread while this one is on the model. Without a
        ``window``, the first windows are smaller (2, 4, 8 batches, then 16): the model starts
        after two batches are tokenized, not sixteen. ``long_documents``: "truncate" or
        "maxpool" (or a ``WindowPolicy``), default the encoder's; passages: ``iter_passages``.
        """
        policy = self.window_policy(long_documents)
        _require_one_vector(policy)
        for batch in self._stream(texts, batch_size, window, empty, progress, policy):
            assert isinstance(batch, SparseBatch)
            yield batch

    def iter_passages(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = defaults.BATCH_SIZE,
        window: int | None = None,
        empty: EmptyPolicy = "error",
        progress: ProgressCallback | None = None,
        policy: WindowPolicy | None = None,
    ) -> Iterator[PassageBatch]:
        """``iter_encode`` for passages: one PassageBatch per window of ``window`` texts.
        ``policy``: the token windows (default the encoder's; its mode is taken as passages)."""
        if policy is None:
            policy = replace(self.long_documents, mode="passages")
        resolved = self.window_policy(replace(policy, mode="passages"))
        for batch in self._stream(texts, batch_size, window, empty, progress, resolved):
            assert isinstance(batch, PassageBatch)
            yield batch

    def _stream(
        self,
        texts: Iterable[str],
        batch_size: int,
        window: int | None,
        empty: EmptyPolicy,
        progress: ProgressCallback | None,
        policy: WindowPolicy,
    ) -> Iterator[SparseBatch | PassageBatch]:
        if batch_size < 1:
            raise ConfigurationError.bad_value("batch_size", batch_size, "must be >= 1")
        sizes = repeat(window) if window else _ramped_windows(batch_size)
        source = iter(texts)
        offset = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="splade-tokenize") as pool:
            chunk = list(islice(source, next(sizes)))
            pending: Future | None = (
                pool.submit(self._tokenize, chunk, offset, empty, policy) if chunk else None
            )
            while pending is not None:
                tokenized, size = pending.result(), len(chunk)
                offset += size
                chunk = list(islice(source, next(sizes)))
                pending = (
                    pool.submit(self._tokenize, chunk, offset, empty, policy) if chunk else None
                )
                yield self._encode_window(tokenized, size, batch_size, policy)
                if progress:
                    progress(size)

    # ------------------------------------------------------------------ internals
    def _tokenize(
        self, texts: list[Any], offset: int, empty: EmptyPolicy, policy: WindowPolicy
    ) -> _Tokenized:
        keep: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(
                    f"text at position {offset + i} is {type(text).__name__}, not a string",
                    position=offset + i,
                )
            if text.strip():
                keep.append(i)
            elif empty == "error":
                raise EmptyTextError(
                    f"text at position {offset + i} is empty (pass empty='empty_vector' to allow)",
                    position=offset + i,
                )
        if not keep:
            return _Tokenized([], [], [])
        if not policy.windowed:
            ids, truncated = self._token_ids([texts[i] for i in keep])
            return _Tokenized(keep, ids, truncated)
        return self._tokenize_windows(texts, keep, policy)

    def _tokenize_windows(
        self, texts: list[str], keep: list[int], policy: WindowPolicy
    ) -> _Tokenized:
        """Rows for maxpool / passages: a text that fits one window gets truncate's ids (so
        the same vector in every mode); a longer one is cut into its windows (window_tokens.py).
        A fast tokenizer tokenizes the batch's texts once, whole, in one call: a text that
        fits is then its special tokens around its content, which is what truncate's call
        gives (the affixes are read from that call: ``_special_affixes``). A slow one first
        tokenizes every text as truncate does, then the longer ones whole."""
        assert policy.window is not None
        spans = policy.mode == "passages"  # maxpool stores none: a slow tokenizer skips them
        tok = _Tokenized([], [], [], [])
        if self.window_tokenizer.has_offsets:
            cut = self.window_tokenizer.windows_of([texts[i] for i in keep], policy, spans=spans)
            for i, windows in zip(keep, cut, strict=True):
                if len(windows.ids) > 1 or windows.dropped:
                    tok.add_windows(i, windows)
                else:  # no content at all: the special tokens alone, as truncate reads it
                    only = windows.ids[0] if windows.ids else self.window_tokenizer.affixes
                    tok.add_row(i, only, (0, len(texts[i])))
            return tok
        first, longer = self._token_ids([texts[i] for i in keep], max_length=policy.window)
        long_texts = [texts[i] for i, more in zip(keep, longer, strict=True) if more]
        long_windows = iter(self.window_tokenizer.windows_of(long_texts, policy, spans=spans))
        for i, ids, more in zip(keep, first, longer, strict=True):
            if more:
                tok.add_windows(i, next(long_windows))
            else:
                tok.add_row(i, ids, (0, len(texts[i])))
        return tok

    def _token_ids(
        self, texts: list[str], max_length: int | None = None
    ) -> tuple[list[list[int]], list[bool]]:
        """The ids the model reads for each text (``max_length`` of them at most, specials
        included) and whether the text had more, tokenizing a bounded prefix of a long text.

        Tokenizing all of a 10 MB text to keep its first 512 tokens took seconds on the one
        model thread. A long text is cut first, just before an ASCII whitespace character
        at or after ``cut`` characters (``_prefix``), and the prefix is tokenized as the
        whole text would be. Its tokens are the whole text's only where the cut cannot have
        changed them: the fast tokenizer normalizes characters locally, splits the text into
        words (pre-tokens: whitespace is a boundary for BERT's, the regex of byte-level BPE
        and SentencePiece's Metaspace) and tokenizes each word on its own, so only the word
        at the cut can differ. The prefix is taken when the first token the model does not
        read (the first of the second overflow row) belongs to an earlier word than the
        prefix's last one: then every token the model reads, and the fact that more follow,
        are the same as for the whole text. Otherwise (few tokens per character: long
        whitespace runs, one word of many characters, a tokenizer that does not split words)
        the cut moves 4x further, up to the whole text, which is then tokenized as before.
        """
        # Slow only where the tokenizer says so (every transformers tokenizer does); a wrapper
        # without ``is_fast`` (a test's spy around a fast one) keeps the fast path.
        max_length = max_length or self.max_length
        if not getattr(self.tokenizer, "is_fast", True):
            return self._slow_token_ids(texts, max_length)
        ids: list[list[int]] = [[] for _ in texts]
        truncated = [False] * len(texts)
        pending = list(range(len(texts)))
        cut = max_length * _CHARS_PER_TOKEN
        while pending:
            pieces = [_prefix(texts[k], cut) if self.cut_prefixes else texts[k] for k in pending]
            enc = self.tokenizer(
                pieces,
                truncation=True,
                max_length=max_length,
                return_overflowing_tokens=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            rows: list[list[int]] = [[] for _ in pending]
            for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
                rows[sample].append(row)
            retry = []
            for j, k in enumerate(pending):
                whole = len(pieces[j]) == len(texts[k])
                if whole or (len(rows[j]) > 1 and _words_before_cut(enc, rows[j])):
                    ids[k] = enc["input_ids"][rows[j][0]]
                    truncated[k] = len(rows[j]) > 1
                else:
                    retry.append(k)
            pending = retry
            cut *= 4
        return ids, truncated

    def _slow_token_ids(
        self, texts: list[str], max_length: int
    ) -> tuple[list[list[int]], list[bool]]:
        """``_token_ids`` for a slow (Python) tokenizer: each text tokenized whole.

        The bounded prefix of the fast path is correct only where the cut cannot change the
        tokens before it, which it proves with the fast tokenizer's word ids; a Python
        tokenizer has none, and some split words by context (MeCab's lattice for Japanese),
        so nothing bounds the effect of a cut. Each text is tokenized once, without special
        tokens or truncation, and ``prepare_for_model`` (the second half of the slow
        tokenizer's own ``__call__``) adds the special tokens and truncates as a call with
        ``truncation=True, max_length=...`` would; the text was cut when its tokens and the
        special ones are more than ``max_length``. (``verbose=False``: the untruncated ids
        are meant to be longer than the model's limit; transformers would warn.)
        """
        ids: list[list[int]] = []
        truncated: list[bool] = []
        specials = self.tokenizer.num_special_tokens_to_add()
        for text in texts:
            tokens = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            ready = self.tokenizer.prepare_for_model(
                tokens,
                add_special_tokens=True,
                truncation=True,
                max_length=max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
            ids.append(list(ready["input_ids"]))
            truncated.append(len(tokens) + specials > max_length)
        return ids, truncated

    def _encode_window(
        self, tok: _Tokenized, size: int, batch_size: int, policy: WindowPolicy
    ) -> SparseBatch | PassageBatch:
        """The window's ``size`` texts, encoded: one row per text (truncate, maxpool), or a
        PassageBatch (passages)."""
        encoded = self._encode_rows(tok, batch_size)
        truncated = np.zeros(size, dtype=bool)
        truncated[tok.positions] = tok.truncated
        if policy.mode == "passages":
            return PassageBatch(
                SparseBatch.from_rows(encoded, vocab=self.vocab),
                document=np.asarray(tok.positions, dtype=np.int64),
                spans=np.asarray(tok.spans, dtype=np.int64).reshape(-1, 2),
                truncated=truncated,
            )
        empty_row = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if policy.mode == "truncate":  # one row per text: placed, nothing to pool
            rows = [empty_row] * size
            for position, row in zip(tok.positions, encoded, strict=True):
                rows[position] = row
            return SparseBatch.from_rows(rows, vocab=self.vocab, truncated=truncated)
        grouped: list[Rows] = [[] for _ in range(size)]
        for position, row in zip(tok.positions, encoded, strict=True):
            grouped[position].append(row)
        windows = np.asarray([len(group) for group in grouped], dtype=np.int64)
        rows = [max_pool(group) if group else empty_row for group in grouped]
        return SparseBatch.from_rows(rows, vocab=self.vocab, truncated=truncated, windows=windows)

    def _encode_rows(self, tok: _Tokenized, batch_size: int) -> Rows:
        """Every row of ``tok`` through the model, in ``tok``'s order: length-sorted batches
        of at most ``batch_size`` rows (a long text's windows share batches with others)."""
        encoded: Rows = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * len(tok.ids)
        order = sorted(range(len(tok.ids)), key=lambda k: len(tok.ids[k]), reverse=True)

        def place(batch: list[int], collect: Callable[[], Rows]) -> None:
            for k, row in zip(batch, collect(), strict=True):
                encoded[k] = row

        # One batch queued ahead: on an accelerator batch k+1 runs while batch k's results are
        # collected (device_batches.py); on a CPU a launch has computed its batch already.
        queued: tuple[list[int], Callable[[], Rows]] | None = None
        for batch in _length_batches(order, tok.ids, batch_size, self.max_batch_tokens):
            launched = (batch, self._launch([tok.ids[k] for k in batch]))
            if queued is not None:
                place(*queued)
            queued = launched
        if queued is not None:
            place(*queued)
        return encoded

    def _launch(self, ids: list[list[int]]) -> Callable[[], Rows]:
        """Start encoding a batch; the returned function gives its rows. On an accelerator
        (max pooling) the work is only queued and the function waits for it; on a CPU the rows
        are computed here."""
        if self.device.type == "cpu" or self.head.pooling != "max":
            rows = self._encode_batch(ids)
            return lambda: rows
        return self._queue_on_device(ids).collect

    @torch.inference_mode()
    def _queue_on_device(self, ids: list[list[int]]) -> PendingRows:
        """The batch's forward and pooling, queued on the accelerator without a wait."""
        if self.fast_forward is not None:
            batch = DeviceBatch.build(ids, self.device)
            packed = self.fast_forward.packed(
                batch.ids, batch.lengths, row_lengths=batch.row_lengths, slots=batch.slots
            )
            hidden = packed.index_select(0, batch.gather).view(len(ids), batch.length, -1)
        else:
            batch = DeviceBatch.build(ids, self.device, pad_id=self.pad_id)
            assert batch.padded_ids is not None and batch.mask is not None
            hidden = self._forward(batch.padded_ids, batch.mask.long())
            # pads become copies of the row's first position: a duplicate never changes a max
            hidden = torch.where(batch.mask.unsqueeze(-1), hidden, hidden[:, :1, :])
        return PendingRows(self.head.dense_max(hidden))

    @torch.inference_mode()
    def _encode_batch(self, ids: list[list[int]]) -> Rows:
        lengths = [len(row) for row in ids]
        if self.fast_forward is not None and self.head.takes_packed(sum(lengths)):
            # A query or a micro-batch of short texts: no padding from input ids to pooling.
            flat = torch.tensor(list(chain.from_iterable(ids)), dtype=torch.long)
            packed = self.fast_forward.packed(flat.to(self.device), lengths)
            return self._split_rows(self.head.pool_packed(packed, lengths), len(ids))
        if len(ids) == 1:
            # One text has no padding: no mask to build, and the model skips its own.
            input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
            mask = torch.ones_like(input_ids, dtype=torch.bool)
            hidden = self._forward(input_ids, None)
        else:
            length = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), length), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(ids), length), dtype=torch.bool)
            for i, row in enumerate(ids):
                input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
                mask[i, : len(row)] = True
            input_ids = input_ids.to(self.device, non_blocking=True)
            mask = mask.to(self.device, non_blocking=True)
            hidden = self._forward(input_ids, mask.long())
        return self._split_rows(self.head(hidden, mask), len(ids))

    @staticmethod
    def _split_rows(sparse: SparseRows, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, weights) per row, ids ascending."""
        rows = sparse.rows.cpu().numpy()
        cols = sparse.cols.cpu().numpy()
        values = sparse.values.cpu().numpy()
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        bounds = np.searchsorted(rows, np.arange(count + 1))
        return [
            (cols[bounds[i] : bounds[i + 1]], values[bounds[i] : bounds[i + 1]])
            for i in range(count)
        ]

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The MLM transform's hidden states [B, L, H] (the vocabulary projection is the head's)."""
        if self.fast_forward is not None:
            return self.fast_forward(input_ids, mask)
        out = self.model(input_ids=input_ids, attention_mask=mask)
        return out.logits if hasattr(out, "logits") else out[0]


@contextlib.contextmanager
def _no_transformers_progress_bars() -> Iterator[None]:
    """Without transformers' "Loading weights" bar: it went to every command's stderr, --quiet
    and --json included. Restored afterwards, so an application's own setting stands."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_masked_lm(
    layout: CheckpointLayout, name: str, trust_remote_code: bool
) -> tuple[Any, PreTrainedModel]:
    """The checkpoint's tokenizer and masked-LM, in fp32 on the CPU (placed later)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    try:
        with _no_transformers_progress_bars():
            # trust_remote_code is always a bool here: left None, transformers asks on
            # standard input (and waits) whether to run a checkpoint's code.
            tokenizer = AutoTokenizer.from_pretrained(
                str(layout.mlm_dir), trust_remote_code=trust_remote_code
            )
            model = AutoModelForMaskedLM.from_pretrained(
                str(layout.mlm_dir), dtype=torch.float32, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{name}: not a masked-LM checkpoint ({exc})") from exc
    return tokenizer, model


def _use_screen(
    screen: bool | Literal["auto"],
    fast_paths: Literal["auto", "on", "off"],
    device: torch.device,
    dtype: torch.dtype,
) -> bool:
    """Whether the head screens with bf16: asked for ("auto": the CPU has fast bf16, or
    ``SPLADE_ES_CPU_FAST_PATHS`` says), and only for fp32 on a CPU."""
    if screen == "auto":
        screen = {"on": True, "off": False}.get(fast_paths, _cpu_has_fast_bf16())
    return bool(screen) and device.type == "cpu" and dtype == torch.float32


def _splade_head(
    decoder: nn.Linear,
    layout: CheckpointLayout,
    device: torch.device,
    dtype: torch.dtype,
    *,
    vocab_chunk: int,
    screen: bool,
) -> SpladeHead:
    """The pooling head over the model's vocabulary projection, on ``device``."""
    return SpladeHead(
        decoder.weight.to(device, dtype),
        None if decoder.bias is None else decoder.bias.to(device),
        pooling=layout.pooling,
        activation=layout.activation,
        vocab_chunk=vocab_chunk,
        screen=screen,
    )


def _placed(
    model: nn.Module, device: torch.device, dtype: torch.dtype, *, compile: bool
) -> nn.Module:
    """The model on ``device`` in ``dtype``, in eval mode; compiled when asked."""
    # Taken as an nn.Module: transformers types its own ``to`` for its decorator, not callers.
    placed = model.to(device, dtype).eval()
    if compile:
        # An nn.Module in, an nn.Module (OptimizedModule) out; typed as any callable.
        placed = cast(nn.Module, torch.compile(placed, dynamic=True))
    return placed


def _query_side(
    files: StaticQueryFiles,
    encoder: SpladeEncoder,
    tokenizer: Any,
    loaded: StaticQueryEncoder | None,
    trust_remote_code: bool,
) -> StaticQueryEncoder:
    """An inference-free model's query table over ``encoder``'s vocabulary: ``loaded``
    (already read by the caller) when given, else read from ``files``."""
    if loaded is not None:
        query = loaded.over_vocabulary(encoder.vocab)
    else:
        query = StaticQueryEncoder.from_files(
            files, vocab=encoder.vocab, name=encoder.name, trust_remote_code=trust_remote_code
        )
    _require_same_vocabulary(query, tokenizer, encoder.name)
    return query


def _require_one_vector(policy: WindowPolicy) -> None:
    if policy.mode == "passages":
        raise ConfigurationError.bad_value(
            "long_documents",
            "passages",
            "gives several vectors per document: use encode_passages / iter_passages",
        )


def _no_passages(vocab: Vocabulary) -> PassageBatch:
    return PassageBatch(
        SparseBatch.from_rows([], vocab=vocab),
        document=np.zeros(0, np.int64),
        spans=np.zeros((0, 2), np.int64),
        truncated=np.zeros(0, bool),
    )


def _ramped_windows(batch_size: int) -> Iterator[int]:
    """Texts per window: 2, 4 and 8 batches, then 16 batches for good."""
    yield from (batch_size * 2, batch_size * 4, batch_size * 8)
    yield from repeat(batch_size * 16)


def _length_batches(
    order: list[int], ids: list[list[int]], batch_size: int, max_tokens: int
) -> Iterator[list[int]]:
    """Cut length-sorted texts into batches of at most ``batch_size`` texts and about
    ``max_tokens`` padded tokens (a lone over-long text still gets its own batch)."""
    batch: list[int] = []
    for k in order:
        longest = len(ids[batch[0]]) if batch else len(ids[k])
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * longest > max_tokens):
            yield batch
            batch = []
        batch.append(k)
    if batch:
        yield batch


# The first cut of a long text, in characters per token the model reads: English runs at
# about 4-5 (spaces included), so one tokenization usually suffices; a text that needs more
# (long whitespace runs, long words) is cut again 4x further (``_token_ids``).
_CHARS_PER_TOKEN = 8
_ASCII_SPACE = re.compile(r"[ \t\n\r]")


def _prefix(text: str, cut: int) -> str:
    """``text`` up to (not including) the first ASCII whitespace character at or after
    ``cut`` that follows a non-whitespace one, or all of ``text`` when there is none.

    Whitespace ends a word for every pre-tokenizer of the fast tokenizers in use, and one
    that follows a non-whitespace character is the first of its run, so the prefix's last
    word is complete (for byte-level BPE, whose words carry their leading space, too).
    ASCII only: it is whitespace by every definition (Python's, Rust's, BERT's).
    """
    if len(text) <= cut:
        return text
    match = _ASCII_SPACE.search(text, cut)
    while match is not None and text[match.start() - 1].isspace():
        match = _ASCII_SPACE.search(text, _end_of_space_run(text, match.start()))
    return text if match is None else text[: match.start()]


def _end_of_space_run(text: str, start: int) -> int:
    """The index of the first non-whitespace character at or after ``start`` (or the end)."""
    run = _SPACE_RUN.match(text, start)
    return run.end() if run else start + 1


_SPACE_RUN = re.compile(r"\s+")


def _words_before_cut(enc: Any, rows: list[int]) -> bool:
    """Whether the first token the model does not read (the first of overflow row 2) lies
    in an earlier word than the last word of the tokenized prefix: the words before the
    prefix's last are the whole text's too (``SpladeEncoder._token_ids``)."""
    dropped = next((w for w in enc.word_ids(rows[1]) if w is not None), None)
    last = max((w for w in enc.word_ids(rows[-1]) if w is not None), default=None)
    return dropped is not None and last is not None and dropped < last


def _require_same_vocabulary(query: StaticQueryEncoder, tokenizer: Any, name: str) -> None:
    """Query and document ids must name the same tokens, or scores would be meaningless."""
    document_vocab = tokenizer.get_vocab()
    if query.backend.get_vocab(with_added_tokens=True) != document_vocab:
        raise ModelLoadError(
            f"{name}: the query tokenizer's vocabulary differs from the document model's"
        )


def _detach_vocab_projection(model: PreTrainedModel, name: str) -> nn.Linear:
    """Swap the model's vocabulary projection for a pass-through and return the projection."""
    decoder = model.get_output_embeddings()
    if not isinstance(decoder, nn.Linear):
        raise ModelLoadError(f"{name}: the masked-LM head has no linear vocabulary projection")
    for parent in model.modules():
        for attr, child in list(parent.named_children()):
            if child is decoder:
                setattr(parent, attr, _PassThrough())
                return decoder
    raise ModelLoadError(f"{name}: could not locate the vocabulary projection module")


# Device kinds splade-es runs on, and how to count the devices of each that torch can use.
_ACCELERATORS = ("cuda", "xpu", "mps")
DEVICE_HELP = "auto, cpu, cuda, cuda:N, xpu, xpu:N or mps"


def parse_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    ``ConfigurationError`` (``option="device"``) for a name torch does not know, a kind
    splade-es does not run on (``meta``), or a device this machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError.bad_value("device", device, f"must be {DEVICE_HELP}") from exc
    if parsed.type == "cpu":
        return parsed
    if parsed.type not in _ACCELERATORS:
        raise ConfigurationError.bad_value("device", device, f"must be {DEVICE_HELP}")
    present = _device_count(parsed.type)
    if present == 0:
        raise ConfigurationError.bad_value(
            "device", device, f"must be a device this machine has (torch sees no {parsed.type})"
        )
    if parsed.index is not None and parsed.index >= present:
        raise ConfigurationError.bad_value(
            "device",
            device,
            f"must be a device this machine has ({parsed.type}:0 to {parsed.type}:{present - 1})",
        )
    return parsed


def _device_count(kind: str) -> int:
    """Devices of ``kind`` torch can use here (0 when its build lacks the backend)."""
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
        return int(backend is not None and backend.is_available())
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        return 0
    return int(module.device_count())


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"`` (bf16, else fp16, on CUDA; fp32 elsewhere) or a dtype name for ``device``;
    ``ConfigurationError`` (``option="dtype"``) for any other name."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise ConfigurationError.bad_value(
            "dtype", dtype, "must be auto, float32, bfloat16 or float16"
        )
    return _DTYPES[dtype]


def _max_length(
    requested: int | None, layout: CheckpointLayout, tokenizer: Any, model: nn.Module
) -> int:
    limit = getattr(model.config, "max_position_embeddings", 512) or 512
    if requested is not None:
        if requested < 2 or requested > limit:
            raise ConfigurationError.bad_value(
                "max_length", requested, f"must be 2 to {limit} for this model"
            )
        return requested
    candidates = [limit, layout.max_seq_length, getattr(tokenizer, "model_max_length", None)]
    return min(int(c) for c in candidates if c and c < 10**9)


def _default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per batch: bounds the [B, L, vocab_chunk] logits block in memory."""
    if device.type != "cuda":
        return 16384
    free, _ = torch.cuda.mem_get_info(device)
    # ~2 bytes x 2048 vocab chunk per token for the logits block, x8 headroom for activations.
    return int(max(8192, min(1 << 20, free // (2048 * 2 * 8))))


FAST_PATHS_ENV = "SPLADE_ES_CPU_FAST_PATHS"


def cpu_fast_paths() -> Literal["auto", "on", "off"]:
    """``SPLADE_ES_CPU_FAST_PATHS``: which CPU fast paths new encoders take.

    "auto" (default): FastForward for BERT/DistilBERT, and the bf16 screen (fused where torch
    has oneDNN's bf16 product) on CPUs with AVX512-BF16 or AMX. "on": the screen on any CPU
    (bf16 is then emulated: slower, same vectors), which is how a machine without those flags
    tests the screen. "off": neither, transformers' own forward and the plain fp32 head, as a
    CPU without the flags runs. The suite runs under all three (``.ci/run``), so both kinds of
    CPU are covered whichever one CI lands on. (``SPLADE_ES_NO_SCREEN=1``, older, turns the
    screen off only.)
    """
    value = os.environ.get(FAST_PATHS_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "on", "off"):
        raise ConfigurationError(f"{FAST_PATHS_ENV}={value!r}: expected auto, on or off")
    return value  # type: ignore[return-value]


def _cpu_has_fast_bf16() -> bool:
    if os.environ.get("SPLADE_ES_NO_SCREEN"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


__all__ = ["SpladeEncoder"]
