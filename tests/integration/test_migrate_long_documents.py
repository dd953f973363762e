"""``migrate`` with ``long_documents`` (issue 24): a BM25 index of long texts migrated to a
SPLADE index of nested passages (or max-pooled vectors), gated through the passages query,
with the long-document counts in the report."""

from __future__ import annotations

import json

import pytest

from splade_es import SpladeEncoder
from splade_es.encoding.windows import WindowPolicy
from splade_es.evaluate import compare_long_documents
from splade_es.migrate import Gate, MigrationConfig, migrate
from splade_es.migrate.report import summary_lines
from splade_es.query import field_layout_of
from tests.integration.corpus import make_documents
from tests.integration.test_migrate import create_bm25_index

pytestmark = pytest.mark.integration

WINDOW, OVERLAP, MAX_WINDOWS = 16, 4, 5


@pytest.fixture(scope="module")
def encoder(search_model_dir):
    return SpladeEncoder.from_pretrained(str(search_model_dir))


@pytest.fixture
def long_bm25_index(cluster, index_name):
    """30 documents whose texts run to several 16-token windows, behind an alias."""
    docs = make_documents(30, seed=5)
    for i, doc in enumerate(docs):
        doc["text"] = " ".join([doc["text"]] * (1 + i % 6))
    alias, target = create_bm25_index(cluster.client, index_name, docs)
    yield index_name, target, alias, docs
    cluster.client.indices.delete(index=target, ignore_unavailable=True)


def test_migrating_to_passages_builds_a_nested_target_and_gates_through_it(
    cluster, long_bm25_index, encoder
):
    source, target, alias, docs = long_bm25_index
    policy = WindowPolicy("passages", window=WINDOW, overlap=OVERLAP, max_windows=MAX_WINDOWS)
    queries = {f"q{i}": docs[i * 3]["title"] for i in range(8)}
    config = MigrationConfig(
        source=source,
        target=target,
        alias=alias,
        gate=Gate(queries=queries, min_overlap=0.0),
        long_documents=policy,
    )
    report = migrate(cluster.client, config, encoder=encoder)

    assert field_layout_of(cluster.client, target, "splade").passages
    texts = [f"{doc['title']} {doc['text']}" for doc in docs]
    expected = encoder.encode_passages(texts, window=WINDOW, overlap=OVERLAP, max_windows=5)
    stored = cluster.client.search(index=target, body={"size": 100})["hits"]["hits"]
    windows = {hit["_id"]: len(hit["_source"]["splade"]) for hit in stored}
    assert windows == {doc["id"]: int(n) for doc, n in zip(docs, expected.windows, strict=True)}
    assert report.copy is not None and report.copy.long_documents == "passages"
    assert report.copy.over_one_window == int((expected.windows > 1).sum()) > 10
    assert report.truncated == report.copy.hit_max_windows == int(expected.truncated.sum()) > 0
    assert report.gate is not None and report.gate.passed  # the gate searched the passages
    assert report.verification.ok
    assert any(line.startswith("long documents: passages: ") for line in summary_lines(report))


def test_the_cli_migrates_with_maxpool_and_warns_about_what_max_windows_cut(
    cluster, long_bm25_index, search_model_dir, tmp_path
):
    from click.testing import CliRunner

    from splade_es.cli import main

    source, target, alias, docs = long_bm25_index
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": docs[i]["title"]}) + "\n" for i in range(5))
    )
    args = ["migrate", "--url", cluster.url, "--source", source, "--target", target]
    args += ["--alias", alias, "-m", search_model_dir, "--gate-queries", queries]
    args += ["--min-overlap", "0", "--long-documents", "maxpool", "--window", WINDOW]
    args += ["--max-windows", 2, "--json", "--dead-letter", tmp_path / "dead.jsonl"]
    unjudged = CliRunner().invoke(
        main, [str(a) for a in [*args, "--compare-long-documents", "truncate,maxpool"]]
    )
    assert unjudged.exit_code == 2 and "needs the gate's judgments" in unjudged.output
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    copy = report["copy"]
    assert copy["long_documents"] == "maxpool" and copy["truncated"] > 0
    assert copy["windows_p99"] == 2
    assert not field_layout_of(cluster.client, target, "splade").passages
    warning = f"{copy['truncated']} document(s) lost their text past --max-windows"
    assert warning in " ".join(result.output.split())


def test_the_gate_compares_long_document_modes_on_its_judgments(cluster, long_bm25_index, encoder):
    source, target, alias, docs = long_bm25_index
    queries = {f"q{i}": docs[i * 3]["title"] for i in range(8)}
    qrels = {f"q{i}": {docs[i * 3]["id"]: 1} for i in range(8)}
    policy = WindowPolicy("maxpool", window=WINDOW, overlap=OVERLAP, max_windows=MAX_WINDOWS)
    modes = ("truncate", "maxpool", "passages")
    config = MigrationConfig(
        source=source,
        target=target,
        alias=alias,
        gate=Gate(queries=queries, qrels=qrels, min_ndcg_gain=-1.0),
        long_documents=policy,
        compare_long_documents=modes,
        compare_sample=12,  # the 8 judged documents and the first 4 others read
    )
    report = migrate(cluster.client, config, encoder=encoder)
    compared = report.long_document_modes
    assert compared is not None and compared["migrating_with"] == "maxpool"
    assert [row["mode"] for row in compared["modes"]] == list(modes)
    assert compared["documents"] == 12

    # The same numbers as evaluate's in-memory comparison over that sample.
    sample = {
        d["id"]: f"{d['title']} {d['text']}"
        for d in docs
        if d["id"] in sampled(cluster, source, qrels)
    }
    expected = compare_long_documents(encoder, sample, queries, qrels, modes, policy)
    for row, result in zip(compared["modes"], expected, strict=True):
        assert row["ndcg@10"] == pytest.approx(result.metrics["ndcg@10"], abs=1e-6)
    best = max(expected, key=lambda r: r.metrics["ndcg@10"]).mode
    assert compared["best"] == best
    assert any(note.startswith("long documents on the gate's judgments") for note in report.notes)


def sampled(cluster, source, qrels) -> set[str]:
    """The ids the comparison's sample holds: every judged one, then the first 4 others in
    the order the migration reads the source."""
    from splade_es.engines import dialect_of
    from splade_es.ingest.index_source import read_index

    judged = {doc_id for judgments in qrels.values() for doc_id in judgments}
    others = []
    for record in read_index(cluster.client, source, dialect=dialect_of(cluster.client)):
        doc_id = record.doc["_id"]
        if doc_id not in judged and len(others) < 4:
            others.append(doc_id)
    return judged | set(others)
