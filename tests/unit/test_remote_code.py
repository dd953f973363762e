"""A checkpoint that ships its own modelling code (``auto_map``): refused without
``trust_remote_code`` (the library) / ``--trust-remote-code`` (every command that loads a model),
loaded and encoded exactly with it, and never given to FastForward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import BertConfig, BertForMaskedLM

from splade_es import SpladeEncoder
from splade_es.cli import main
from splade_es.encoding.fast_forward import FastForward
from splade_es.encoding.static_query import StaticQueryEncoder
from splade_es.exceptions import ModelLoadError
from tests.unit.reference import reference_vectors
from tests.vectors import assert_same_dense, assert_same_vectors

MODEL_TYPE = "splade-test-scaled-bert"

# The checkpoint's own code: BERT whose embeddings are scaled by a config value, under a
# model type transformers does not know. Scaling changes every vector, so vectors equal to
# the reference computed through this code prove that this code is what ran.
CONFIGURATION = f'''
from transformers import BertConfig


class ScaledBertConfig(BertConfig):
    model_type = "{MODEL_TYPE}"

    def __init__(self, embedding_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.embedding_scale = embedding_scale
'''

MODELING = """
from transformers import BertForMaskedLM

from .configuration_scaled_bert import ScaledBertConfig


class ScaledBertForMaskedLM(BertForMaskedLM):
    config_class = ScaledBertConfig

    def __init__(self, config):
        super().__init__(config)
        scale = config.embedding_scale
        self.bert.embeddings.register_forward_hook(lambda module, args, out: out * scale)
"""

TEXTS = ["what code section is depreciation", "garlic powder, ounce; tablespoon!" * 3, "a"]


@pytest.fixture(scope="module")
def custom_code_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's weights and tokenizer, with the code above and ``auto_map``."""
    folder = tmp_path_factory.mktemp("scaled_bert")
    for item in tiny_bert_dir.iterdir():
        shutil.copy(item, folder / item.name)
    (folder / "configuration_scaled_bert.py").write_text(CONFIGURATION)
    (folder / "modeling_scaled_bert.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type=MODEL_TYPE,
        architectures=["ScaledBertForMaskedLM"],
        embedding_scale=3.0,
        auto_map={
            "AutoConfig": "configuration_scaled_bert.ScaledBertConfig",
            "AutoModelForMaskedLM": "modeling_scaled_bert.ScaledBertForMaskedLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_refused_without_trust_remote_code(custom_code_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"--trust-remote-code \(trust_remote_code=True\)"):
        SpladeEncoder.from_pretrained(str(custom_code_dir), device="cpu")


def test_loads_and_encodes_exactly_with_it(custom_code_dir: Path, tiny_bert_dir: Path) -> None:
    encoder = SpladeEncoder.from_pretrained(
        str(custom_code_dir), device="cpu", trust_remote_code=True
    )
    assert type(encoder.model).__name__ == "ScaledBertForMaskedLM"
    # Not a transformers class: transformers' forward runs, whatever the model type says.
    assert encoder.fast_forward is None
    got = encoder.encode_documents(TEXTS).to_scipy().toarray()
    expected = reference_vectors(
        custom_code_dir, TEXTS, max_length=encoder.max_length, trust_remote_code=True
    )
    assert_same_dense(got, expected)
    # The checkpoint's code changed the vectors: the same weights as plain BERT differ.
    plain = reference_vectors(tiny_bert_dir, TEXTS, max_length=encoder.max_length)
    with pytest.raises(AssertionError):
        assert_same_dense(got, plain)


def test_a_tokenizers_own_code_is_refused_too(
    custom_code_dir: Path, tmp_path: Path, tiny_bert_dir: Path
) -> None:
    folder = tmp_path / "tokenizer-code"
    shutil.copytree(tiny_bert_dir, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["tokenization_mine.MyTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(ModelLoadError, match=r"tokenization_mine\.MyTokenizer"):
        SpladeEncoder.from_pretrained(str(folder), device="cpu")
    (folder / "idf.json").write_text(json.dumps({"tax": 1.0}))
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        StaticQueryEncoder.from_pretrained(str(folder))


class _LongerInputsDiffer(BertForMaskedLM):
    """Model type "bert", transformers' weights, a forward that differs only past 12 tokens:
    the load-time probe (12 tokens) cannot tell."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):  # type: ignore[override]
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if input_ids.shape[1] > 12:
            out.logits = out.logits + 1.0
        return out


def test_fast_forward_takes_only_transformers_own_classes() -> None:
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    assert FastForward.for_model(BertForMaskedLM(config).eval()) is not None
    assert FastForward.for_model(_LongerInputsDiffer(config).eval()) is None


COMMANDS = [
    ["encode", "--input", "{docs}", "--output", "{out}"],
    ["ingest", "--index", "x", "--input", "{docs}"],
    ["search", "--index", "x", "tax"],
    ["explain", "--index", "x", "--id", "1", "tax"],
    ["evaluate", "--index", "x", "--queries", "{docs}", "--qrels", "{docs}"],
    ["migrate", "--source", "a", "--target", "b"],
    ["serve"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_command_that_loads_a_model_stops_with_one_line(
    command: list[str], custom_code_dir: Path, tmp_path: Path
) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"_id": "1", "text": "tax code"}\n')
    args = [a.format(docs=docs, out=tmp_path / "out.jsonl") for a in command]
    result = CliRunner().invoke(
        main,
        [*args, "--model", str(custom_code_dir)],
        env={"SPLADE_ES_URL": "http://127.0.0.1:9"},  # a closed port: nothing is reached
        prog_name="splade-es",
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "--trust-remote-code" in lines[0], result.output


def test_the_cli_encodes_with_the_flag(custom_code_dir: Path, tmp_path: Path) -> None:
    docs, out = tmp_path / "docs.jsonl", tmp_path / "out.jsonl"
    docs.write_text(
        "".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    result = CliRunner().invoke(
        main,
        [
            *("encode", "--model", str(custom_code_dir), "--trust-remote-code"),
            *("--device", "cpu", "--input", str(docs), "--output", str(out), "--quiet"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line)["splade"] for line in out.read_text().splitlines()]
    encoder = SpladeEncoder.from_pretrained(
        str(custom_code_dir), device="cpu", trust_remote_code=True
    )
    expected = encoder.encode_documents(TEXTS).to_dicts()
    assert_same_vectors(rows, expected)
