"""Text -> sparse vectors: the encoders and what they are built from.

* ``protocol``      ``Encoder``: what QueryBuilder, search, ingest and serve need of an encoder;
* ``model_files``   which checkpoint, read once: its layout (pooling, activation, inference-free
                    query table, remote code) and where it lives;
* ``encoder``       ``SpladeEncoder``: the masked-LM SPLADE formula, batched, on CPU or GPU;
* ``pooling``       the SPLADE head (log-saturated activation, max pooling) without the dense
                    (tokens x vocabulary) tensor;
* ``fast_forward``  a fused BERT forward for CPUs; ``fused_screen`` its bf16 screen;
* ``static_query``  ``StaticQueryEncoder``: inference-free query tables (no model at query time).

Only ``protocol`` is imported here: the encoders import torch, and a process that only builds
queries should not pay for it (``from splade_es.encoding.encoder import SpladeEncoder``, or
``splade_es.SpladeEncoder``, which loads it on first use).
"""

from .protocol import DocumentEncoder, Encoder, PassageEncoder

__all__ = ["DocumentEncoder", "Encoder", "PassageEncoder"]
