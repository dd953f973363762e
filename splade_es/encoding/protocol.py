"""What the rest of splade-es needs of an encoder, as protocols (no torch here).

``QueryBuilder``, ``search``, ``evaluate`` and serve's query path need an ``Encoder``: a vocabulary
and ``encode_queries``. Ingestion, migration and serve's document path need a
``DocumentEncoder``: also ``encode_documents`` and the streaming ``iter_encode``.
Indexing documents as passages (``long_documents="passages"``) needs a ``PassageEncoder``:
also ``iter_passages``. ``SpladeEncoder`` is all three; ``StaticQueryEncoder`` (an
inference-free query table) is an ``Encoder`` only. Any object with these members works: a
test double, a remote encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from ..sparse import PassageBatch, SparseBatch, Vocabulary

if TYPE_CHECKING:
    from .windows import WindowPolicy

EmptyPolicy = Literal["error", "empty_vector"]
"""What an empty or blank text becomes: an error naming it, or a vector with no tokens."""
ProgressCallback = Callable[[int], None]
"""Called with the number of texts just finished."""


@runtime_checkable
class Encoder(Protocol):
    """Turns query texts into sparse vectors over ``vocab``."""

    name: str
    vocab: Vocabulary

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        top_k: int | None = None,
        min_weight: float | None = None,
        empty: EmptyPolicy = ...,
    ) -> SparseBatch:
        """Row ``i`` of the result is the vector of ``texts[i]``."""
        ...


@runtime_checkable
class DocumentEncoder(Encoder, Protocol):
    """Also turns documents into sparse vectors, in batches or as a stream."""

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = ...,
        top_k: int | None = None,
        min_weight: float | None = None,
        empty: EmptyPolicy = ...,
        progress: ProgressCallback | None = None,
    ) -> SparseBatch:
        """Row ``i`` of the result is the vector of ``texts[i]``."""
        ...

    def iter_encode(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = ...,
        window: int | None = None,
        empty: EmptyPolicy = ...,
        progress: ProgressCallback | None = None,
    ) -> Iterator[SparseBatch]:
        """One batch per window of texts, in input order; memory bounded by the window."""
        ...


@runtime_checkable
class PassageEncoder(DocumentEncoder, Protocol):
    """Also turns each document into passages: one vector per window of its text."""

    def iter_passages(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = ...,
        window: int | None = None,
        empty: EmptyPolicy = ...,
        progress: ProgressCallback | None = None,
        policy: WindowPolicy | None = None,
    ) -> Iterator[PassageBatch]:
        """One batch of passages per window of texts, in input order."""
        ...
