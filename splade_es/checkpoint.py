"""Find and read a SPLADE checkpoint: a Hub id or a local folder, plain Hugging Face masked-LM
layout or a sentence-transformers ``SparseEncoder`` folder (``modules.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .exceptions import ModelLoadError
from .pooling import Activation, Pooling


@dataclass(frozen=True, kw_only=True)
class CheckpointLayout:
    """Where the masked-LM weights are and how the checkpoint pools them."""

    root: Path
    mlm_dir: Path
    pooling: Pooling = "max"
    activation: Activation = "relu"
    max_seq_length: int | None = None
    sentence_transformers: bool = False


def resolve_checkpoint(name_or_path: str, *, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub id, fetched (or found in the local HF cache)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{name_or_path} is a file; expected a checkpoint folder or a Hub id")
    if name_or_path.startswith((".", "/", "~")):
        raise ModelLoadError(f"no checkpoint folder at {name_or_path}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision))
    except Exception as exc:  # network, auth, not found: all mean "cannot load"
        raise ModelLoadError(
            f"could not load {name_or_path!r} as a local folder or from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Pass a local path when the Hub is not reachable."
        ) from exc


def read_layout(root: Path) -> CheckpointLayout:
    modules_file = root / "modules.json"
    if not modules_file.exists():
        _require_model_config(root)
        return CheckpointLayout(root=root, mlm_dir=root)
    try:
        modules = json.loads(modules_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {modules_file}: {exc}") from exc
    mlm_dir, pooling_cfg = None, None
    for module in modules:
        kind = module.get("type", "")
        sub = root / module.get("path", "")
        if kind.endswith(("MLMTransformer", ".Transformer")) and mlm_dir is None:
            mlm_dir = sub
        elif kind.endswith("SpladePooling"):
            pooling_cfg = _read_json(sub / "config.json")
        elif kind.endswith(("Router", "SparseStaticEmbedding")):
            raise ModelLoadError(
                f"{root}: inference-free (Router/SparseStaticEmbedding) SparseEncoder models are "
                "not supported yet"
            )
    if mlm_dir is None or pooling_cfg is None:
        raise ModelLoadError(f"{root}: modules.json has no MLM transformer + SpladePooling pair")
    _require_model_config(mlm_dir)
    st_config = (
        _read_json(mlm_dir / "sentence_bert_config.json")
        if (mlm_dir / "sentence_bert_config.json").exists()
        else {}
    )
    return CheckpointLayout(
        root=root,
        mlm_dir=mlm_dir,
        pooling=pooling_cfg.get("pooling_strategy", "max"),
        activation=pooling_cfg.get("activation_function", "relu"),
        max_seq_length=st_config.get("max_seq_length"),
        sentence_transformers=True,
    )


def _require_model_config(folder: Path) -> None:
    # Checked here, before transformers looks: without config.json it reports whatever it
    # tried last (a tokenizer or sentencepiece error), which does not say what is wrong.
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder}: no config.json: not a model folder (expected a Hugging Face masked-LM "
            "checkpoint or a sentence-transformers SparseEncoder folder)"
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
