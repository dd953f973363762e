"""Read BEIR-layout evaluation data: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``.

>>> import io
>>> read_qrels(io.StringIO("query-id\\tcorpus-id\\tscore\\nq1\\td7\\t1\\n"))
{'q1': {'d7': 1}}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .documents import read_jsonl
from .exceptions import InputError

Qrels = dict[str, dict[str, int]]


def _open(source: str | Path | IO[str]) -> IO[str]:
    if hasattr(source, "read"):
        return source  # type: ignore[return-value]
    return open(source, encoding="utf-8")  # type: ignore[arg-type]


def read_queries(source: str | Path | IO[str]) -> dict[str, str]:
    """``{query id: text}`` from a JSONL file of ``{"_id", "text"}`` objects."""
    queries: dict[str, str] = {}
    with _open(source) as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"line {line_no}: invalid JSON ({exc.msg})", position=line_no
                ) from None
            for field in ("_id", "text"):
                if not isinstance(record.get(field), str | int):
                    raise InputError(
                        f"line {line_no}: query has no {field!r}", position=line_no, field=field
                    )
            queries[str(record["_id"])] = str(record["text"])
    return queries


def read_qrels(source: str | Path | IO[str]) -> Qrels:
    """``{query id: {doc id: relevance}}`` from a TSV with header ``query-id corpus-id score``
    (TREC-style 4-column files, ``qid 0 docid rel``, are read too)."""
    qrels: Qrels = {}
    with _open(source) as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if len(row) == 1:
                row = row[0].split()
            if not row or (line_no == 1 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # blank line or header
            if len(row) not in (3, 4):
                raise InputError(f"qrels line {line_no}: expected 3 or 4 columns", position=line_no)
            qid, docid, rel = row[0], row[-2], row[-1]
            try:
                qrels.setdefault(qid, {})[docid] = int(rel)
            except ValueError:
                raise InputError(
                    f"qrels line {line_no}: relevance {rel!r} is not an integer", position=line_no
                ) from None
    return qrels


def read_corpus(path: str | Path) -> Iterator[dict[str, Any]]:
    """Documents of ``corpus.jsonl`` (``{"_id", "title", "text", ...}``), in file order; a bad
    line raises ``InputError`` naming it (``documents.read_jsonl``)."""
    for _, doc in read_jsonl(path):
        yield doc


def beir_paths(folder: str | Path, split: str = "test") -> tuple[Path, Path, Path]:
    """(corpus, queries, qrels) paths of a BEIR folder."""
    root = Path(folder)
    paths = (root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv")
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: missing (expected a BEIR folder)")
    return paths
