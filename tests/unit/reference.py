"""The SPLADE reference formula, computed the plain way with transformers: the full
batch x length x vocab logits, one text at a time. Tests compare our encoder to this."""

from __future__ import annotations

import numpy as np
import torch


def reference_vectors(
    model_dir,
    texts,
    *,
    max_length: int,
    pooling: str = "max",
    activation: str = "relu",
    trust_remote_code: bool = False,
) -> np.ndarray:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForMaskedLM.from_pretrained(
        str(model_dir), trust_remote_code=trust_remote_code
    ).eval()
    rows = []
    for text in texts:
        batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits[0].double()  # [L, V]
        weights = torch.log1p(torch.relu(logits))
        if activation == "log1p_relu":
            weights = torch.log1p(weights)
        rows.append((weights.amax(0) if pooling == "max" else weights.sum(0)).numpy())
    return np.stack(rows)
