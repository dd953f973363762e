"""Reading documents: pure functions shared by the CLI, ingestion and tests.

Every problem raises ``InputError`` naming the position (1-based) and the field, never a bare
KeyError or a silently skipped record. ``unit`` says what a position counts: "line" in JSONL
files, "row" in CSV and Parquet, "record" in an in-memory iterable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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


def parse_json_line(raw: bytes, line_no: int) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"line {line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start})", position=line_no
        ) from exc
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InputError(f"line {line_no}: invalid JSON ({exc})", position=line_no) from exc
    if not isinstance(obj, dict):
        raise InputError(
            f"line {line_no}: expected a JSON object, got {type(obj).__name__}", position=line_no
        )
    return obj


def document_id(doc: dict[str, Any], id_field: str, line_no: int, *, unit: str = "line") -> str:
    value = doc.get(id_field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(
            f"{unit} {line_no}: missing id field {id_field!r}", position=line_no, field=id_field
        )
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InputError(
            f"{unit} {line_no}: id field {id_field!r} is {type(value).__name__}, "
            "expected string or integer",
            position=line_no,
            field=id_field,
        )
    return str(value)


def document_text(
    doc: dict[str, Any], fields: Sequence[str], line_no: int, *, unit: str = "line"
) -> str:
    """The named fields joined by a space; absent or null fields count as empty, but at
    least one field must hold text."""
    parts = []
    for field in fields:
        value = doc.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(
                f"{unit} {line_no}: field {field!r} is {type(value).__name__}, expected text",
                position=line_no,
                field=field,
            )
        if value.strip():
            parts.append(value.strip())
    if not parts:
        raise InputError(
            f"{unit} {line_no}: no text in field(s) {', '.join(map(repr, fields))}",
            position=line_no,
            field=fields[0],
        )
    return " ".join(parts)
