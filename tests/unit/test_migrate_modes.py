"""The gate's comparison of long-document modes (``migrate/modes.py``): the sample it
encodes and the note it adds to the report."""

from __future__ import annotations

import pytest

from splade_es.exceptions import ConfigurationError
from splade_es.ingest.sources import Record
from splade_es.migrate import Gate, MigrationConfig
from splade_es.migrate.modes import ModeComparison, sample_corpus


def config(**options) -> MigrationConfig:
    gate = Gate(queries={"q": "tax"}, qrels={"q": {"d7": 1, "d2": 1}}, min_ndcg_gain=0.0)
    return MigrationConfig(source="s", target="t", alias="a", gate=gate, **options)


def records(n: int, *, empty: int | None = None):
    for i in range(1, n + 1):
        text = "" if i == empty else f"text {i}"
        yield Record(i, {"_id": f"d{i}", "title": f"title {i}", "text": text})


def test_the_sample_holds_every_judged_document_then_the_first_others():
    read = []

    def counted(n):
        for record in records(n):
            read.append(record.position)
            yield record

    corpus, seen = sample_corpus(counted(50), config(compare_sample=5), {"d7", "d2"})
    assert list(corpus) == ["d1", "d2", "d3", "d4", "d7"]  # 3 others, then judged d7
    assert corpus["d7"] == "title 7 text 7"  # as the copy reads it: the text fields joined
    assert seen == 7 and len(read) <= 8  # reading stopped once the sample was full


def test_a_document_without_text_is_left_out_as_the_copy_would_refuse_it():
    documents = [Record(1, {"_id": "x", "n": 3}), *records(3)]
    corpus, _ = sample_corpus(documents, config(compare_sample=10), set())
    assert list(corpus) == ["d1", "d2", "d3"] and corpus["d1"] == "title 1 text 1"


class Result:
    def __init__(self, mode, ndcg):
        self.mode, self.metrics = mode, {"ndcg@10": ndcg}


@pytest.mark.parametrize(
    ("migrating", "verdict"),
    [
        ("passages", "passages is the mode of this migration"),
        ("truncate", "this migration indexes with truncate: consider passages"),
    ],
)
def test_the_note_names_the_best_mode_against_the_migrations(migrating, verdict):
    results = (Result("truncate", 0.61), Result("maxpool", 0.6), Result("passages", 0.64))
    comparison = ModeComparison(results, 120, 300, migrating)  # type: ignore[arg-type]
    assert comparison.best.mode == "passages"
    note = comparison.note()
    assert "truncate 0.6100, maxpool 0.6000, passages 0.6400" in note
    assert note.endswith(verdict) and "120 documents" in note


def test_comparing_needs_judgments_and_known_modes():
    with pytest.raises(ConfigurationError, match="needs the gate's judgments"):
        MigrationConfig(source="s", target="t", alias="a", compare_long_documents=("maxpool",))
    with pytest.raises(ConfigurationError, match="compare_long_documents must be"):
        config(compare_long_documents=("sum",))


def test_a_judged_id_the_source_lacks_does_not_make_it_read_everything():
    read = []

    def counted(n):
        for record in records(n):
            read.append(record.position)
            yield record

    corpus, seen = sample_corpus(counted(10_000), config(compare_sample=5), {"d2", "gone"})
    assert list(corpus) == ["d1", "d2", "d3", "d4"]
    assert seen == len(read) - 1 == 50  # READ_FACTOR (10) samples, then it stopped
    note = ModeComparison((Result("truncate", 0.5),), 4, seen, "truncate", 1).note()  # type: ignore[arg-type]
    assert "4 documents, 1 judged ones not found" in note
