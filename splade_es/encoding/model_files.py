"""Find and read a SPLADE checkpoint: a Hub id or a local folder, in one of four layouts.

When no model is named, ``default_model`` picks one, in this order (the README's "Which model"):

1. ``SPLADE_ES_MODEL`` (the CLI's ``--model`` comes before it);
2. ``../shared/models/splade-tiny`` from the working directory (this project's machines keep
   the checkpoint there, beside the repository);
3. ``splade-es/models/splade-tiny`` in the user cache folder (``$XDG_CACHE_HOME``, else
   ``~/.cache``): where a user puts a local copy once;
4. ``rasyosef/splade-tiny`` (MIT, 4.4M parameters) through the Hugging Face cache: downloaded
   once when the Hub is reachable, then read from the cache offline too.

* a plain Hugging Face masked-LM folder: siamese (the same network for queries and documents);
* the same plus ``idf.json`` (OpenSearch's document-only models): inference-free;
* a sentence-transformers ``SparseEncoder`` folder (``modules.json``: MLMTransformer +
  SpladePooling): siamese;
* a sentence-transformers ``Router`` folder (``router_config.json``; a ``SparseStaticEmbedding``
  on the query route, MLMTransformer + SpladePooling on the document route): inference-free.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..exceptions import ModelLoadError

if TYPE_CHECKING:
    # Annotations only: pooling imports torch, and reading a layout (the query side of an
    # inference-free model included) needs no torch.
    from .pooling import Activation, Pooling

Mode = Literal["siamese", "inference-free"]


# Here rather than in static_query, which reads a layout: the dependency runs one way,
# static_query -> model_files (static_query re-exports the name).
@dataclass(frozen=True)
class StaticQueryFiles:
    """Where an inference-free model keeps its query side (found by ``read_layout``).

    ``add_special_tokens``: whether the reference tokenizes the query with [CLS]/[SEP] (the
    OpenSearch model cards do; sentence-transformers does not). The special tokens never get a
    weight, but they take two places of the truncation budget.
    """

    tokenizer_dir: Path
    weights: Path  # idf.json ({token: weight}), or a safetensors / torch file holding "weight"
    add_special_tokens: bool


@dataclass(frozen=True, kw_only=True)
class CheckpointLayout:
    """Where the masked-LM weights are and how the checkpoint pools them."""

    root: Path
    mlm_dir: Path
    pooling: Pooling = "max"
    activation: Activation = "relu"
    max_seq_length: int | None = None
    sentence_transformers: bool = False
    query_files: StaticQueryFiles | None = None  # inference-free models: the query table

    @property
    def mode(self) -> Mode:
        return "siamese" if self.query_files is None else "inference-free"


DEFAULT_HUB_MODEL = "rasyosef/splade-tiny"
MODEL_ENV = "SPLADE_ES_MODEL"
# Hub snapshots this process already resolved: a second load of the same id (serve loads the
# query side, then the model) must not ask an unreachable Hub again and wait for its timeout.
_SNAPSHOTS: dict[tuple[str, str | None, str], Path] = {}


def default_model_folders() -> list[Path]:
    """The local folders ``default_model`` looks in, in order (steps 2 and 3)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [
        Path("..", "shared", "models", "splade-tiny"),
        cache.expanduser() / "splade-es" / "models" / "splade-tiny",
    ]


def default_model(*, download: bool = True) -> str:
    """The model to load when none is named: ``SPLADE_ES_MODEL``, else the first of
    ``default_model_folders`` that holds a checkpoint, else ``DEFAULT_HUB_MODEL`` from the
    Hugging Face cache (fetched first when ``download`` and the Hub answers).

    Raises ``ModelLoadError`` with one line naming what was tried and how to point at a folder.
    """
    named = os.environ.get(MODEL_ENV, "").strip()
    if named:
        return named
    tried = [f"{MODEL_ENV} (not set)"]
    for folder in default_model_folders():
        if (folder / "config.json").is_file() or (folder / "modules.json").is_file():
            return os.path.abspath(folder)
        tried.append(str(folder))
    try:
        _hub_snapshot(DEFAULT_HUB_MODEL, None, local_files_only=True)
        return DEFAULT_HUB_MODEL
    except Exception:  # not in the cache: the Hub itself comes next
        reason = "not in the Hugging Face cache"
    from huggingface_hub import constants

    if not download:
        reason += " (not downloaded by this command)"
    elif constants.HF_HUB_OFFLINE:
        reason += " and HF_HUB_OFFLINE is set"
    else:
        try:
            _hub_snapshot(DEFAULT_HUB_MODEL, None, local_files_only=False)
            return DEFAULT_HUB_MODEL
        except Exception as exc:  # offline, blocked, rate-limited: say which
            reason += f" and the Hub did not answer ({_first_line(exc)})"
    tried.append(f"{DEFAULT_HUB_MODEL} from the Hugging Face Hub: {reason}")
    raise ModelLoadError(
        f"no model given and none found; tried {', '.join(tried)}. Pass --model FOLDER (or "
        f"set {MODEL_ENV}=FOLDER) with a local SPLADE checkpoint folder, or copy one to "
        f"{default_model_folders()[-1]}"
    )


def _hub_snapshot(name: str, revision: str | None, *, local_files_only: bool) -> Path:
    from huggingface_hub import constants, snapshot_download

    key = (name, revision, str(constants.HF_HUB_CACHE))
    if key not in _SNAPSHOTS:
        _SNAPSHOTS[key] = Path(
            snapshot_download(name, revision=revision, local_files_only=local_files_only)
        )
    return _SNAPSHOTS[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def resolve_checkpoint(name_or_path: str | None, *, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub id, fetched (or found in the local HF cache).
    ``None``: ``default_model()``."""
    if name_or_path is None:
        name_or_path = default_model()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{name_or_path} is a file; expected a checkpoint folder or a Hub id")
    if name_or_path.startswith((".", "/", "~")):
        raise ModelLoadError(f"no checkpoint folder at {name_or_path}")
    try:
        return _hub_snapshot(name_or_path, revision, local_files_only=False)
    except Exception as exc:  # network, auth, not found: all mean "cannot load"
        raise ModelLoadError(
            f"could not load {name_or_path!r} as a local folder or from the Hugging Face Hub "
            f"({_first_line(exc)}). Pass a local path when the Hub is not reachable."
        ) from exc


def read_layout(root: Path) -> CheckpointLayout:
    modules_file = root / "modules.json"
    if not modules_file.exists():
        _require_model_config(root)
        idf = root / "idf.json"
        # OpenSearch's document-only layout: the card's reference code tokenizes queries with
        # the special tokens, so they take their places in the truncation budget.
        query = StaticQueryFiles(root, idf, add_special_tokens=True) if idf.is_file() else None
        return CheckpointLayout(root=root, mlm_dir=root, query_files=query)
    try:
        modules = json.loads(modules_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {modules_file}: {exc}") from exc
    entries = [(m.get("type", ""), root / m.get("path", "")) for m in modules]
    routers = [sub for kind, sub in entries if kind.endswith(".Router")]
    if routers:
        if len(entries) != 1:
            raise ModelLoadError(f"{root}: modules.json has a Router among other modules")
        return _read_router(root, routers[0])
    return _document_side(root, entries)


def _document_side(
    root: Path, entries: list[tuple[str, Path]], query: StaticQueryFiles | None = None
) -> CheckpointLayout:
    """The MLMTransformer + SpladePooling pair among ``entries`` (type, folder)."""
    mlm_dir, pooling_cfg = None, None
    for kind, sub in entries:
        if kind.endswith(("MLMTransformer", ".Transformer")) and mlm_dir is None:
            mlm_dir = sub
        elif kind.endswith("SpladePooling"):
            pooling_cfg = _read_json(sub / "config.json")
        elif _is_static(kind):
            raise ModelLoadError(
                f"{root}: a SparseStaticEmbedding outside a Router's query route is not "
                "supported (documents need the masked-LM)"
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
        query_files=query,
    )


def _read_router(root: Path, router_dir: Path) -> CheckpointLayout:
    """A sentence-transformers Router: its query and document routes, resolved the way
    ``Router._resolve_route`` does for text (sentence_transformers/base/modules/router.py)."""
    config_file = router_dir / "router_config.json"
    if not config_file.is_file():
        config_file = router_dir / "config.json"  # the Router's older file name
    config = _read_json(config_file)
    types, structure = config.get("types"), config.get("structure")
    if not isinstance(types, dict) or not isinstance(structure, dict):
        raise ModelLoadError(f"{config_file}: no 'types' and 'structure' (not a Router config)")

    def route(task: str) -> list[tuple[str, Path]]:
        name = _route_name(config, task)
        if name not in structure:
            raise ModelLoadError(f"{config_file}: no route for {task} texts")
        try:
            return [(types[module], _module_dir(router_dir, module)) for module in structure[name]]
        except KeyError as exc:
            raise ModelLoadError(f"{config_file}: route {name!r} names unknown {exc}") from exc

    query, document = route("query"), route("document")
    if query == document:
        return _document_side(root, document)
    static = [sub for kind, sub in query if _is_static(kind)]
    if len(query) != 1 or not static:
        raise ModelLoadError(
            f"{root}: the query route must be one SparseStaticEmbedding (found "
            f"{', '.join(kind.rsplit('.', 1)[-1] for kind, _ in query)}): models with two "
            "different networks are not supported"
        )
    return _document_side(root, document, _static_files(static[0]))


def _module_dir(router_dir: Path, module: str) -> Path:
    """A Router module's folder. OpenSearch's doc-only repositories keep the document
    masked-LM at the repository root (config.json, sentence_bert_config.json there, no
    ``document_0_*`` folder; e.g. opensearch-neural-sparse-encoding-doc-v1's sentence-
    transformers support, discussion #5): then the root is the module's folder."""
    folder = router_dir / module
    if not folder.is_dir() and (router_dir / "config.json").is_file():
        return router_dir
    return folder


def _route_name(config: dict, task: str) -> str | None:
    parameters = config.get("parameters") or {}
    mappings = {}
    for key, value in (parameters.get("route_mappings") or {}).items():
        try:
            mappings[tuple(ast.literal_eval(key))] = value
        except (ValueError, SyntaxError, TypeError):
            continue  # sentence-transformers skips unparsable keys too
    for key in ((task, "text"), (task, None), (None, "text"), (None, None)):
        if key in mappings:
            return mappings[key]
    if task in config["structure"]:
        return task
    return parameters.get("default_route")


def _is_static(kind: str) -> bool:
    # "IDF" is the module's name in sentence-transformers releases before SparseStaticEmbedding.
    return kind.endswith(("SparseStaticEmbedding", ".IDF"))


def _static_files(folder: Path) -> StaticQueryFiles:
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    path = config.get("path")
    candidates = [folder / path] if isinstance(path, str) and path.endswith(".json") else []
    candidates += [folder / "model.safetensors", folder / "pytorch_model.bin"]
    for weights in candidates:
        if weights.is_file():
            return StaticQueryFiles(folder, weights, add_special_tokens=False)
    raise ModelLoadError(f"{folder}: no token weight table (model.safetensors or idf.json)")


def _require_model_config(folder: Path) -> None:
    # Checked here, before transformers looks: without config.json it reports whatever it
    # tried last (a tokenizer or sentencepiece error), which does not say what is wrong.
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder}: no config.json: not a model folder (expected a Hugging Face masked-LM "
            "checkpoint or a sentence-transformers SparseEncoder folder)"
        )


# The auto classes a SPLADE load goes through. A checkpoint's ``auto_map`` entry for one of
# them names Python code in the checkpoint that transformers runs only with
# ``trust_remote_code=True``; without it, transformers refuses, or (when the model type is
# one it knows) silently builds its own class instead of the checkpoint's, with other weights
# ignored. Either way the model the checkpoint describes is not what runs: it is refused.
_LOADED_AUTO_CLASSES = ("AutoConfig", "AutoModelForMaskedLM", "AutoTokenizer")


def custom_code(folder: Path) -> list[str]:
    """The checkpoint's own classes (``auto_map`` of config.json and tokenizer_config.json)
    that loading ``folder`` as a masked-LM and its tokenizer would run; [] when none."""
    found: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        config = _read_json(path) if path.is_file() else {}
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if not isinstance(auto_map, dict):
            continue
        for auto_class in _LOADED_AUTO_CLASSES:
            entry = auto_map.get(auto_class)
            # AutoTokenizer's entry is a [slow, fast] pair, either of which may be null.
            for target in entry if isinstance(entry, list) else [entry]:
                if isinstance(target, str) and target not in found:
                    found.append(target)
    return found


def require_trusted_code(folder: Path, name: str, trust_remote_code: bool) -> None:
    """``ModelLoadError`` naming the option when ``folder`` ships code that is not trusted."""
    classes = custom_code(folder)
    if classes and not trust_remote_code:
        raise ModelLoadError(
            f"{name}: the checkpoint ships its own Python code ({', '.join(classes)}), which "
            "runs only with --trust-remote-code (trust_remote_code=True): pass it if you "
            "trust this checkpoint's source"
        )


def require_trusted_layout(layout: CheckpointLayout, name: str, trust_remote_code: bool) -> None:
    """``require_trusted_code`` for every folder a load of ``layout`` reads: the masked-LM's
    and, for an inference-free model, the query tokenizer's."""
    require_trusted_code(layout.mlm_dir, name, trust_remote_code)
    if layout.query_files is not None:
        require_trusted_code(layout.query_files.tokenizer_dir, name, trust_remote_code)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc
