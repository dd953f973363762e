from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from splade_es import SpladeEncoder
from splade_es.exceptions import EmptyTextError, InputError, ModelLoadError
from tests.unit.reference import reference_vectors

TEXTS = [
    "what code section is depreciation",
    "Section 179 depreciation deduction: the cost of property as an expense.",
    "garlic powder, ounce; tablespoon!",
    "a",
    "the search engine indexes a sparse vector for each document in the cluster " * 3,
]


def dense(batch) -> np.ndarray:
    return np.asarray(batch.to_scipy().todense())


@pytest.mark.parametrize("screen", [False, True], ids=["plain", "screened"])
def test_matches_reference_formula_within_1e5(tiny_model_dir, screen):
    encoder = SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu", screen=screen)
    ours = dense(encoder.encode_documents(TEXTS, batch_size=2))
    ref = reference_vectors(tiny_model_dir, TEXTS, max_length=encoder.max_length)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5
    # The same entries are active: nothing lost, nothing invented.
    assert ((ours > 0) == (ref > 0)).all()
    assert (ref > 0).sum() > 10, "the tiny model should produce non-trivial vectors"


def test_result_rows_follow_input_order_across_windows_and_batches(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    texts = TEXTS * 5  # 25 texts of mixed lengths
    one_by_one = np.concatenate([dense(encoder.encode_documents([t])) for t in texts])
    windows = list(encoder.iter_encode(texts, batch_size=3, window=7))
    assert [len(w) for w in windows] == [7, 7, 7, 4]
    from splade_es.sparse import SparseBatch

    streamed = dense(SparseBatch.concat(windows))
    np.testing.assert_allclose(streamed, one_by_one, atol=1e-5)


def test_token_budget_splits_batches_without_changing_results(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    expected = dense(encoder.encode_documents(TEXTS))
    encoder.max_batch_tokens = 8  # forces one text per batch
    np.testing.assert_allclose(dense(encoder.encode_documents(TEXTS)), expected, atol=1e-5)


def test_sentence_transformers_folder_with_sum_pooling_and_log1p_relu(tiny_bert_dir, tmp_path):
    folder = tmp_path / "st-model"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "1_SpladePooling").mkdir()
    (folder / "1_SpladePooling" / "config.json").write_text(
        json.dumps({"pooling_strategy": "sum", "activation_function": "log1p_relu"})
    )
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.sparse_encoder.models.MLMTransformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_SpladePooling",
                    "type": "sentence_transformers.sparse_encoder.models.SpladePooling",
                },
            ]
        )
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu")
    assert encoder.max_length == 16
    assert (encoder.head.pooling, encoder.head.activation) == ("sum", "log1p_relu")
    ref = reference_vectors(
        tiny_bert_dir, TEXTS, max_length=16, pooling="sum", activation="log1p_relu"
    )
    np.testing.assert_allclose(dense(encoder.encode_documents(TEXTS)), ref, atol=1e-5)


def test_matches_sentence_transformers_sparse_encoder(tiny_bert_dir, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    reference = st.SparseEncoder(
        modules=[MLMTransformer(str(tiny_bert_dir)), SpladePooling(pooling_strategy="max")],
        device="cpu",
    )
    reference.save(str(tmp_path / "saved"))
    expected = reference.encode_document(TEXTS, convert_to_tensor=True).to_dense().numpy()
    ours = SpladeEncoder.from_pretrained(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(dense(ours.encode_documents(TEXTS)), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (None, InputError, "position 2 is NoneType"),
        (17, InputError, "position 2 is int"),
        ("", EmptyTextError, "position 2 is empty"),
        ("   ", EmptyTextError, "position 2 is empty"),
    ],
)
def test_bad_text_is_an_error_naming_its_position(tiny_bert_dir, bad, error, message):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    with pytest.raises(error, match=message) as caught:
        encoder.encode_documents(["ok", "fine", bad, "more"])
    assert caught.value.position == 2


def test_empty_text_gives_an_empty_vector_when_asked(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    batch = encoder.encode_documents(["code section", "", "tax"], empty="empty_vector")
    assert len(batch) == 3
    assert batch.nnz_per_row[1] == 0
    assert batch.nnz_per_row[0] > 0 and batch.nnz_per_row[2] > 0


def test_over_long_texts_are_truncated_and_counted(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu", max_length=8)
    batch = encoder.encode_documents(
        ["tax code", "the code section of the tax form is what line " * 4]
    )
    assert batch.truncated.tolist() == [False, True]
    ref = reference_vectors(
        tiny_bert_dir, ["the code section of the tax form is what line " * 4], max_length=8
    )
    np.testing.assert_allclose(dense(batch)[1:], ref, atol=1e-5)


def test_pruning_keeps_the_largest_weights(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    full = encoder.encode_documents(TEXTS)
    pruned = encoder.encode_documents(TEXTS, top_k=3)
    assert pruned.nnz_per_row.max() <= 3
    for i in range(len(TEXTS)):
        top3 = sorted(full.to_dict(i).items(), key=lambda kv: -kv[1])[:3]
        assert pruned.to_dict(i) == dict(top3)


def test_vocab_names_every_output_id(tiny_bert_dir):
    encoder = SpladeEncoder.from_pretrained(str(tiny_bert_dir), device="cpu")
    vectors = encoder.encode_documents(["depreciation"]).to_dicts()[0]
    assert vectors and all(isinstance(token, str) and token for token in vectors)


def test_missing_local_folder_and_unreachable_hub_id_are_model_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no checkpoint folder"):
        SpladeEncoder.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="Hugging Face Hub"):
        SpladeEncoder.from_pretrained("some-org/not-cached-model")


@pytest.mark.parametrize("content", [{}, {"notes.txt": "hello", "vocab.txt": "[PAD]\n"}])
def test_a_folder_that_is_not_a_model_says_so(tmp_path, content):
    for name, text in content.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ModelLoadError, match=r"no config\.json: not a model folder"):
        SpladeEncoder.from_pretrained(str(tmp_path))


def test_sentence_transformers_folder_without_model_config_says_so(tmp_path):
    modules = [
        {"path": "0_MLMTransformer", "type": "sentence_transformers.models.MLMTransformer"},
        {"path": "1_SpladePooling", "type": "sentence_transformers.sparse_encoder.SpladePooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "0_MLMTransformer").mkdir()
    (tmp_path / "1_SpladePooling").mkdir()
    (tmp_path / "1_SpladePooling" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"0_MLMTransformer: no config\.json: not a model"):
        SpladeEncoder.from_pretrained(str(tmp_path))


def test_real_checkpoint_defaults_to_the_shared_folder(monkeypatch):
    from tests.conftest import REPO_ROOT, real_model_path

    monkeypatch.delenv("SPLADE_ES_TEST_MODEL", raising=False)
    # The folder the README's main job uses, so a fresh clone's test command finds it.
    expected = REPO_ROOT / ".." / "shared" / "models" / "splade-tiny"
    assert real_model_path().resolve() == expected.resolve()


def test_folder_without_mlm_head_is_a_model_load_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        SpladeEncoder.from_pretrained(str(tmp_path))


# ---------------------------------------------------------------- the real checkpoint
SEED_QUERY = "what code section is depreciation"
SEED_PASSAGES = [
    "Section 179 depreciation deduction. Section 179 of the United States Internal Revenue Code "
    "(26 U.S.C. § 179), allows a taxpayer to elect to deduct the cost of certain types of property "
    "on their income taxes as an expense, rather than requiring the cost of the property to be "
    "capitalized and depreciated.",
    "--No depreciation deduction shall be allowed under this section (and no depreciation or "
    "amortization deduction shall be allowed under any other provision of this subtitle) to the "
    "taxpayer for any term interest in property for any period during which the remainder interest "
    "in such property is held (directly or indirectly) by a related person.",
    "Depreciation - Amortization Code. Refer to the IRS Instructions for Form 4562, Line 42, for "
    "the amortization code.",
]


@pytest.mark.parametrize("screen", [False, True], ids=["plain", "screened"])
def test_real_checkpoint_reproduces_the_seed_scores(real_model_dir, screen):
    encoder = SpladeEncoder.from_pretrained(str(real_model_dir), device="cpu", screen=screen)
    query = encoder.encode_queries([SEED_QUERY])
    docs = encoder.encode_documents(SEED_PASSAGES)
    np.testing.assert_allclose(query.dot(docs)[0], [25.1644, 18.0220, 20.6555], atol=2e-4)
    assert query.nnz_per_row.tolist() == [14]
    assert docs.nnz_per_row.tolist() == [112, 96, 73]
    ref = reference_vectors(real_model_dir, SEED_PASSAGES, max_length=encoder.max_length)
    assert np.abs(dense(docs) - ref).max() <= 1e-5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_keeps_the_seed_ranking(real_model_dir, dtype):
    """The GPU default is bf16 (fp16 without bf16 support); the same code path runs on CPU."""
    exact = SpladeEncoder.from_pretrained(str(real_model_dir), device="cpu", dtype="float32")
    half = SpladeEncoder.from_pretrained(str(real_model_dir), device="cpu", dtype=dtype)
    expected = exact.encode_queries([SEED_QUERY]).dot(exact.encode_documents(SEED_PASSAGES))[0]
    got = half.encode_queries([SEED_QUERY]).dot(half.encode_documents(SEED_PASSAGES))[0]
    assert np.argsort(-got).tolist() == np.argsort(-expected).tolist()
    assert np.max(np.abs(got - expected) / expected) < 0.02


@pytest.mark.parametrize("screen", [False, True], ids=["plain", "screened"])
def test_single_query_fast_path_matches_reference_without_threads(
    tiny_model_dir, screen, monkeypatch
):
    encoder = SpladeEncoder.from_pretrained(str(tiny_model_dir), device="cpu", screen=screen)
    ref = reference_vectors(tiny_model_dir, TEXTS, max_length=encoder.max_length)

    def no_pool(*args, **kwargs):
        raise AssertionError("the single-query path must not start a thread pool")

    monkeypatch.setattr("splade_es.encoding.encoder.ThreadPoolExecutor", no_pool)
    for i, text in enumerate(TEXTS):
        one = dense(encoder.encode_queries([text]))[0]
        assert np.abs(one - ref[i]).max() <= 1e-5
        assert ((one > 0) == (ref[i] > 0)).all()


def test_real_checkpoint_single_queries_match_reference(real_model_dir):
    encoder = SpladeEncoder.from_pretrained(str(real_model_dir), device="cpu")
    texts = ["what is the tax depreciation of a rental property", "garlic", *SEED_PASSAGES]
    ref = reference_vectors(real_model_dir, texts, max_length=encoder.max_length)
    for i, text in enumerate(texts):
        one = dense(encoder.encode_queries([text]))[0]
        assert np.abs(one - ref[i]).max() <= 1e-5
        assert ((one > 0) == (ref[i] > 0)).all()


def test_loading_prints_no_progress_bar_and_keeps_the_setting(tiny_bert_dir, capfd):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    SpladeEncoder.from_pretrained(str(tiny_bert_dir))
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()  # the application's setting is restored
