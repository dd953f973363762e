"""Where documents come from: JSONL, CSV, Parquet, BEIR folders, or any iterable of dicts.

Every reader yields ``Record`` objects in input order. A record that cannot be read (invalid
JSON, non-UTF-8 bytes, not an object) is still yielded, with ``error`` set and the raw text
kept, so that ingestion can dead-letter it and count it: nothing is silently dropped.

``prepare`` turns a readable record into what gets indexed (id, text, kept fields), or names
the field that is wrong. Both are pure, shared by the pipeline and the tests.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..documents import document_id, document_text, parse_json_line
from ..exceptions import ConfigurationError, InputError

Format = Literal["jsonl", "csv", "parquet", "beir"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet", "beir")


@dataclass(frozen=True)
class Record:
    """One input record. ``position``: 1-based line (JSONL), row (CSV, Parquet) or record (an
    iterable, an index), as ``unit`` says; messages name it that way."""

    position: int
    doc: dict[str, Any] | None
    error: str | None = None
    raw: str | None = None  # the unparsed input, for dead letters of unreadable records
    unit: str = "record"


@dataclass(frozen=True)
class Prepared:
    """A record ready to encode and index."""

    position: int
    doc_id: str
    text: str
    source: dict[str, Any]  # the fields stored next to the sparse vector


def read_source(path: str | Path, fmt: Format | None = None) -> Iterator[Record]:
    """Records of a file or BEIR folder; ``fmt`` defaults from the path."""
    path = Path(path)
    fmt = fmt or guess_format(path)
    if fmt == "beir":
        corpus = path / "corpus.jsonl" if path.is_dir() else path
        if not corpus.is_file():
            raise ConfigurationError(f"{path}: no corpus.jsonl (expected a BEIR folder)")
        return read_jsonl_records(corpus)
    if path.is_dir():
        raise ConfigurationError(f"{path} is a folder: use --format beir for a BEIR folder")
    readers = {"jsonl": read_jsonl_records, "csv": read_csv_records, "parquet": read_parquet}
    if fmt not in readers:
        raise ConfigurationError(f"unknown format {fmt!r}: expected one of {FORMATS}")
    return readers[fmt](path)


def guess_format(path: Path) -> Format:
    if path.is_dir():
        return "beir"
    suffix = path.suffix.lower()
    return {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(suffix, "jsonl")  # type: ignore[return-value]


def read_jsonl_records(path: Path) -> Iterator[Record]:
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield Record(line_no, parse_json_line(raw, line_no), unit="line")
            except InputError as exc:
                raw_text = raw.decode("utf-8", "replace").rstrip("\n")
                yield Record(line_no, None, str(exc), raw_text, unit="line")


def read_csv_records(path: Path) -> Iterator[Record]:
    # surrogateescape keeps undecodable bytes visible, so a bad row is reported, not the file.
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            position = reader.line_num
            bad = [k for k, v in row.items() if _has_surrogates(k) or _has_surrogates(v)]
            if bad:
                raw = ",".join(v or "" for v in row.values())
                yield Record(
                    position,
                    None,
                    f"row {position}: not valid UTF-8 in field {bad[0]!r}",
                    raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                    unit="row",
                )
            elif None in row:
                message = f"row {position}: more values than columns"
                yield Record(position, None, message, str(row), unit="row")
            else:
                yield Record(position, dict(row), unit="row")


def read_parquet(path: Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigurationError(
            "reading Parquet needs pyarrow: pip install 'splade-es[parquet]'"
        ) from exc
    position = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            position += 1
            yield Record(position, row, unit="row")


def records_of(documents: Iterable[dict[str, Any] | Record]) -> Iterator[Record]:
    """Records of an iterable of dicts (or records, passed through)."""
    for i, doc in enumerate(documents, start=1):
        if isinstance(doc, Record):
            yield doc
        elif isinstance(doc, dict):
            yield Record(i, doc)
        else:
            message = f"record {i}: expected a dict, got {type(doc).__name__}"
            yield Record(i, None, message, repr(doc))


def prepare(
    record: Record,
    *,
    id_field: str | None,
    text_fields: Sequence[str],
    keep_fields: Sequence[str] | None = None,
    sparse_field: str = "splade",
    add_id_field: bool = True,
) -> Prepared:
    """Id, text and stored fields of a readable record; ``InputError`` naming the field.

    ``id_field=None``: the id is a content hash of the document, so a re-run of the same
    input indexes the same ids (never duplicates).
    """
    doc = record.doc
    if doc is None:
        raise InputError(record.error or "unreadable record", position=record.position)
    where = f"{record.unit} {record.position}"
    doc_id = (
        document_id(doc, id_field, record.position, unit=record.unit)
        if id_field
        else content_id(doc)
    )
    # From here on the id is known: errors carry it, so the dead letter keeps it.
    if sparse_field in doc:
        raise InputError(
            f"{where}: the document already has a field {sparse_field!r}, "
            "where the SPLADE vector goes",
            position=record.position,
            field=sparse_field,
            doc_id=doc_id,
        )
    try:
        text = document_text(doc, text_fields, record.position, unit=record.unit)
    except InputError as exc:
        exc.doc_id = doc_id
        raise
    fields = doc if keep_fields is None else {k: doc[k] for k in keep_fields if k in doc}
    # Metadata fields (_id, _index, ...) cannot live inside a document body.
    source = {k: v for k, v in fields.items() if not k.startswith("_")}
    if add_id_field:  # the templates' keyword ``id`` field; off to copy documents as they are
        source.setdefault("id", doc_id)
    return Prepared(record.position, doc_id, text, source)


def content_id(doc: dict[str, Any]) -> str:
    """A stable id from the document's content (SHA-256 of its canonical JSON)."""
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``: this worker takes records whose position % 4 == 2."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ConfigurationError(f"--shard expects i/N (e.g. 0/4), got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigurationError(f"--shard {spec}: need 0 <= i < N")
    return index, count


def in_shard(position: int, shard: tuple[int, int]) -> bool:
    return position % shard[1] == shard[0]


def _has_surrogates(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
