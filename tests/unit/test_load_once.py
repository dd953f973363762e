"""Work done once when serve loads a model: the checkpoint's layout is resolved and read once,
and an inference-free model's query table is built once (the document side reuses it)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import splade_es.encoding.encoder as encoder_module
import splade_es.encoding.static_query as static_query_module
import splade_es.serve.service as service_module
from splade_es import SpladeEncoder
from splade_es.connect import ConnectionConfig
from splade_es.encoding.model_files import read_layout, resolve_checkpoint
from splade_es.encoding.static_query import StaticQueryEncoder
from splade_es.exceptions import ModelLoadError
from splade_es.serve.service import ServeConfig, Service

QUERIES = ["what code section is depreciation", "tax tax deduction of the property", "zzqx 9"]
DOCUMENTS = ["Section 179 depreciation deduction.", "garlic powder, ounce; tablespoon!"]


@pytest.fixture(scope="module")
def inference_free_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OpenSearch's document-only layout over the tiny BERT: its files plus idf.json."""
    from tests.conftest import build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("load-once-base"), "bert", seed=5)
    folder = tmp_path_factory.mktemp("load-once-if")
    for item in base.iterdir():
        shutil.copy(item, folder / item.name)
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(base)).get_vocab()
    rng = np.random.default_rng(11)
    idf = {token: float(np.float32(rng.uniform(-1.0, 5.0))) for token in vocab}
    (folder / "idf.json").write_text(json.dumps(idf))
    return folder


class Calls:
    """Counts calls of the loading steps, wherever a module imported them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read_layout: list[Path] = []
        self.resolve_checkpoint: list[str | None] = []
        self.table_built: list[Any] = []
        self.masked_lm_loaded: list[str] = []

        def counted_read(root: Path) -> Any:
            self.read_layout.append(root)
            return read_layout(root)

        def counted_resolve(name: str | None, **options: Any) -> Path:
            self.resolve_checkpoint.append(name)
            return resolve_checkpoint(name, **options)

        for module in (encoder_module, static_query_module, service_module):
            monkeypatch.setattr(module, "read_layout", counted_read)
            monkeypatch.setattr(module, "resolve_checkpoint", counted_resolve)
        real_from_files = StaticQueryEncoder.from_files

        def counted_from_files(*args: Any, **kwargs: Any) -> StaticQueryEncoder:
            self.table_built.append(args)
            return real_from_files(*args, **kwargs)

        monkeypatch.setattr(StaticQueryEncoder, "from_files", counted_from_files)
        real_load = encoder_module._load_masked_lm

        def counted_load(layout: Any, name: str, trust_remote_code: bool) -> Any:
            self.masked_lm_loaded.append(name)
            return real_load(layout, name, trust_remote_code)

        monkeypatch.setattr(encoder_module, "_load_masked_lm", counted_load)


def dense(batch: Any) -> np.ndarray:
    return np.asarray(batch.to_scipy().todense())


def test_from_pretrained_with_a_layout_reads_it_no_more(tiny_bert_dir, monkeypatch):
    reference = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    layout = read_layout(resolve_checkpoint(str(tiny_bert_dir)))
    calls = Calls(monkeypatch)
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu", layout=layout)
    assert (calls.read_layout, calls.resolve_checkpoint) == ([], [])
    assert calls.masked_lm_loaded == [str(tiny_bert_dir)]
    assert encoder.vocab == reference.vocab and encoder.max_length == reference.max_length
    np.testing.assert_array_equal(
        dense(encoder.encode_documents(DOCUMENTS)), dense(reference.encode_documents(DOCUMENTS))
    )
    # Without one, it is read as before: once.
    SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    assert len(calls.read_layout) == len(calls.resolve_checkpoint) == 1


def test_a_given_layout_is_still_checked_for_untrusted_code(tiny_bert_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_bert_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForMaskedLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    layout = read_layout(folder)
    with pytest.raises(ModelLoadError, match="trust-remote-code"):
        SpladeEncoder.from_pretrained(str(folder), device="cpu", layout=layout)


def test_a_loaded_query_table_is_reused_over_the_model_vocabulary(inference_free_dir, monkeypatch):
    reference = SpladeEncoder.from_pretrained(str(inference_free_dir), device="cpu")
    layout = read_layout(inference_free_dir)
    assert layout.query_files is not None
    query_side = StaticQueryEncoder.from_files(layout.query_files, name=str(inference_free_dir))
    calls = Calls(monkeypatch)
    encoder = SpladeEncoder.from_pretrained(
        str(inference_free_dir), device="cpu", layout=layout, query_encoder=query_side
    )
    assert calls.table_built == [] and calls.read_layout == []
    assert encoder.mode == "inference-free"
    assert encoder.query_encoder is not None
    assert encoder.query_encoder.vocab is encoder.vocab  # one vocabulary for both sides
    ours, theirs = encoder.encode_queries(QUERIES), reference.encode_queries(QUERIES)
    assert ours.vocab == theirs.vocab
    np.testing.assert_array_equal(dense(ours), dense(theirs))
    assert list(ours.truncated) == list(theirs.truncated)
    # Without one, the table is built from the files, as before.
    SpladeEncoder.from_pretrained(str(inference_free_dir), device="cpu", layout=layout)
    assert len(calls.table_built) == 1


def test_over_vocabulary_equals_reading_the_files_with_that_vocabulary(inference_free_dir):
    document = SpladeEncoder.from_pretrained(str(inference_free_dir), device="cpu")
    files = read_layout(inference_free_dir).query_files
    assert files is not None
    alone = StaticQueryEncoder.from_files(files, name="m")
    rebased = alone.over_vocabulary(document.vocab)
    read_again = StaticQueryEncoder.from_files(files, vocab=document.vocab, name="m")
    assert rebased.vocab is document.vocab and alone.vocab is not document.vocab
    assert (rebased.max_tokens, rebased.truncate_left, rebased.name) == (
        read_again.max_tokens,
        read_again.truncate_left,
        "m",
    )
    texts = [*QUERIES, "the search engine " * 400]  # the last one is cut
    np.testing.assert_array_equal(
        dense(rebased.encode_queries(texts)), dense(read_again.encode_queries(texts))
    )
    assert list(rebased.encode_queries(texts).truncated) == [False] * 3 + [True]


def serve_config(model: Path) -> ServeConfig:
    return ServeConfig(
        connection=ConnectionConfig(hosts=("http://127.0.0.1:9",)), model=str(model), device="cpu"
    )


def test_serve_reads_an_inference_free_checkpoint_once(inference_free_dir, monkeypatch):
    """The query table for queries, then the masked-LM for documents: one resolution, one
    read of the layout, one table."""
    calls = Calls(monkeypatch)
    service = Service(serve_config(inference_free_dir))

    async def load_both() -> Any:
        service.encoder = await asyncio.to_thread(service._load_query_encoder)
        return await service.document_encoder()

    document = asyncio.run(load_both())
    assert isinstance(service.encoder, StaticQueryEncoder)
    assert isinstance(document, SpladeEncoder) and document.mode == "inference-free"
    assert len(calls.resolve_checkpoint) == len(calls.read_layout) == 1
    assert len(calls.table_built) == 1
    assert calls.masked_lm_loaded == [str(inference_free_dir)]
    # The document side's query table is the service's, over the model's vocabulary.
    assert document.query_encoder is not None
    assert document.query_encoder.table is not None
    np.testing.assert_array_equal(
        dense(document.encode_queries(QUERIES)), dense(service.encoder.encode_queries(QUERIES))
    )


def test_serve_reads_a_siamese_checkpoint_once(tiny_bert_dir, monkeypatch):
    calls = Calls(monkeypatch)
    layout = service_module.read_checkpoint(str(tiny_bert_dir))  # what create_app reads
    service = Service(serve_config(tiny_bert_dir), layout=layout)
    encoder = service._load_query_encoder()
    assert isinstance(encoder, SpladeEncoder)
    assert len(calls.resolve_checkpoint) == len(calls.read_layout) == 1  # create_app's only
    assert calls.table_built == []
    assert asyncio.run(_document_encoder_of(service, encoder)) is encoder


async def _document_encoder_of(service: Service, encoder: Any) -> Any:
    service.encoder = encoder
    return await service.document_encoder()


def test_a_given_query_encoder_is_not_taken_for_the_model_table(inference_free_dir, monkeypatch):
    """A query side the caller passed may be another model's: the document side reads its
    own table then, as before."""
    files = read_layout(inference_free_dir).query_files
    assert files is not None
    given = StaticQueryEncoder.from_files(files, name="given")
    calls = Calls(monkeypatch)
    service = Service(serve_config(inference_free_dir), given)
    document = asyncio.run(service.document_encoder())
    assert isinstance(document, SpladeEncoder)
    assert len(calls.table_built) == 1 and len(calls.read_layout) == 1
