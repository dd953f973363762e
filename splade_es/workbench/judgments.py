"""The judgments the page records: a qrels file in the BEIR layout (``query-id``,
``corpus-id``, ``score`` with a header, tab-separated) that ``evaluate --qrels``, ``compare
--qrels`` and the migration gate read, and the queries they belong to (``queries.jsonl``:
``{"_id", "text"}``, what ``--queries`` reads).

Both paths are fixed when the store is made (``serve``'s settings, ``compare --ui``): a
request names a query and a document, never a file. Every change rewrites the file whole
(a temporary file in the same folder, synced to disk, then a rename; the file's permission
bits kept), so a reader sees the old or the new file, never half of one; the store's memory
takes the change only once it is written. Judgments of queries the page never showed are
kept as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from ..beir import Qrels, read_qrels, read_queries
from ..exceptions import InputError

HEADER = ("query-id", "corpus-id", "score")
MAX_ID_CHARS = 512
RELEVANCE = range(0, 4)  # 0 = judged not relevant; 1-3 graded relevance
# Would break a TSV row; a '"' would be read as csv quoting (``read_qrels``: csv's default).
FORBIDDEN = ("\t", "\n", "\r", '"')


class Judgments:
    """The qrels at ``path`` and the queries at ``queries_path``, read once, kept in memory,
    written back on each change."""

    def __init__(self, path: str | Path, queries_path: str | Path | None = None) -> None:
        self.path = Path(path)
        self.queries_path = Path(queries_path) if queries_path else default_queries_path(self.path)
        self._lock = threading.Lock()
        self.qrels: Qrels = read_qrels(self.path) if self.path.is_file() else {}
        self.queries: dict[str, str] = (
            read_queries(self.queries_path) if self.queries_path.is_file() else {}
        )

    def of(self, query_id: str) -> dict[str, int]:
        return dict(self.qrels.get(query_id, {}))

    def query_id(self, text: str) -> str:
        """The id of a query text: the queries file's, else one made from the text."""
        wanted = text.strip()
        known = next((qid for qid, t in self.queries.items() if t.strip() == wanted), None)
        return known or new_query_id(wanted)

    def judge(self, text: str, doc_id: str, relevance: int | None) -> tuple[str, dict[str, int]]:
        """Record (``relevance`` None: forget) the judgment of ``doc_id`` for the query
        ``text``; returns the query's id and judgments. Both files are written."""
        check_id(doc_id, "document id")
        if relevance is not None and relevance not in RELEVANCE:
            raise InputError(f"relevance must be 0 to {RELEVANCE[-1]} or null, got {relevance}")
        with self._lock:
            query_id = self.query_id(text)
            check_id(query_id, "query id")
            # The new qrels are a copy, written first: a failed write changes nothing here.
            qrels = {qid: dict(docs) for qid, docs in self.qrels.items()}
            judged = qrels.setdefault(query_id, {})
            if relevance is None:
                judged.pop(doc_id, None)
            else:
                judged[doc_id] = relevance
            if not judged:
                del qrels[query_id]
            if query_id not in self.queries:
                queries = {**self.queries, query_id: text.strip()}
                write_atomically(self.queries_path, queries_text(queries))
                self.queries = queries
            write_atomically(self.path, qrels_text(qrels))
            self.qrels = qrels
            return query_id, self.of(query_id)


def default_queries_path(qrels: Path) -> Path:
    """``judgments.tsv`` -> ``judgments.queries.jsonl`` beside it."""
    return qrels.with_name(f"{qrels.stem}.queries.jsonl")


def new_query_id(text: str) -> str:
    """A stable id for a query text the queries file does not have.

    >>> new_query_id("tax depreciation") == new_query_id("tax depreciation")
    True
    """
    return "q-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def check_id(value: str, what: str) -> None:
    if not value or len(value) > MAX_ID_CHARS or any(c in value for c in FORBIDDEN):
        raise InputError(
            f"{what} must be 1 to {MAX_ID_CHARS} characters without tabs, line breaks or "
            'double quotes (")'
        )


def qrels_text(qrels: Mapping[str, Mapping[str, int]]) -> str:
    """The BEIR qrels file of ``qrels`` (query and document order kept).

    >>> qrels_text({"q1": {"d7": 1}})
    'query-id\\tcorpus-id\\tscore\\nq1\\td7\\t1\\n'
    """
    rows = ["\t".join(HEADER)]
    rows += [f"{qid}\t{doc}\t{rel}" for qid, docs in qrels.items() for doc, rel in docs.items()]
    return "\n".join(rows) + "\n"


def queries_text(queries: Mapping[str, str]) -> str:
    return "".join(
        json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n"
        for qid, text in queries.items()
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (the folder must exist), the text synced
    to disk first; an existing file's permission bits are kept (a new file is 0600, as
    ``mkstemp`` makes it)."""
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
