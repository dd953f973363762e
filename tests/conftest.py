"""Shared fixtures. Nothing here downloads: models are built from a config with random
weights, or the real checkpoint is taken from SPLADE_ES_TEST_MODEL (a local folder), by
default ``../shared/models/splade-tiny`` next to the repository, as the main job uses."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

# Tests must never reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "and",
    "or",
    "with",
    "by",
    "as",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "what",
    "code",
    "section",
    "depreciation",
    "tax",
    "deduction",
    "property",
    "cost",
    "income",
    "expense",
    "amortization",
    "form",
    "line",
    "garlic",
    "powder",
    "ounce",
    "tablespoon",
    "search",
    "engine",
    "sparse",
    "vector",
    "query",
    "document",
    "index",
    "cluster",
    "white",
    "matter",
    "brain",
    "imaging",
    "diffusion",
    "tensor",
    "newborn",
    "human",
    "cerebral",
    "development",
]
PUNCT = list(".,;:!?'\"()[]{}-_/\\*&%$#@+=<>|~`^")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say up front which clusters the integration tests will use (and flag the emulator)."""
    from tests.clusters import NODE_FALLBACK_REASON, available_specs

    lines = []
    for spec in available_specs():
        note = " -- an in-memory EMULATOR, not a real engine" if spec.is_emulator else ""
        if spec.source == "node":
            note = f" -- a REAL OpenSearch {spec.target} engine, in-process JVM"
        if spec.unavailable:
            note = f" -- UNAVAILABLE, its tests skip: {spec.unavailable}"
        lines.append(f"splade-es cluster: {spec.name} from {spec.source} {spec.target}{note}")
    lines += [f"splade-es: real OpenSearch node not used: {r}" for r in NODE_FALLBACK_REASON]
    return [*lines, _fast_paths_line()]


def _fast_paths_line() -> str:
    """Which CPU paths the encoders of this run take: CI runs the suite under each."""
    from splade_es.encoding.encoder import FAST_PATHS_ENV, _cpu_has_fast_bf16, cpu_fast_paths

    mode = cpu_fast_paths()
    has = _cpu_has_fast_bf16()
    screen = {"on": True, "off": False}.get(mode, has)
    return (
        f"splade-es CPU fast paths: {FAST_PATHS_ENV}={mode} -> bf16 screen "
        f"{'on' if screen else 'off'}, FastForward {'off' if mode == 'off' else 'on'} "
        f"(this CPU {'has' if has else 'lacks'} AVX512-BF16/AMX)"
    )


def _tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    pieces = ["##" + c for c in letters] + ["##" + p for p in ".,-"]
    tokens = specials + [f"[unused{i}]" for i in range(3)] + PUNCT + letters + pieces + WORDS
    return list(dict.fromkeys(tokens))  # unique, order kept


def build_tiny_model(
    directory: Path, family: str, *, seed: int = 0, distinct: bool = False
) -> Path:
    """A random-weight masked-LM checkpoint (BERT or DistilBERT) with a WordPiece tokenizer.

    ``distinct``: large token embeddings and a negative bias, so that a text's vector is
    driven by its own tokens (documents rank differently), as search tests need.
    """
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        # transformers 5 ignores vocab_file: the vocabulary is passed as a dict.
        ids = {token: i for i, token in enumerate(vocab)}
        tokenizer = BertTokenizerFast(vocab=ids, do_lower_case=True)
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    assert len(tokenizer) == len(vocab), "the test tokenizer lost its vocabulary"
    tokenizer.model_max_length = 64
    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        model = BertForMaskedLM(config)
    elif family == "distilbert":
        config = DistilBertConfig(
            vocab_size=len(vocab),
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
        )
        model = DistilBertForMaskedLM(config)
    else:
        raise ValueError(family)
    with torch.no_grad():
        # Random init gives logits near 0; a positive bias spread makes SPLADE vectors
        # non-trivial (some entries active, most not), like a trained model's.
        model.get_output_embeddings().bias.copy_(torch.randn(len(vocab)) * 2 - 1)
        if distinct:
            embeddings = model.get_input_embeddings().weight  # tied to the output projection
            embeddings.normal_(0.0, 0.6)
            model.get_output_embeddings().bias.fill_(-7.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session", params=["bert", "distilbert"])
def tiny_model_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def search_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT whose vectors tell documents apart (see ``build_tiny_model``)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-search"), "bert", distinct=True)


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_MODEL = REPO_ROOT.parent / "shared" / "models" / "splade-tiny"


def real_model_path() -> Path:
    """SPLADE_ES_TEST_MODEL, else ``../shared/models/splade-tiny`` from the repository root."""
    return Path(os.environ.get("SPLADE_ES_TEST_MODEL") or DEFAULT_REAL_MODEL)


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The real checkpoint (``real_model_path``); skips on a clone without ../shared."""
    path = real_model_path()
    if not path.is_dir():
        pytest.skip(f"no checkpoint folder at {path} (set SPLADE_ES_TEST_MODEL)")
    return path
