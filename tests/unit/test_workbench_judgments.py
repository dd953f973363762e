"""The judgments store: qrels written in the BEIR layout that ``read_qrels`` (evaluate,
compare, the migration gate) reads back, other queries' judgments kept, the queries file,
ids that would break the TSV refused, and the page's nDCG@10."""

from __future__ import annotations

import json
import os
import stat

import pytest

from splade_es.beir import read_qrels, read_queries
from splade_es.exceptions import InputError
from splade_es.workbench.compare import query_measures
from splade_es.workbench.judgments import Judgments, new_query_id, qrels_text
from splade_es.workbench.ui import WorkbenchSettings, ndcg_of


def test_round_trip_through_read_qrels(tmp_path):
    path = tmp_path / "judgments.tsv"
    store = Judgments(path)
    qid, judged = store.judge("tax law", "d1", 1)
    assert qid == new_query_id("tax law") and judged == {"d1": 1}
    store.judge("tax law", "d2", 0)
    store.judge("car", "d9", 2)
    lines = path.read_text().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    assert read_qrels(path) == {qid: {"d1": 1, "d2": 0}, new_query_id("car"): {"d9": 2}}
    queries = read_queries(store.queries_path)
    assert queries == {qid: "tax law", new_query_id("car"): "car"}
    assert store.queries_path == tmp_path / "judgments.queries.jsonl"
    # A new store reads both back; clearing the last judgment drops the query's rows.
    again = Judgments(path)
    assert again.of(qid) == {"d1": 1, "d2": 0}
    again.judge("tax law", "d1", None)
    again.judge("tax law", "d2", None)
    assert read_qrels(path) == {new_query_id("car"): {"d9": 2}}


def test_existing_judgments_and_query_ids_are_kept(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq7\td1\t1\nq8\td2\t1\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q7", "text": "tax law"}) + "\n")
    store = Judgments(path, queries)
    qid, judged = store.judge("  tax law ", "d3", 1)  # the queries file's id for the text
    assert qid == "q7" and judged == {"d1": 1, "d3": 1}
    assert read_qrels(path) == {"q7": {"d1": 1, "d3": 1}, "q8": {"d2": 1}}
    assert read_queries(queries) == {"q7": "tax law"}  # nothing new to add


@pytest.mark.parametrize(
    ("doc_id", "relevance", "message"),
    [
        ("d\t1", 1, "without tabs"),
        ("d\n1", 1, "without tabs"),
        ("", 1, "1 to 512 characters"),
        ("x" * 513, 1, "1 to 512 characters"),
        ('"d1"', 1, "double quotes"),  # read_qrels (csv quoting) would read d1
        ('d"1', 1, "double quotes"),
        ("d1", 7, "relevance must be 0 to 3"),
        ("d1", -1, "relevance must be 0 to 3"),
    ],
)
def test_what_would_break_the_file_is_refused(tmp_path, doc_id, relevance, message):
    store = Judgments(tmp_path / "q.tsv")
    with pytest.raises(InputError, match=message):
        store.judge("tax", doc_id, relevance)
    assert not (tmp_path / "q.tsv").exists()


def test_a_query_id_with_a_quote_is_refused(tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": '"q7"', "text": "tax law"}) + "\n")
    store = Judgments(tmp_path / "q.tsv", queries)
    with pytest.raises(InputError, match="query id must be"):
        store.judge("tax law", "d1", 1)
    assert not (tmp_path / "q.tsv").exists()


def test_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    from splade_es.workbench import judgments

    path = tmp_path / "q.tsv"
    store = Judgments(path)
    qid, _ = store.judge("tax law", "d1", 1)
    written = judgments.write_atomically

    def failing(target, text):
        if target == path:
            raise OSError("disk full")
        written(target, text)

    monkeypatch.setattr(judgments, "write_atomically", failing)
    with pytest.raises(OSError, match="disk full"):
        store.judge("tax law", "d2", 2)
    with pytest.raises(OSError, match="disk full"):
        store.judge("tax law", "d1", None)
    with pytest.raises(OSError, match="disk full"):
        store.judge("car", "d9", 1)  # a new query: its queries file row is written
    assert store.of(qid) == {"d1": 1} and store.of(new_query_id("car")) == {}
    monkeypatch.setattr(judgments, "write_atomically", written)
    # The next write has only what was written before and the new judgment.
    store.judge("tax law", "d3", 0)
    assert read_qrels(path) == {qid: {"d1": 1, "d3": 0}}
    assert Judgments(path).qrels == store.qrels


def test_writes_are_synced_and_keep_the_files_mode(tmp_path, monkeypatch):
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq8\td2\t1\n")
    path.chmod(0o644)
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    store = Judgments(path)
    qid, _ = store.judge("tax law", "d1", 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert len(synced) == 2  # the new queries file and the qrels
    path.chmod(0o640)
    store.judge("tax law", "d1", 2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert read_qrels(path) == {"q8": {"d2": 1}, qid: {"d1": 2}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.queries.jsonl", "q.tsv"]


def test_qrels_text_is_what_read_qrels_reads(tmp_path):
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 3}}
    (tmp_path / "q.tsv").write_text(qrels_text(qrels))
    assert read_qrels(tmp_path / "q.tsv") == qrels


def test_ndcg_per_column_as_evaluate_computes_it():
    runs = {
        "bm25": [{"id": "d2", "score": 3.0}, {"id": "d1", "score": 2.0}],
        "splade": [{"id": "d1", "score": 9.0}, {"id": "d2", "score": 1.0}],
    }
    judged = {"d1": 1}
    ndcg = ndcg_of(runs, judged)
    assert ndcg["splade"] == pytest.approx(1.0)
    assert ndcg["bm25"] == pytest.approx(query_measures({"d2": 3.0, "d1": 2.0}, judged)["ndcg@10"])
    assert 0 < ndcg["bm25"] < 1
    assert ndcg_of(runs, {}) == {"bm25": None, "splade": None}
    with pytest.raises(InputError):
        ndcg_of({"bm25": [{"score": 1}]}, judged)


def test_settings_from_the_environment(tmp_path):
    settings = WorkbenchSettings.from_environment({})
    assert [c.spec for c in settings.configurations] == ["bm25", "splade"]
    assert settings.judgments is None and settings.index is None
    env = {
        "SPLADE_ES_UI_CONFIGS": "splade hybrid:rrf splade,index=new",
        "SPLADE_ES_UI_QRELS": str(tmp_path / "j.tsv"),
        "SPLADE_ES_UI_INDEX": "docs",
    }
    settings = WorkbenchSettings.from_environment(env)
    assert settings.to_json() == {
        "index": "docs",
        "configs": ["splade", "hybrid:rrf", "splade,index=new"],
        "qrels": "j.tsv",  # the file's name only: the page need not know where it is
        "k": 10,
    }
