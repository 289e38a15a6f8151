"""Streaming reader for Pile-format input files, with a quarantine for bad lines.

Input formats (chosen by file suffix, case-insensitive):

* ``.jsonl`` / ``.json``: plain JSON lines, UTF-8.
* ``.jsonl.gz`` / ``.gz``: gzip-compressed JSON lines.
* ``.jsonl.zst`` / ``.zst`` / ``.zstd``: zstandard-compressed JSON lines. Any number of
  concatenated frames is accepted (the Pile's own shards are multi-frame).
* ``.parquet``: a Parquet file with a string ``text`` column. The source comes from a
  ``pile_set_name`` or ``source`` string column, or from a ``meta`` column that is a
  struct (``meta.pile_set_name``) or a JSON string (``{"pile_set_name": ...}``).

A JSON line is one Pile document::

    {"text": "<document>", "meta": {"pile_set_name": "<source>"}}

``meta`` is optional; a missing ``meta`` or ``pile_set_name`` gives the source
``"unknown"``. Other keys are ignored.

:func:`iter_pile_file` yields, in file order, a :class:`PileDoc` for every good line and
a :class:`BadLine` (the quarantine) for every line that cannot be used, with a precise
reason. Blank (whitespace-only) lines are skipped silently but still counted, so line
numbers always match ``sed -n Np`` / an editor. CRLF line endings and a UTF-8 byte-order
mark at the start of the file are accepted. Memory stays bounded by the longest line
(JSONL) or the record batch (Parquet); the file is never read whole.

A compressed stream that is corrupt or truncated raises :class:`PileReadError`; its
message names the file and the last line that was read completely, and every line before
that point has already been yielded.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "BadLine",
    "PileDoc",
    "PileReadError",
    "SUPPORTED_SUFFIXES",
    "count_lines",
    "file_format",
    "is_pile_file",
    "iter_pile_file",
    "list_pile_files",
]

#: Suffixes :func:`iter_pile_file` understands (matched case-insensitively).
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".jsonl",
    ".json",
    ".jsonl.gz",
    ".json.gz",
    ".gz",
    ".jsonl.zst",
    ".json.zst",
    ".zst",
    ".zstd",
    ".parquet",
)

UNKNOWN_SOURCE = "unknown"
RAW_CHARS = 200  # how much of a bad line is kept in BadLine.raw
_READ_SIZE = 1 << 20  # bytes per read from the (decompressed) stream
_ZSTD_READ_SIZE = 1 << 16  # compressed bytes fed to the zstd decompressor at once
_PARQUET_BATCH_ROWS = 1024
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class PileDoc:
    """One good document.

    ``line`` is the 1-based line number (JSONL) or row number (Parquet) in the file;
    ``source`` is ``meta.pile_set_name`` (``"unknown"`` when absent).
    """

    line: int
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class BadLine:
    """One quarantined line or row.

    ``line`` is the 1-based line (JSONL) or row (Parquet) number, ``reason`` says what is
    wrong, and ``raw`` holds the first 200 characters of the line, decoded as UTF-8 with
    ``errors="backslashreplace"`` (for Parquet, of the text value, or ``""``).
    """

    line: int
    reason: str
    raw: str


class PileReadError(ValueError):
    """The file cannot be read on: unsupported, corrupt or truncated.

    ``path`` is the file and ``last_line`` the last line (or row) read completely;
    everything up to and including it was yielded before this was raised.
    """

    def __init__(self, message: str, *, path: Path, last_line: int) -> None:
        super().__init__(message)
        self.path = path
        self.last_line = last_line


def file_format(path: str | Path) -> str:
    """The format of ``path`` from its suffix: ``"jsonl"``, ``"gzip"``, ``"zstd"`` or
    ``"parquet"``. Raises ``ValueError`` for any other suffix."""
    name = Path(path).name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise ValueError(
        f"{path}: unsupported input file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})"
    )


def is_pile_file(path: str | Path) -> bool:
    """True when ``path`` has a suffix :func:`iter_pile_file` reads."""
    try:
        file_format(path)
    except ValueError:
        return False
    return True


def list_pile_files(path: str | Path) -> list[Path]:
    """The input files under ``path``, sorted by path.

    A file is returned as is (``[path]``). A directory is searched recursively for files
    with a supported suffix; names starting with ``.`` (hidden and temporary files) are
    skipped. Raises ``FileNotFoundError`` when ``path`` does not exist.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or directory")
    return sorted(
        f
        for f in p.rglob("*")
        if f.is_file()
        and is_pile_file(f)
        and not any(part.startswith(".") for part in f.relative_to(p).parts)
    )


# --------------------------------------------------------------------------- raw streams


def _zstd_chunks(fh: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of a (multi-frame) zstd file, detecting truncation.

    ``ZstdDecompressor.stream_reader(..., read_across_frames=True)`` returns end-of-file
    silently when the last frame is cut short, so frames are decoded one by one with a
    decompression object, and a frame still open at end of input is reported.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    in_frame = False
    while True:
        data = fh.read(_ZSTD_READ_SIZE)
        if not data:
            break
        while data:
            out = dobj.decompress(data)
            in_frame = True
            if out:
                yield out
            if dobj.eof:  # frame finished; the rest of `data` starts the next frame
                data = dobj.unused_data
                dobj = dctx.decompressobj()
                in_frame = False
            else:
                data = b""
    if in_frame:
        raise EOFError("zstd stream ends in the middle of a frame (file truncated?)")


def _gzip_chunks(fh: BinaryIO) -> Iterator[bytes]:
    with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
        while chunk := gz.read(_READ_SIZE):
            yield chunk


def _plain_chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(_READ_SIZE):
        yield chunk


def _iter_raw_lines(path: Path, fmt: str) -> Iterator[bytes]:
    """Lines of a JSONL file as bytes, without the trailing ``\\n`` / ``\\r\\n``.

    Decompression errors become :class:`PileReadError` naming the file and the number of
    lines already yielded. A last line without a newline is yielded too, but only after the
    stream was checked to be complete.
    """
    import zstandard

    decode_errors: tuple[type[BaseException], ...] = (
        EOFError,
        OSError,  # gzip.BadGzipFile is an OSError
        zlib.error,
        zstandard.ZstdError,
    )
    n = 0
    with open(path, "rb") as fh:
        if fmt == "zstd":
            chunks = _zstd_chunks(fh)
        elif fmt == "gzip":
            chunks = _gzip_chunks(fh)
        else:
            chunks = _plain_chunks(fh)
        pending: list[bytes] = []
        try:
            for chunk in chunks:
                parts = chunk.split(b"\n")
                if len(parts) == 1:
                    pending.append(chunk)
                    continue
                pending.append(parts[0])
                first = b"".join(pending)
                n += 1
                yield first[:-1] if first.endswith(b"\r") else first
                for part in parts[1:-1]:
                    n += 1
                    yield part[:-1] if part.endswith(b"\r") else part
                pending = [parts[-1]] if parts[-1] else []
        except decode_errors as e:
            kind = {"zstd": "zstd", "gzip": "gzip"}.get(fmt, "input")
            raise PileReadError(
                f"{path}: corrupt or truncated {kind} stream after line {n} "
                f"(the last line read completely): {type(e).__name__}: {e}",
                path=path,
                last_line=n,
            ) from e
        if pending:
            last = b"".join(pending)
            yield last[:-1] if last.endswith(b"\r") else last


# --------------------------------------------------------------------------- JSONL


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _raw(line: bytes) -> str:
    # 1024 bytes hold at least 200 characters of valid UTF-8 (at most 4 bytes each).
    return line[: 4 * RAW_CHARS + 224].decode("utf-8", errors="backslashreplace")[:RAW_CHARS]


def _source_of(meta: object) -> str:
    if isinstance(meta, dict):
        name = meta.get("pile_set_name")
        if isinstance(name, str) and name.strip():
            return name
    return UNKNOWN_SOURCE


def _check_text(text: object) -> str | None:
    """Why ``text`` is unusable, or None when it is a usable document."""
    if not isinstance(text, str):
        return f"field 'text' is {_type_name(text)}, expected string"
    if not text:
        return "empty text"
    if text.isspace():
        return "empty text (whitespace only)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"field 'text' contains an unpaired surrogate "
            f"(\\u{ord(text[e.start]):04x} at character {e.start})"
        )
    return None


def _parse_line(lineno: int, line: bytes) -> PileDoc | BadLine:
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadLine(
            lineno, f"not valid UTF-8 (byte 0x{line[e.start]:02x} at offset {e.start})", _raw(line)
        )
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        return BadLine(lineno, f"invalid JSON: {e.msg} (col {e.colno})", _raw(line))
    except RecursionError:
        return BadLine(lineno, "invalid JSON: nested too deeply", _raw(line))
    if not isinstance(obj, dict):
        return BadLine(lineno, f"top-level value is {_type_name(obj)}, expected object", _raw(line))
    if "text" not in obj:
        return BadLine(lineno, "missing field 'text'", _raw(line))
    text = obj["text"]
    problem = _check_text(text)
    if problem is not None:
        return BadLine(lineno, problem, _raw(line))
    return PileDoc(lineno, text, _source_of(obj.get("meta")))


def _iter_jsonl(path: Path, fmt: str) -> Iterator[PileDoc | BadLine]:
    lineno = 0
    for line in _iter_raw_lines(path, fmt):
        lineno += 1
        if lineno == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line.strip():
            continue
        yield _parse_line(lineno, line)


# --------------------------------------------------------------------------- Parquet


def _parquet_source_column(schema: object) -> str | None:
    """Name of the column that carries the source, or None."""
    import pyarrow as pa

    names = schema.names  # type: ignore[attr-defined]
    for name in ("pile_set_name", "source"):
        if name in names:
            t = schema.field(name).type  # type: ignore[attr-defined]
            if pa.types.is_string(t) or pa.types.is_large_string(t):
                return name
    if "meta" in names:
        t = schema.field("meta").type  # type: ignore[attr-defined]
        if pa.types.is_struct(t) and t.get_field_index("pile_set_name") >= 0:
            return "meta"
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return "meta"
    return None


def _parquet_source(value: object, column: str | None) -> str:
    if column is None or value is None:
        return UNKNOWN_SOURCE
    if column == "meta":
        if isinstance(value, str):  # meta stored as a JSON string
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, RecursionError):
                return UNKNOWN_SOURCE
        return _source_of(value)
    return value if isinstance(value, str) and value.strip() else UNKNOWN_SOURCE


def _iter_parquet(path: Path) -> Iterator[PileDoc | BadLine]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise PileReadError(
            f"{path}: not a readable Parquet file: {e}", path=path, last_line=0
        ) from e
    schema = pf.schema_arrow
    if "text" not in schema.names:
        raise ValueError(
            f"{path}: Parquet file has no 'text' column (columns: {', '.join(schema.names)})"
        )
    text_type = schema.field("text").type
    is_binary = pa.types.is_binary(text_type) or pa.types.is_large_binary(text_type)
    if not (
        is_binary
        or pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or getattr(pa.types, "is_string_view", lambda _t: False)(text_type)
    ):
        raise ValueError(f"{path}: Parquet column 'text' has type {text_type}, expected string")
    src_col = _parquet_source_column(schema)
    columns = ["text"] + ([src_col] if src_col else [])

    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            texts = batch.column("text").to_pylist()
            sources = batch.column(src_col).to_pylist() if src_col else [None] * batch.num_rows
            for text, src in zip(texts, sources, strict=True):
                row += 1
                if text is None:
                    yield BadLine(row, "null text", "")
                    continue
                if is_binary:
                    try:
                        text = text.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield BadLine(
                            row,
                            f"not valid UTF-8 (byte 0x{text[e.start]:02x} at offset {e.start})",
                            _raw(text),
                        )
                        continue
                problem = _check_text(text)
                if problem is not None:
                    yield BadLine(row, problem, text[:RAW_CHARS])
                    continue
                yield PileDoc(row, text, _parquet_source(src, src_col))
    except (pa.ArrowException, OSError) as e:
        raise PileReadError(
            f"{path}: corrupt Parquet data after row {row} (the last row read completely): "
            f"{type(e).__name__}: {e}",
            path=path,
            last_line=row,
        ) from e


# --------------------------------------------------------------------------- public


def iter_pile_file(path: str | Path) -> Iterator[PileDoc | BadLine]:
    """Stream the documents of one Pile-format file, in file order.

    Yields a :class:`PileDoc` for each usable line/row and a :class:`BadLine` for each
    unusable one (reasons such as ``"not valid UTF-8 (byte 0xff at offset 17)"``,
    ``"invalid JSON: Expecting ',' delimiter (col 23)"``, ``"missing field 'text'"``,
    ``"field 'text' is int, expected string"``, ``"empty text"``,
    ``"top-level value is list, expected object"``). Blank lines are skipped.

    Raises ``ValueError`` for an unsupported suffix or a Parquet file without a ``text``
    column, :class:`PileReadError` (a ``ValueError``) for a corrupt or truncated
    compressed stream, and ``FileNotFoundError`` for a missing file.
    """
    p = Path(path)
    fmt = file_format(p)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if fmt == "parquet":
        return _iter_parquet(p)
    return _iter_jsonl(p, fmt)


def count_lines(path: str | Path) -> int:
    """Number of lines (JSONL, blank ones included; a last line without a newline counts)
    or rows (Parquet, from the footer) in ``path``: a total for progress bars.

    Streams the file in constant memory; a corrupt stream raises like
    :func:`iter_pile_file`.
    """
    p = Path(path)
    fmt = file_format(p)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(p).metadata.num_rows
    n = 0
    for _ in _iter_raw_lines(p, fmt):
        n += 1
    return n
