"""Reading documents: pure functions shared by the CLI, ingestion, scale-out and serve.

``read_document`` is the one rule for what a record is: its id, the text its vector is
computed from, or why it is refused (a dead letter). ``splade-es ingest`` and ``encode``,
Ray, Spark and ``serve --enrich`` all go through it, so the same record gets the same vector,
or the same refusal, whichever way it is indexed.

Every problem raises ``InputError`` naming where the record is and the field, never a bare
KeyError or a silently skipped record. The message is ``"<where>: <problem>"``: ``where``
differs between paths (``line 7`` in a JSONL file, ``row 7`` in CSV and Parquet, ``record 7``
in an in-memory iterable, a bulk item in serve), the problem's words do not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import InputError


def parse_fields(spec: str) -> tuple[str, ...]:
    """``"title, text"`` -> ``("title", "text")``."""
    fields = tuple(f.strip() for f in spec.split(",") if f.strip())
    if not fields:
        raise InputError("no text fields given")
    return fields


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped, bad lines raise InputError."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            yield line_no, parse_json_line(raw, line_no)


def parse_json_line(raw: bytes, line_no: int, *, unit: str = "line") -> dict[str, Any]:
    """One JSONL line as an object; ``InputError`` for bytes that are not UTF-8, text that is
    not JSON, or JSON that is not an object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{unit} {line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start})",
            position=line_no,
        ) from exc
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{unit} {line_no}: invalid JSON ({exc})", position=line_no) from exc
    return require_object(obj, line_no, unit=unit)


@dataclass(frozen=True)
class Document:
    """A record as every path reads it: its id and the text its vector is computed from."""

    doc_id: str
    text: str


def read_document(
    doc: object,
    *,
    id_field: str | None,
    text_fields: Sequence[str],
    position: int,
    unit: str = "record",
    where: str | None = None,
    sparse_field: str | None = None,
) -> Document:
    """The id and text of ``doc``, or ``InputError`` saying why it is a dead letter.

    The checks, in this order (the first that fails is the reason):

    1. ``doc`` is an object (a dict);
    2. ``id_field`` holds a non-blank string or an integer (not a bool); ``id_field=None``:
       the id is ``content_id(doc)``, so a re-run of the same input indexes the same ids;
    3. with ``sparse_field`` (the vector is stored inside the document), the document does
       not already hold that field: its content would be overwritten;
    4. ``text_fields``: each is absent, null or a string, and at least one holds non-blank
       text; the text is the stripped non-blank fields joined by one space.

    ``where`` names the record in messages (default ``"{unit} {position}"``). Errors from
    step 3 on carry ``doc_id``, so the dead letter keeps the id.
    """
    where = where or f"{unit} {position}"
    obj = require_object(doc, position, where=where)
    doc_id = (
        document_id(obj, id_field, position, unit=unit, where=where)
        if id_field
        else content_id(obj)
    )
    if sparse_field is not None and sparse_field in obj:
        raise InputError(
            f"{where}: the document already has a field {sparse_field!r}, "
            "where the SPLADE vector goes",
            position=position,
            field=sparse_field,
            doc_id=doc_id,
        )
    try:
        text = document_text(obj, text_fields, position, unit=unit, where=where)
    except InputError as exc:
        exc.doc_id = doc_id
        raise
    return Document(doc_id, text)


def require_object(
    doc: object, position: int, *, unit: str = "line", where: str | None = None
) -> dict[str, Any]:
    """Step 1 of ``read_document``: ``doc`` if it is an object (a dict), else ``InputError``."""
    if not isinstance(doc, dict):
        raise InputError(
            f"{where or f'{unit} {position}'}: expected a JSON object, got {type(doc).__name__}",
            position=position,
        )
    return doc


def document_id(
    doc: dict[str, Any],
    id_field: str,
    line_no: int,
    *,
    unit: str = "line",
    where: str | None = None,
) -> str:
    """Step 2 of ``read_document``: the id in ``id_field``, as a string."""
    where = where or f"{unit} {line_no}"
    value = doc.get(id_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(
            f"{where}: missing id field {id_field!r}", position=line_no, field=id_field
        )
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InputError(
            f"{where}: id field {id_field!r} is {type(value).__name__}, expected string or integer",
            position=line_no,
            field=id_field,
        )
    return str(value)


def document_text(
    doc: dict[str, Any],
    fields: Sequence[str],
    line_no: int,
    *,
    unit: str = "line",
    where: str | None = None,
) -> str:
    """Step 4 of ``read_document``: the named fields joined by a space; absent or null
    fields count as empty, but at least one field must hold text."""
    where = where or f"{unit} {line_no}"
    parts = []
    for field in fields:
        value = doc.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(
                f"{where}: field {field!r} is {type(value).__name__}, expected text",
                position=line_no,
                field=field,
            )
        if value.strip():
            parts.append(value.strip())
    if not parts:
        raise InputError(
            f"{where}: no text in field(s) {', '.join(map(repr, fields))}",
            position=line_no,
            field=fields[0],
        )
    return " ".join(parts)


def content_id(doc: dict[str, Any]) -> str:
    """A stable id from the document's content (SHA-256 of its canonical JSON)."""
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
