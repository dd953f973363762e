"""Inference-free (document-only) models: both layouts, query vectors against the formula,
document vectors against sentence-transformers, and the errors a bad layout gives."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from splade_es import SpladeEncoder
from splade_es.encoding.static_query import StaticQueryEncoder
from splade_es.exceptions import EmptyTextError, ModelLoadError
from tests.conftest import build_tiny_model, real_model_path
from tests.unit.reference import reference_vectors

QUERIES = [
    "what code section is depreciation",
    "tax tax TAX deduction of the the property",  # duplicates count once
    "garlic powder, ounce; tablespoon! [SEP] [CLS]",  # literal special tokens
    "zzqx 9 ~ qwerty",  # word pieces, some absent from the table
    "the search engine indexes a sparse vector for each document in the cluster " * 50,  # cut
]
BOUNDARY = ["income", "garlic", "brain", "cluster"]  # one token each, in both vocabularies
DOCUMENTS = [
    "Section 179 depreciation deduction: the cost of property as an expense.",
    "garlic powder, ounce; tablespoon!",
    "a",
    "the search engine indexes a sparse vector for each document in the cluster " * 3,
]


def dense(batch) -> np.ndarray:
    return np.asarray(batch.to_scipy().todense())


@pytest.fixture(scope="module", params=["tiny", "real"])
def base_model_dir(request, tmp_path_factory) -> Path:
    """The tiny random BERT, and the real checkpoint (the tiny one again on a clone without
    ../shared, so the test runs, never skips)."""
    real = real_model_path()
    if request.param == "real" and real.is_dir():
        return real
    return build_tiny_model(tmp_path_factory.mktemp("if-base"), "bert", seed=3)


def idf_table(tokenizer) -> dict[str, float]:
    """A weight per token: mostly positive, some zero or negative, a tenth left out."""
    rng = np.random.default_rng(7)
    vocab = tokenizer.get_vocab()
    idf = {}
    for token in sorted(vocab, key=vocab.get):
        draw = rng.random()
        if draw < 0.1:
            continue
        idf[token] = float(np.float32(rng.uniform(-1.0, 6.0) if draw < 0.3 else rng.gamma(2.0)))
    # Every case present in QUERIES, whatever the draw: weighted special tokens (the tables
    # shipped with real models have them), a negative, a zero and an absent query token.
    idf.update({token: 1.5 for token in tokenizer.all_special_tokens})
    idf.update({"of": -0.5, "property": 0.0})
    idf.update({token: 2.0 + k for k, token in enumerate(BOUNDARY)})
    idf.pop("powder", None)
    return idf


@pytest.fixture(scope="module")
def opensearch_layout(base_model_dir, tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """OpenSearch's document-only layout: the masked-LM files plus idf.json."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("opensearch-doc")
    for item in base_model_dir.iterdir():
        shutil.copy(item, folder / item.name)
    idf = idf_table(AutoTokenizer.from_pretrained(str(base_model_dir)))
    (folder / "idf.json").write_text(json.dumps(idf))
    return folder, idf


@pytest.fixture(scope="module")
def router_layout(base_model_dir, tmp_path_factory):
    """A sentence-transformers Router folder saved by sentence-transformers itself."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sparse_encoder.modules import (
        MLMTransformer,
        SparseStaticEmbedding,
        SpladePooling,
    )

    folder = tmp_path_factory.mktemp("router")
    document = MLMTransformer(str(base_model_dir))
    (folder / "idf.json").write_text(json.dumps(idf_table(document.tokenizer)))
    query = SparseStaticEmbedding.from_json(
        str(folder / "idf.json"), tokenizer=document.tokenizer, frozen=True
    )
    router = Router.for_query_document(
        query_modules=[query],
        document_modules=[document, SpladePooling("max", activation_function="log1p_relu")],
    )
    model = st.SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    model.save(str(folder / "saved"))
    return folder / "saved", model


def boundary_query(folder: Path) -> str:
    """Filler, then BOUNDARY at content positions L-3 .. L (L = model_max_length): the
    OpenSearch reference keeps L-2 content tokens ([CLS] and [SEP] take two places), so it
    keeps only "income"; sentence-transformers adds none and keeps L, up to "brain"."""
    from transformers import AutoTokenizer

    limit = AutoTokenizer.from_pretrained(str(folder)).model_max_length
    return "the " * (limit - 3) + " ".join(BOUNDARY)


def formula_query_vectors(model_dir, idf, texts, *, add_special_tokens) -> np.ndarray:
    """The query formula, written plainly: transformers' own tokenizer call (truncation at
    model_max_length, special tokens counted when added), the set of ids, a table lookup by
    token string; special tokens and weights <= 0 dropped."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    out = np.zeros((len(texts), len(tokenizer.get_vocab())))
    for row, text in enumerate(texts):
        ids = tokenizer(text, truncation=True, add_special_tokens=add_special_tokens)["input_ids"]
        for i in set(ids) - set(tokenizer.all_special_ids):
            weight = idf.get(tokenizer.convert_ids_to_tokens(i), 0.0)
            if weight > 0:
                out[row, i] = weight
    return out


def test_opensearch_layout_queries_equal_the_formula(opensearch_layout):
    folder, idf = opensearch_layout
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    assert encoder.mode == "inference-free"
    queries = [*QUERIES, boundary_query(folder)]
    batch = encoder.encode_queries(queries)
    ours = dense(batch)
    expected = formula_query_vectors(folder, idf, queries, add_special_tokens=True)
    assert ours.shape[0] == expected.shape[0]
    np.testing.assert_allclose(ours[:, : expected.shape[1]], expected, rtol=0, atol=1e-6)
    assert (ours[:, expected.shape[1] :] == 0).all()
    assert batch.truncated.tolist() == [False, False, False, False, True, True]
    assert set(batch.to_dict(5)) & set(BOUNDARY) == {"income"}
    # Non-trivial vectors: every query keeps some tokens, none keeps a special token.
    assert batch.nnz_per_row.min() > 0 and (ours > 0).sum() > 20
    assert not np.isin(batch.indices, list(encoder.vocab.special_ids)).any()


def test_opensearch_layout_documents_are_the_masked_lm_splade_vectors(opensearch_layout):
    folder, _ = opensearch_layout
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    ref = reference_vectors(folder, DOCUMENTS, max_length=encoder.max_length)
    ours = dense(encoder.encode_documents(DOCUMENTS))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert ((ours > 0) == (ref > 0)).all()


def test_router_folder_matches_sentence_transformers(router_layout):
    folder, reference = router_layout
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    assert encoder.mode == "inference-free"
    assert (encoder.head.pooling, encoder.head.activation) == ("max", "log1p_relu")

    documents = dense(encoder.encode_documents(DOCUMENTS))
    expected_docs = reference.encode_document(DOCUMENTS, convert_to_tensor=True)
    np.testing.assert_allclose(documents, expected_docs.to_dense().numpy(), rtol=0, atol=1e-4)

    texts = [*QUERIES, boundary_query(folder / "query_0_SparseStaticEmbedding")]
    batch = encoder.encode_queries(texts)
    assert set(batch.to_dict(5)) & set(BOUNDARY) == {"income", "garlic", "brain"}
    queries = dense(batch)
    st_queries = reference.encode_query(texts, convert_to_tensor=True).to_dense().numpy()
    # sentence-transformers keeps negative weights and the weight of a special token typed in
    # the text; neither is a search term, so splade-es drops both (the definition).
    special = sorted(encoder.vocab.special_ids)
    assert (st_queries < 0).any() and (st_queries[:, special] != 0).any(), "cases not covered"
    st_queries[:, special] = 0
    np.testing.assert_allclose(queries, np.clip(st_queries, 0, None), rtol=0, atol=1e-6)


def test_router_folder_queries_equal_the_formula(router_layout):
    folder, _ = router_layout
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    idf = json.loads((folder.parent / "idf.json").read_text())
    texts = [*QUERIES, boundary_query(folder / "query_0_SparseStaticEmbedding")]
    expected = formula_query_vectors(
        folder / "query_0_SparseStaticEmbedding", idf, texts, add_special_tokens=False
    )
    ours = dense(encoder.encode_queries(texts))
    np.testing.assert_allclose(ours[:, : expected.shape[1]], expected, rtol=0, atol=1e-6)


def test_no_forward_pass_at_query_time(opensearch_layout, monkeypatch):
    folder, _ = opensearch_layout
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    expected = dense(encoder.encode_queries(QUERIES))

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran for a query")

    class RefusingForward:  # the encoder's FastForward, with both of its entry points
        __call__ = packed = staticmethod(refuse)

    monkeypatch.setattr(encoder, "model", refuse)
    monkeypatch.setattr(encoder, "fast_forward", RefusingForward())
    np.testing.assert_array_equal(dense(encoder.encode_queries(QUERIES)), expected)
    with pytest.raises(AssertionError, match="the model ran"):
        encoder.encode_documents(["tax"])


def test_query_side_loads_alone_without_the_model(opensearch_layout, router_layout):
    for folder in (opensearch_layout[0], router_layout[0]):
        full = SpladeEncoder.from_pretrained(str(folder), device="cpu")
        alone = StaticQueryEncoder.from_pretrained(str(folder))
        np.testing.assert_array_equal(
            dense(alone.encode_queries(QUERIES)), dense(full.encode_queries(QUERIES))
        )
        assert list(alone.vocab)[: len(full.vocab)] == list(full.vocab)


def test_siamese_model_is_unchanged(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    assert encoder.mode == "siamese"
    np.testing.assert_allclose(
        dense(encoder.encode_queries(QUERIES[:2])),
        dense(encoder.encode_documents(QUERIES[:2])),
    )
    with pytest.raises(ModelLoadError, match="not an inference-free model"):
        StaticQueryEncoder.from_pretrained(str(tiny_bert_dir))


def test_query_pruning_and_empty_policy(opensearch_layout):
    folder, _ = opensearch_layout
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    full = encoder.encode_queries(QUERIES)
    top = encoder.encode_queries(QUERIES, top_k=2)
    for i in range(len(QUERIES)):
        best = sorted(full.to_dict(i).items(), key=lambda kv: -kv[1])[:2]
        assert top.to_dict(i) == dict(best)
    with pytest.raises(EmptyTextError, match="position 1 is empty"):
        encoder.encode_queries(["tax", "  "])
    assert encoder.encode_queries(["tax", ""], empty="empty_vector").nnz_per_row[1] == 0


@pytest.mark.parametrize(
    ("idf", "message"),
    [
        ({"tax": "high"}, "token 'tax' has weight 'high', not a number"),
        ([1.0, 2.0], r"expected a JSON object \{token: weight\}"),
    ],
)
def test_bad_idf_json_is_a_clear_load_error(tiny_bert_dir, tmp_path, idf, message):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "idf.json").write_text(json.dumps(idf))
    with pytest.raises(ModelLoadError, match=message):
        SpladeEncoder.from_pretrained(str(folder), device="cpu")


def test_router_with_a_model_on_the_query_route_is_refused(router_layout, tmp_path):
    folder = tmp_path / "two-networks"
    shutil.copytree(router_layout[0], folder)
    config = json.loads((folder / "router_config.json").read_text())
    config["structure"]["query"] = ["document_0_MLMTransformer"]
    (folder / "router_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="query route must be one SparseStaticEmbedding"):
        SpladeEncoder.from_pretrained(str(folder), device="cpu")


def test_router_with_a_different_query_vocabulary_is_refused(router_layout, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "other-vocab"
    shutil.copytree(router_layout[0], folder)
    query_dir = folder / "query_0_SparseStaticEmbedding"
    tokenizer = AutoTokenizer.from_pretrained(str(query_dir))
    tokenizer.add_tokens(["brandnewtoken"])
    tokenizer.save_pretrained(str(query_dir))
    with pytest.raises(ModelLoadError, match="query tokenizer's vocabulary differs"):
        SpladeEncoder.from_pretrained(str(folder), device="cpu")


def test_encode_command_reports_the_mode(opensearch_layout, tiny_bert_dir, tmp_path):
    from click.testing import CliRunner

    from splade_es.cli import main

    (tmp_path / "in.jsonl").write_text(json.dumps({"_id": "d1", "text": "tax code"}) + "\n")
    for folder, mode in ((opensearch_layout[0], "inference-free"), (tiny_bert_dir, "siamese")):
        result = CliRunner().invoke(
            main,
            [
                "encode",
                "-m",
                str(folder),
                "--input",
                str(tmp_path / "in.jsonl"),
                "--output",
                str(tmp_path / "out.jsonl"),
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        assert re.search(rf"\bmode\W+{mode} \(", result.output), result.output


def test_router_with_the_masked_lm_at_the_root(router_layout, tmp_path):
    """The OpenSearch repositories' variant: no document_0 folder, the masked-LM files at the
    root beside router_config.json."""
    folder = tmp_path / "root-mlm"
    shutil.copytree(router_layout[0], folder)
    for item in (folder / "document_0_MLMTransformer").iterdir():
        shutil.move(str(item), folder / item.name)
    (folder / "document_0_MLMTransformer").rmdir()
    original = SpladeEncoder.from_pretrained(str(router_layout[0]), device="cpu")
    moved = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    assert moved.mode == "inference-free" and moved.head.activation == "log1p_relu"
    for encode in ("encode_documents", "encode_queries"):
        np.testing.assert_array_equal(
            dense(getattr(moved, encode)(DOCUMENTS)), dense(getattr(original, encode)(DOCUMENTS))
        )


def test_module_docstring_example_runs():
    import doctest

    import splade_es.encoding.static_query

    result = doctest.testmod(splade_es.encoding.static_query)
    assert result.attempted > 0 and result.failed == 0
