"""Where documents come from: JSONL, CSV, Parquet, BEIR folders, or any iterable of dicts.

Every reader yields ``Record`` objects in input order. A record that cannot be read (invalid
JSON, non-UTF-8 bytes, not an object) is still yielded, with ``error`` set and the raw text
kept, so that ingestion can dead-letter it and count it: nothing is silently dropped.

``prepare`` turns a readable record into what gets indexed (id, text, kept fields), or names
the field that is wrong. Both are pure, shared by the pipeline and the tests.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import defaults
from ..documents import content_id as content_id  # re-exported: its home was here
from ..documents import parse_json_line, read_document
from ..exceptions import ConfigurationError, InputError
from .inputs import COMPRESSION_SUFFIXES, InputFile, stream_errors

Format = Literal["jsonl", "csv", "parquet", "beir"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet", "beir")
_CSV_READ_ERRORS: tuple[type[BaseException], ...] = (csv.Error, *stream_errors())
Consumed = Callable[[int], None]
"""Told the bytes of the input each read took (``InputFile.open_binary``)."""


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


def read_source(
    path: str | Path, fmt: Format | None = None, *, consumed: Consumed | None = None
) -> Iterator[Record]:
    """Records of a file, a stream (``-``, ``/dev/stdin``, a FIFO) or a BEIR folder; ``fmt``
    defaults from the name (compression suffixes aside: ``docs.csv.gz`` is CSV, ``-`` JSONL).
    Compressed files are decompressed as they are read (``inputs.py``). ``consumed`` is told
    the bytes of the input read so far, up to ``input_size`` (a progress display's total)."""
    source = InputFile(str(path))
    fmt = fmt or guess_format(source)
    if fmt == "beir":
        return read_jsonl_records(beir_corpus(Path(path)), consumed=consumed)
    if not source.is_stdin and Path(path).is_dir():
        raise ConfigurationError(f"{path} is a folder: use --format beir for a BEIR folder")
    if fmt == "jsonl":
        return read_jsonl_records(source, consumed=consumed)
    if fmt == "csv":
        return read_csv_records(source, consumed=consumed)
    if fmt == "parquet":
        if not source.rereadable or source.compression:
            # Parquet keeps its index at the end of the file: it needs a seekable file.
            raise ConfigurationError(
                f"{source.name}: Parquet is read from a plain file only, not from a stream "
                "or a compressed file"
            )
        return read_parquet(Path(path), consumed=consumed)
    raise ConfigurationError(f"unknown format {fmt!r}: expected one of {FORMATS}")


def input_size(path: str | Path, fmt: Format | None = None) -> int | None:
    """The bytes ``read_source(path, fmt, consumed=...)`` will report in all: the size on
    disk of the file read (a BEIR folder's corpus; compressed bytes for a compressed file),
    found without reading it; None for a stream (standard input, a pipe, a FIFO)."""
    source = InputFile(str(path))
    if (fmt or guess_format(source)) == "beir":
        source = beir_corpus(Path(path))
    return source.size


def guess_format(source: InputFile | str | Path) -> Format:
    """The format a name says: a folder is BEIR, ``.csv`` CSV, ``.parquet`` / ``.pq`` Parquet,
    anything else (``-`` included) JSONL; a compression suffix is looked through."""
    if not isinstance(source, InputFile):
        source = InputFile(str(source))
    if not source.is_stdin and Path(source.path).is_dir():
        return "beir"
    suffixes: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    return suffixes.get(source.format_suffix, "jsonl")


def beir_corpus(path: Path) -> InputFile:
    """The corpus of a BEIR folder: ``corpus.jsonl``, or a compressed ``corpus.jsonl.gz`` /
    ``.zst`` / ``.bz2`` / ``.xz``; a file given directly is taken as the corpus."""
    if not path.is_dir():
        if not path.exists():
            raise ConfigurationError(f"{path}: no corpus.jsonl (expected a BEIR folder)")
        return InputFile(str(path))
    for name in ["corpus.jsonl", *(f"corpus.jsonl{suffix}" for suffix in COMPRESSION_SUFFIXES)]:
        if (path / name).is_file():
            return InputFile(str(path / name))
    raise ConfigurationError(f"{path}: no corpus.jsonl (expected a BEIR folder)")


def count_records(path: str | Path, fmt: Format | None = None) -> int | None:
    """Records in a plain JSONL / CSV file or BEIR folder; None where counting would mean
    reading a stream, compressed data or Parquet. It reads the whole file: a progress
    display that should read its input once counts bytes instead (``input_size``)."""
    source = InputFile(str(path))
    kind = fmt or guess_format(source)
    if kind == "beir":
        source = beir_corpus(Path(path))
    elif kind not in ("jsonl", "csv"):
        return None
    lines = source.count_lines()
    if lines is None or kind != "csv":
        return lines
    return max(lines - 1, 0)  # the header row


def read_jsonl_records(
    source: InputFile | str | Path, *, consumed: Consumed | None = None
) -> Iterator[Record]:
    """Records of a JSONL input, one a non-blank line; a line that cannot be read is a record
    with ``error`` set. A stream that breaks mid-way raises ``InputStreamError`` after the
    records before the break."""
    if not isinstance(source, InputFile):
        source = InputFile(str(source))
    with source.open_binary(consumed) as handle:
        for line_no, raw in source.lines(handle):
            if not raw.strip():
                continue
            try:
                yield Record(line_no, parse_json_line(raw, line_no), unit="line")
            except InputError as exc:
                raw_text = raw.decode("utf-8", "replace").rstrip("\n")
                yield Record(line_no, None, str(exc), raw_text, unit="line")


def read_csv_records(
    source: InputFile | str | Path, *, consumed: Consumed | None = None
) -> Iterator[Record]:
    """Records of a CSV input with a header row, one a row (``position``: the row's last line)."""
    if not isinstance(source, InputFile):
        source = InputFile(str(source))
    with source.open_binary(consumed) as binary:
        # surrogateescape keeps undecodable bytes visible, so a bad row is reported, not the file.
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        rows = iter(reader)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except _CSV_READ_ERRORS as exc:  # csv.Error: e.g. an over-long field
                raise source.broken(reader.line_num, "line", exc) from exc
            yield _csv_record(row, reader.line_num)


def _csv_record(row: dict[str | Any, Any], position: int) -> Record:
    bad = [k for k, v in row.items() if _has_surrogates(k) or _has_surrogates(v)]
    if bad:
        raw = ",".join(v or "" for v in row.values())
        return Record(
            position,
            None,
            f"row {position}: not valid UTF-8 in field {bad[0]!r}",
            raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            unit="row",
        )
    if None in row:
        return Record(position, None, f"row {position}: more values than columns", str(row), "row")
    return Record(position, dict(row), unit="row")


def read_parquet(path: Path, *, consumed: Consumed | None = None) -> Iterator[Record]:
    """Records of a Parquet file, one a row. pyarrow reads the file itself, so ``consumed``
    is told the file's share of each batch of rows (its size spread over its rows)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigurationError(
            "reading Parquet needs pyarrow: pip install 'splade-es[parquet]'"
        ) from exc
    parquet = pq.ParquetFile(path)
    size, rows = path.stat().st_size, max(parquet.metadata.num_rows, 1)
    position = reported = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            position += 1
            yield Record(position, row, unit="row")
        if consumed:
            share = size * position // rows
            consumed(share - reported)
            reported = share


def records_of(documents: Iterable[dict[str, Any] | Record]) -> Iterator[Record]:
    """Records of an iterable of dicts (or records, passed through)."""
    for i, doc in enumerate(documents, start=1):
        if isinstance(doc, Record):
            yield doc
        elif isinstance(doc, dict):
            yield Record(i, doc)
        else:
            # The words of the one rule (documents.read_document) for a record not an object.
            message = f"record {i}: expected a JSON object, got {type(doc).__name__}"
            yield Record(i, None, message, repr(doc))


def prepare(
    record: Record,
    *,
    id_field: str | None,
    text_fields: Sequence[str],
    keep_fields: Sequence[str] | None = None,
    sparse_field: str = defaults.VECTOR_FIELD,
    add_id_field: bool = True,
) -> Prepared:
    """Id, text and stored fields of a readable record; ``InputError`` naming the field.

    Which records are refused, and their id and text, is ``documents.read_document`` (the
    rule every path shares); here only what gets stored next to the vector is added.
    ``id_field=None``: the id is a content hash of the document, so a re-run of the same
    input indexes the same ids (never duplicates).
    """
    doc = record.doc
    if doc is None:
        raise InputError(record.error or "unreadable record", position=record.position)
    document = read_document(
        doc,
        id_field=id_field,
        text_fields=text_fields,
        position=record.position,
        unit=record.unit,
        sparse_field=sparse_field,
    )
    fields = doc if keep_fields is None else {k: doc[k] for k in keep_fields if k in doc}
    # Metadata fields (_id, _index, ...) cannot live inside a document body.
    source = {k: v for k, v in fields.items() if not k.startswith("_")}
    if add_id_field:  # the templates' keyword ``id`` field; off to copy documents as they are
        source.setdefault("id", document.doc_id)
    return Prepared(record.position, document.doc_id, document.text, source)


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
