"""Opening inputs the way Unix users hand them over.

A path may be a regular file, ``-`` (standard input), ``/dev/stdin``, a FIFO or a process
substitution (``<(zcat docs.gz)``); a name ending in ``.gz``, ``.bz2``, ``.xz`` or ``.zst``
is decompressed as it is read (zstd through ``zstandard``, the others from the standard
library), and the name without that suffix says the format (``docs.csv.zst`` is CSV).

Streams (pipes, FIFOs, standard input) can be read once only: nothing here reads an input
twice, and ``InputFile.rereadable`` tells the callers that would (counting records for a
progress bar, resuming after a crash) whether they can.

>>> InputFile("docs.csv.zst").compression, InputFile("docs.csv.zst").format_suffix
('zstd', '.csv')
>>> InputFile("-").name, InputFile("-").stem
('standard input', 'stdin')
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal, cast

from ..exceptions import ConfigurationError, InputStreamError

Compression = Literal["gzip", "bz2", "xz", "zstd"]
COMPRESSION_SUFFIXES: dict[str, Compression] = {
    ".gz": "gzip",
    ".bz2": "bz2",
    ".xz": "xz",
    ".zst": "zstd",
}
STDIN = "-"
READ_SIZE = 1 << 16  # bytes per read of a counted input


def stream_errors() -> tuple[type[BaseException], ...]:
    """What a broken compressed stream raises while it is read: truncated (EOFError), corrupt
    (zlib/lzma/zstd errors, gzip's BadGzipFile is an OSError), or unreadable (OSError)."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
    with contextlib.suppress(ImportError):
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


@dataclass(frozen=True)
class InputFile:
    """One input as the user named it (see the module docstring)."""

    path: str

    @property
    def is_stdin(self) -> bool:
        return self.path == STDIN

    @property
    def name(self) -> str:
        """How messages name it."""
        return "standard input" if self.is_stdin else self.path

    @property
    def compression(self) -> Compression | None:
        return COMPRESSION_SUFFIXES.get(Path(self.path).suffix.lower())

    @property
    def format_suffix(self) -> str:
        """The suffix that names the format, the compression suffix left out (``""``: none)."""
        path = Path(self.path)
        if self.compression:
            path = path.with_suffix("")
        return path.suffix.lower()

    @property
    def stem(self) -> str:
        """The file name without its format and compression suffixes (``stdin`` for ``-``),
        to name files made from this one (``docs.jsonl.gz`` -> ``docs``)."""
        if self.is_stdin:
            return "stdin"
        path = Path(self.path)
        if self.compression:
            path = path.with_suffix("")
        return path.stem if path.suffix else path.name

    @property
    def rereadable(self) -> bool:
        """A regular file (compressed or not), which can be read again from its start; pipes,
        FIFOs, terminals and standard input cannot."""
        if self.is_stdin:
            return False
        try:
            return stat.S_ISREG(os.stat(self.path).st_mode)
        except OSError:
            return False

    @property
    def size(self) -> int | None:
        """Bytes on disk of a regular file (compressed ones for a compressed file), the most
        ``open_binary`` reports as consumed; None for a stream, which has no size."""
        return os.stat(self.path).st_size if self.rereadable else None

    @contextlib.contextmanager
    def open_binary(self, consumed: Callable[[int], None] | None = None) -> Iterator[BinaryIO]:
        """The decompressed bytes, read as they come (never the whole input in memory).
        ``consumed`` is told how many bytes of the input itself (compressed ones for a
        compressed file) each read took, for a progress display that reads nothing twice."""
        with contextlib.ExitStack() as stack:
            if self.is_stdin:
                raw: BinaryIO = sys.stdin.buffer  # not ours to close
            else:
                try:
                    raw = stack.enter_context(open(self.path, "rb"))
                except OSError as exc:
                    raise ConfigurationError(f"cannot read {self.name}: {exc.strerror}") from exc
            if consumed is not None:
                raw = io.BufferedReader(_CountedReads(raw, consumed), READ_SIZE)
            stream = _decompressed(raw, self.compression)
            if stream is not raw:
                stack.callback(stream.close)
            yield stream

    def lines(self, handle: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
        """``(line_number, line)`` of ``handle``; a stream that breaks mid-way (truncated or
        corrupt compressed data, a read error) raises ``InputStreamError`` naming this input
        and the last line read whole, after every line before it was yielded."""
        line_no = 0
        lines = iter(handle)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except stream_errors() as exc:
                raise self.broken(line_no, "line", exc) from exc
            line_no += 1
            yield line_no, raw

    def broken(self, position: int, unit: str, exc: BaseException) -> InputStreamError:
        """The error for this input breaking after ``position`` whole lines or rows."""
        what = "compressed data" if self.compression else "reading"
        after = f"after {unit} {position}" if position else "before its first " + unit
        return InputStreamError(
            f"{self.name}: {what} failed {after} ({_describe(exc)}): a truncated or corrupt file?",
            position=position + 1,
        )

    def count_lines(self) -> int | None:
        """Non-blank lines of a plain regular file, for a progress bar's total; None where
        counting would read the input a second time in full (a stream, compressed data)."""
        if not self.rereadable or self.compression:
            return None
        with open(self.path, "rb") as handle:
            return sum(1 for line in handle if line.strip())


def _decompressed(raw: BinaryIO, compression: Compression | None) -> BinaryIO:
    if compression is None:
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")  # type: ignore[return-value]
    return io.BufferedReader(_ZstdFrames(raw))


class _CountedReads(io.RawIOBase):
    """``raw``'s bytes as they are, each read's size told to ``consumed``. Closing it
    leaves ``raw`` open (standard input is not ours to close)."""

    def __init__(self, raw: BinaryIO, consumed: Callable[[int], None]) -> None:
        # readinto1: at most one read of the file or pipe, so a line that came down a
        # pipe is passed on at once instead of waiting for a full buffer.
        readinto = getattr(raw, "readinto1", None) or getattr(raw, "readinto", None)
        self._readinto = cast(Callable[[memoryview], "int | None"], readinto)
        self._consumed = consumed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n: int = self._readinto(buffer) or 0
        if n:
            self._consumed(n)
        return n


class _ZstdFrames(io.RawIOBase):
    """zstd frames (one or several, as pzstd and ``cat a.zst b.zst`` make them), decompressed
    as read. Unlike zstandard's ``stream_reader``, which ends quietly where a truncated file
    ends, a frame cut short raises EOFError, as gzip, bz2 and xz do."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._raw = raw
        self._new_frame = zstandard.ZstdDecompressor().decompressobj
        self._frame = self._new_frame()
        self._in_frame = False  # bytes of a frame were read and its end not yet seen
        self._ready = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._ready:
            chunk = self._raw.read(1 << 17)
            if not chunk:
                if self._in_frame:
                    raise EOFError("compressed file ended before the end-of-frame marker")
                return 0
            self._ready = self._decompress(chunk)
        n = min(len(buffer), len(self._ready))
        buffer[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        out = [self._frame.decompress(chunk)]
        self._in_frame = True
        while self._frame.eof:
            rest = self._frame.unused_data
            self._frame = self._new_frame()
            self._in_frame = bool(rest)
            if not rest:
                break
            out.append(self._frame.decompress(rest))
        return b"".join(out)


def open_output_text(path: str | Path, compression: Compression | None) -> IO[str]:
    """A UTF-8 text file for writing, compressed as ``compression`` says."""
    if compression is None:
        return open(path, "w", encoding="utf-8")
    if compression == "gzip":
        return gzip.open(path, "wt", encoding="utf-8")
    if compression == "bz2":
        return bz2.open(path, "wt", encoding="utf-8")
    if compression == "xz":
        return lzma.open(path, "wt", encoding="utf-8")
    import zstandard

    return zstandard.open(path, "wt", encoding="utf-8")  # type: ignore[no-any-return]


def compression_of(path: str | Path) -> Compression | None:
    """The compression a file name asks for (by suffix), for outputs."""
    return COMPRESSION_SUFFIXES.get(Path(path).suffix.lower())


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
