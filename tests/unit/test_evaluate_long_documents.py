"""evaluate.compare_long_documents: one corpus encoded per long-documents mode, scored exactly
in memory, measured side by side (issue 24)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from splade_es import SpladeEncoder
from splade_es.encoding.windows import WindowPolicy
from splade_es.evaluate import (
    EncodedCorpus,
    ExactScorer,
    compare_long_documents,
    corpus_texts,
    encode_corpus,
    one_vector_policy,
    score_run,
)
from splade_es.exceptions import ConfigurationError, InputError
from splade_es.sparse import PassageBatch, SparseBatch
from tests.vectors import assert_same_vector

WINDOW = WindowPolicy(window=16, overlap=4)
TOPICS = {
    "tax": "tax code section depreciation deduction property cost income expense form line",
    "food": "garlic powder ounce tablespoon",
    "search": "search engine sparse vector query document index cluster",
    "brain": "white matter brain imaging diffusion tensor newborn human cerebral development",
}


def _text(*topics: str, repeat: int = 3) -> str:
    return " ".join(TOPICS[t] for _ in range(repeat) for t in topics)


# Long documents (several windows of 16 tokens) whose later windows hold other topics than
# their first, and short ones that fit one window.
LONG_CORPUS = {
    "tax-then-food": _text("tax", "food"),
    "search-then-brain": _text("search", "brain"),
    "brain-then-tax": _text("brain", "tax"),
    "food": TOPICS["food"],
    "search": "sparse search engine",
}
SHORT_CORPUS = {
    "tax": "tax code section",
    "food": "garlic powder ounce",
    "search": "sparse search engine",
    "brain": "brain imaging",
}
QUERIES = {
    "q-food": "garlic powder",
    "q-brain": "brain imaging of the newborn",
    "q-tax": "depreciation deduction",
    "q-search": "sparse vector index",
    "unjudged": "cluster",
}
QRELS = {
    "q-food": {"tax-then-food": 1, "food": 1},
    "q-brain": {"search-then-brain": 1, "brain": 1},
    "q-tax": {"brain-then-tax": 1, "tax": 1},
    "q-search": {"search": 1},
}


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir), device="cpu", screen=False)


@pytest.fixture(scope="module")
def compared(encoder):
    return compare_long_documents(encoder, LONG_CORPUS, QUERIES, QRELS, policy=WINDOW, k=100)


def test_one_row_per_mode_in_the_order_given_with_the_run_measured(encoder, compared):
    assert [r.mode for r in compared] == ["truncate", "maxpool", "passages"]
    for result in compared:
        assert result.queries == 4, "judged queries only"
        assert set(result.run) == set(QRELS)
        assert result.metrics == score_run(result.run, QRELS)
        assert result.size.documents == len(LONG_CORPUS)
    again = compare_long_documents(
        encoder, SHORT_CORPUS, QUERIES, QRELS, ["passages", "truncate", "passages"], WINDOW
    )
    assert [r.mode for r in again] == ["passages", "truncate"]


def test_windows_and_index_size_per_mode(compared):
    truncate, maxpool, passages = compared
    long_docs = sum(1 for text in LONG_CORPUS.values() if len(text.split()) > 14)
    assert truncate.windows.mean == 1.0
    assert truncate.windows.hit_max_windows == long_docs, "truncate drops their tails"
    assert maxpool.windows.counts == passages.windows.counts
    assert maxpool.windows.over_one_window == long_docs and maxpool.windows.mean > 2
    assert maxpool.windows.hit_max_windows == 0
    assert truncate.size.vectors == maxpool.size.vectors == len(LONG_CORPUS)
    assert passages.size.vectors == sum(k * n for k, n in passages.windows.counts.items())
    # a max over windows holds at least the first window's tokens; passages hold them all
    assert truncate.size.postings < maxpool.size.postings < passages.size.postings
    assert truncate.size.json_bytes < maxpool.size.json_bytes < passages.size.json_bytes
    assert passages.postings_per_query > truncate.postings_per_query


def test_scores_order_truncate_then_passages_then_maxpool(compared):
    """Per query and document: the first window (truncate) <= the best window (passages) <=
    the windows' elementwise max (maxpool), the query's weights being >= 0."""
    truncate, maxpool, passages = (r.run for r in compared)
    top = max(s for run in (truncate, maxpool, passages) for q in run for s in run[q].values())
    slack = 1e-4 * top  # the same window encoded in batches of other shapes
    for qid in QRELS:
        for doc in LONG_CORPUS:
            first, best = truncate[qid].get(doc, 0.0), passages[qid].get(doc, 0.0)
            pooled = maxpool[qid].get(doc, 0.0)
            assert first <= best + slack and best <= pooled + slack, (qid, doc)
    assert any(
        maxpool[q].get(d, 0.0) > truncate[q].get(d, 0.0) + 100 * slack
        for q in QRELS
        for d in LONG_CORPUS
    ), "the later windows add to some score"


def test_documents_of_one_window_score_the_same_in_every_mode(encoder):
    results = compare_long_documents(encoder, SHORT_CORPUS, QUERIES, QRELS, policy=WINDOW, k=100)
    truncate, maxpool, passages = results
    for other in (maxpool, passages):
        assert other.size.postings == truncate.size.postings
        for qid in QRELS:
            assert list(other.run[qid]) == list(truncate.run[qid])
            np.testing.assert_allclose(
                list(other.run[qid].values()), list(truncate.run[qid].values()), rtol=1e-6
            )
        assert other.metrics == pytest.approx(truncate.metrics)
    assert passages.windows.mean == maxpool.windows.mean == 1.0


def test_passage_scores_are_the_best_passages_dot_product(encoder):
    texts = list(LONG_CORPUS.values())
    encoded = encode_corpus(encoder, texts, "passages", WINDOW)
    assert isinstance(encoded.vectors, PassageBatch)
    queries = encoder.encode_queries(list(QUERIES.values()))
    scorer = ExactScorer(encoded.vectors)
    scores = np.array([scorer.scores(*queries.row(i)) for i in range(len(queries))])
    np.testing.assert_allclose(scores, encoded.vectors.best_scores(queries), rtol=1e-12)
    # and by hand, from the passages as the index stores them
    for q, query in enumerate(queries.to_dicts()):
        for d, stored in enumerate(encoded.vectors.to_dicts()):
            dots = [sum(w * p["vector"].get(t, 0.0) for t, w in query.items()) for p in stored]
            assert scores[q, d] == pytest.approx(max(dots), rel=1e-6, abs=1e-9)


def test_truncate_with_a_window_is_the_model_reading_that_many_tokens(encoder, search_model_dir):
    assert one_vector_policy("truncate", WindowPolicy()).mode == "truncate"
    assert one_vector_policy("truncate", WINDOW).max_windows == 1
    texts = list(LONG_CORPUS.values())
    encoded = encode_corpus(encoder, texts, "truncate", WINDOW)
    short_model = SpladeEncoder.from_pretrained(
        str(search_model_dir), device="cpu", screen=False, max_length=16
    )
    expected = short_model.encode_documents(texts)
    assert isinstance(encoded.vectors, SparseBatch)
    for d in range(len(texts)):
        assert_same_vector(encoded.vectors.to_dict(d), expected.to_dict(d))
    assert encoded.vectors.truncated.tolist() == expected.truncated.tolist()


def test_exact_scorer_on_known_vectors():
    vocab = ("tax", "code", "food")
    rows = SparseBatch.from_rows([([0], [1.0]), ([1], [2.0]), ([0, 1], [0.5, 0.5])], vocab=vocab)
    passages = PassageBatch(
        rows,
        np.array([0, 0, 2]),  # document 1 has no passage
        np.array([[0, 9], [7, 20], [0, 4]]),
        np.zeros(3, bool),
    )
    scorer = ExactScorer(passages)
    query_ids, query_weights = np.array([0, 1]), np.array([1.0, 3.0], np.float32)
    assert scorer.scores(query_ids, query_weights).tolist() == [6.0, 0.0, 2.0]
    assert scorer.postings_read(query_ids) == 4
    flat = ExactScorer(rows)
    assert flat.scores(query_ids, query_weights).tolist() == [1.0, 6.0, 2.0]
    assert flat.scores(np.array([2]), np.array([1.0])).tolist() == [0.0, 0.0, 0.0]


def test_index_size_counts_postings_and_json_bytes():
    vocab = ("tax", "code")
    one = SparseBatch.from_rows([([0], [1.0]), ([0, 1], [0.5, 2.0])], vocab=vocab)
    size = EncodedCorpus("maxpool", one, 0.0).size()
    expected = len('{"tax":1.0}') + len('{"tax":0.5,"code":2.0}')
    assert (size.documents, size.vectors, size.postings, size.json_bytes) == (2, 2, 3, expected)
    assert size.per_document == 1.5
    passages = PassageBatch(one, np.array([0, 0]), np.array([[0, 3], [2, 8]]), np.zeros(1, bool))
    size = EncodedCorpus("passages", passages, 0.0).size()
    stored = json.dumps(passages.to_dicts()[0], separators=(",", ":"))
    assert (size.documents, size.vectors, size.postings) == (1, 2, 3)
    assert size.json_bytes == len(stored) and size.per_document == 3.0


def test_unknown_modes_are_refused_before_anything_is_encoded():
    class NoEncoder:
        def __getattr__(self, name):
            raise AssertionError(f"encoder.{name} used")

    with pytest.raises(ConfigurationError, match="chunks"):
        compare_long_documents(NoEncoder(), {"d": "x"}, {"q": "x"}, {"q": {"d": 1}}, ["chunks"])


def test_corpus_texts_joins_fields_and_counts_documents_without_text(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [
        {"_id": "a", "title": "Tax", "text": "code section"},
        {"_id": 7, "title": "", "text": "garlic"},
        {"_id": "empty", "title": " ", "text": ""},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert corpus_texts(path) == ({"a": "Tax code section", "7": "garlic"}, 1)
    assert corpus_texts(path, ["title"]) == ({"a": "Tax"}, 2)
    path.write_text('{"title": "no id"}\n')
    with pytest.raises(InputError, match="line 1"):
        corpus_texts(path)
