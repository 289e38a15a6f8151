"""Tests for tasks.corpus.pile_reader: formats, line numbers, quarantine reasons, broken streams."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tasks.corpus.pile_reader import (
    BadLine,
    PileDoc,
    PileReadError,
    count_lines,
    file_format,
    iter_pile_file,
    list_pile_files,
)


def _doc(text: str, source: str | None = "Pile-CC") -> str:
    obj: dict = {"text": text}
    if source is not None:
        obj["meta"] = {"pile_set_name": source}
    return json.dumps(obj)


GOOD = [
    _doc(f"document number {i} with some text", "Github" if i % 2 else "Pile-CC") for i in range(5)
]
GOOD_BYTES = ("\n".join(GOOD) + "\n").encode()


def _write_zst(path: Path, payloads: list[bytes], *, checksum: bool = True) -> Path:
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=checksum)
    path.write_bytes(b"".join(cctx.compress(p) for p in payloads))
    return path


def _docs(items: list[PileDoc | BadLine]) -> list[PileDoc]:
    return [x for x in items if isinstance(x, PileDoc)]


def _bad(items: list[PileDoc | BadLine]) -> list[BadLine]:
    return [x for x in items if isinstance(x, BadLine)]


def _check_good(items: list[PileDoc | BadLine]) -> None:
    assert items == [
        PileDoc(i + 1, f"document number {i} with some text", "Github" if i % 2 else "Pile-CC")
        for i in range(5)
    ]


# ------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["a.jsonl", "a.json"])
def test_plain(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(GOOD_BYTES)
    _check_good(list(iter_pile_file(p)))
    _check_good(list(iter_pile_file(str(p))))
    assert count_lines(p) == 5


@pytest.mark.parametrize("name", ["a.jsonl.gz", "a.gz"])
def test_gzip(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(gzip.compress(GOOD_BYTES))
    _check_good(list(iter_pile_file(p)))
    assert count_lines(p) == 5


@pytest.mark.parametrize("name", ["a.jsonl.zst", "a.zst"])
def test_zstd_single_frame(tmp_path: Path, name: str) -> None:
    p = _write_zst(tmp_path / name, [GOOD_BYTES], checksum=False)
    _check_good(list(iter_pile_file(p)))
    assert count_lines(p) == 5


def test_zstd_multi_frame_line_split_across_frames(tmp_path: Path) -> None:
    # Frames cut in the middle of lines, as a streaming writer may do; one frame is empty.
    cuts = [0, 7, 7, 60, 61, 130, len(GOOD_BYTES)]
    payloads = [GOOD_BYTES[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    p = _write_zst(tmp_path / "multi.jsonl.zst", payloads)
    assert p.read_bytes().count(b"\x28\xb5\x2f\xfd") == len(payloads)  # one frame each
    _check_good(list(iter_pile_file(p)))


def test_zstd_many_frames_large(tmp_path: Path) -> None:
    lines = [_doc("x" * (i % 997) + f" doc {i}", f"S{i % 3}") for i in range(3000)]
    data = ("\n".join(lines) + "\n").encode()
    payloads = [data[i : i + 50_000] for i in range(0, len(data), 50_000)]
    p = _write_zst(tmp_path / "big.jsonl.zst", payloads)
    out = list(iter_pile_file(p))
    assert len(out) == 3000 and not _bad(out)
    assert out[-1] == PileDoc(3000, "x" * (2999 % 997) + " doc 2999", "S2")
    assert [d.line for d in out] == list(range(1, 3001))


def test_parquet_with_meta_struct(tmp_path: Path) -> None:
    table = pa.table(
        {
            "text": ["alpha text", None, "", "gamma text", "   "],
            "meta": [{"pile_set_name": "ArXiv"}, None, None, None, {"pile_set_name": "X"}],
            "other": [1, 2, 3, 4, 5],
        }
    )
    p = tmp_path / "a.parquet"
    pq.write_table(table, p, row_group_size=2)
    out = list(iter_pile_file(p))
    assert out == [
        PileDoc(1, "alpha text", "ArXiv"),
        BadLine(2, "null text", ""),
        BadLine(3, "empty text", ""),
        PileDoc(4, "gamma text", "unknown"),
        BadLine(5, "empty text (whitespace only)", "   "),
    ]
    assert count_lines(p) == 5


def test_parquet_source_columns(tmp_path: Path) -> None:
    p1 = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": ["t1", "t2"], "pile_set_name": ["Github", None]}), p1)
    assert list(iter_pile_file(p1)) == [PileDoc(1, "t1", "Github"), PileDoc(2, "t2", "unknown")]
    p2 = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["t1"], "source": ["Books3"]}), p2)
    assert list(iter_pile_file(p2)) == [PileDoc(1, "t1", "Books3")]
    p3 = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["t1"], "meta": ['{"pile_set_name": "FreeLaw"}']}), p3)
    assert list(iter_pile_file(p3)) == [PileDoc(1, "t1", "FreeLaw")]
    p4 = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": ["t1"]}), p4)
    assert list(iter_pile_file(p4)) == [PileDoc(1, "t1", "unknown")]


def test_parquet_many_batches_row_numbers(tmp_path: Path) -> None:
    texts = [f"row {i}" if i % 500 else None for i in range(1, 3001)]
    p = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": texts}), p, row_group_size=700)
    out = list(iter_pile_file(p))
    assert len(out) == 3000
    assert [b.line for b in _bad(out)] == [500, 1000, 1500, 2000, 2500, 3000]
    assert all(d.text == f"row {d.line}" for d in _docs(out))


def test_parquet_without_text_column(tmp_path: Path) -> None:
    p = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"content": ["x"], "meta": ["{}"]}), p)
    with pytest.raises(ValueError) as ei:
        list(iter_pile_file(p))
    msg = str(ei.value)
    assert str(p) in msg and "'text'" in msg and "content" in msg and "meta" in msg


def test_parquet_corrupt_file_names_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.parquet"
    p.write_bytes(b"this is not parquet at all")
    with pytest.raises(PileReadError, match="broken.parquet"):
        list(iter_pile_file(p))


# ------------------------------------------------------------------------- quarantine


BAD_CASES: list[tuple[bytes, str]] = [
    (b'{"text": "caf\xff is bad", "meta": {}}', "not valid UTF-8 (byte 0xff at offset 13)"),
    (b'{"text": "abc" "meta": {}}', "invalid JSON: Expecting ',' delimiter (col 16)"),
    (b'{"text": "unterminated', "invalid JSON: Unterminated string starting at (col 10)"),
    (b'{"meta": {"pile_set_name": "Github"}}', "missing field 'text'"),
    (b'{"text": 42}', "field 'text' is int, expected string"),
    (b'{"text": null}', "field 'text' is null, expected string"),
    (b'{"text": ["a"]}', "field 'text' is list, expected string"),
    (b'{"text": ""}', "empty text"),
    (b'{"text": " \\n\\t "}', "empty text (whitespace only)"),
    (b'["text", "x"]', "top-level value is list, expected object"),
    (b'"just a string"', "top-level value is str, expected object"),
    (
        b'{"text": "a\\ud800b"}',
        "field 'text' contains an unpaired surrogate (\\ud800 at character 1)",
    ),
]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_each_bad_kind_quarantined_with_right_line(tmp_path: Path, fmt: str) -> None:
    # Interleave: good line, bad line, blank line, ...; blank lines count for numbering.
    lines: list[bytes] = []
    expected_bad: list[tuple[int, str]] = []
    expected_good: list[int] = []
    for i, (raw, reason) in enumerate(BAD_CASES):
        lines.append(_doc(f"good {i}").encode())
        expected_good.append(len(lines))
        lines.append(raw)
        expected_bad.append((len(lines), reason))
        lines.append(b"   " if i % 2 else b"")
    lines.append(_doc("last good, no newline at end").encode())
    expected_good.append(len(lines))
    data = b"\n".join(lines)
    p = tmp_path / f"bad.{fmt}"
    if fmt.endswith("gz"):
        p.write_bytes(gzip.compress(data))
    elif fmt.endswith("zst"):
        _write_zst(p, [data[:100], data[100:]])
    else:
        p.write_bytes(data)

    out = list(iter_pile_file(p))
    assert [(b.line, b.reason) for b in _bad(out)] == expected_bad
    assert [d.line for d in _docs(out)] == expected_good
    assert [d.text for d in _docs(out)][:3] == ["good 0", "good 1", "good 2"]
    assert [x.line for x in out] == sorted(x.line for x in out)  # file order
    assert count_lines(p) == len(lines)


def test_bad_line_raw_is_truncated_and_backslash_escaped(tmp_path: Path) -> None:
    long_bad = b'{"text": "\xfe' + b"y" * 1000 + b'"}'
    p = tmp_path / "raw.jsonl"
    p.write_bytes(long_bad + b"\n")
    (bad,) = list(iter_pile_file(p))
    assert isinstance(bad, BadLine)
    assert bad.reason == "not valid UTF-8 (byte 0xfe at offset 10)"
    assert len(bad.raw) == 200
    assert bad.raw.startswith('{"text": "\\xfeyyy')


def test_bom_and_crlf(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + b"\r\n".join(line.encode() for line in GOOD) + b"\r\n"
    for name, payload in [
        ("crlf.jsonl", data),
        ("crlf.jsonl.gz", gzip.compress(data)),
    ]:
        p = tmp_path / name
        p.write_bytes(payload)
        _check_good(list(iter_pile_file(p)))
    p = _write_zst(tmp_path / "crlf.jsonl.zst", [data[:3], data[3:50], data[50:]])
    _check_good(list(iter_pile_file(p)))


def test_bom_only_on_first_line_and_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf\r\n\n" + GOOD[0].encode() + b"\n\xef\xbb\xbf" + GOOD[1].encode())
    out = list(iter_pile_file(p))
    assert isinstance(out[0], PileDoc) and out[0].line == 3
    assert isinstance(out[1], BadLine) and out[1].line == 4
    assert out[1].reason.startswith("invalid JSON: Unexpected UTF-8 BOM")


def test_meta_variants(tmp_path: Path) -> None:
    rows = [
        {"text": "a"},
        {"text": "b", "meta": None},
        {"text": "c", "meta": {"other": 1}},
        {"text": "d", "meta": {"pile_set_name": 7}},
        {"text": "e", "meta": "Github"},
        {"text": "f", "meta": {"pile_set_name": "Enron Emails"}, "extra": [1, 2]},
    ]
    p = tmp_path / "meta.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    out = list(iter_pile_file(p))
    assert [(d.text, d.source) for d in _docs(out)] == [
        ("a", "unknown"),
        ("b", "unknown"),
        ("c", "unknown"),
        ("d", "unknown"),
        ("e", "unknown"),
        ("f", "Enron Emails"),
    ]


def test_unicode_text_roundtrip(tmp_path: Path) -> None:
    text = "naïve café — 東京 \u2028 line-separator stays inside the text 🎉"
    p = tmp_path / "u.jsonl.zst"
    _write_zst(p, [(json.dumps({"text": text}, ensure_ascii=False) + "\n").encode()])
    assert list(iter_pile_file(p)) == [PileDoc(1, text, "unknown")]


# ------------------------------------------------------------------------- broken streams


def test_truncated_zst_names_file_and_last_line(tmp_path: Path) -> None:
    lines = [_doc(f"doc {i} " + "z" * 50) for i in range(400)]
    data = ("\n".join(lines) + "\n").encode()
    full = _write_zst(tmp_path / "full.jsonl.zst", [data[:9000], data[9000:]])
    blob = full.read_bytes()
    p = tmp_path / "trunc.jsonl.zst"
    p.write_bytes(blob[: len(blob) - 40])  # cut inside the second (last) frame
    seen: list[PileDoc | BadLine] = []
    with pytest.raises(PileReadError) as ei:
        for item in iter_pile_file(p):
            seen.append(item)
    err = ei.value
    assert str(p) in str(err)
    assert err.path == p
    assert f"after line {err.last_line}" in str(err)
    assert seen and not _bad(seen)
    assert seen[-1].line == err.last_line  # every complete line before the cut was yielded
    assert data[:9000].count(b"\n") <= err.last_line < 400  # first frame was complete


def test_truncated_zst_in_first_frame(tmp_path: Path) -> None:
    p = _write_zst(tmp_path / "t.zst", [GOOD_BYTES])
    p.write_bytes(p.read_bytes()[:-6])
    with pytest.raises(PileReadError, match=r"t\.zst.*after line \d+"):
        list(iter_pile_file(p))
    with pytest.raises(PileReadError):
        count_lines(p)


def test_corrupt_zst_names_file(tmp_path: Path) -> None:
    lines = [_doc(f"doc {i} " + "q" * 40) for i in range(300)]
    data = ("\n".join(lines) + "\n").encode()
    p = _write_zst(tmp_path / "c.jsonl.zst", [data[:5000], data[5000:]])
    blob = bytearray(p.read_bytes())
    for i in range(len(blob) - 60, len(blob) - 30):
        blob[i] ^= 0x5A
    p.write_bytes(bytes(blob))
    with pytest.raises(PileReadError, match=r"c\.jsonl\.zst: corrupt or truncated zstd stream"):
        list(iter_pile_file(p))


def test_not_zstd_at_all(tmp_path: Path) -> None:
    p = tmp_path / "plain-named.jsonl.zst"
    p.write_bytes(GOOD_BYTES)
    with pytest.raises(PileReadError, match=r"plain-named\.jsonl\.zst.*after line 0"):
        list(iter_pile_file(p))


def test_truncated_gzip_names_file_and_line(tmp_path: Path) -> None:
    lines = [_doc(f"doc {i} {i * 7919 % 10007}") for i in range(2000)]
    blob = gzip.compress(("\n".join(lines) + "\n").encode())
    p = tmp_path / "trunc.jsonl.gz"
    p.write_bytes(blob[: len(blob) // 2])
    seen = []
    with pytest.raises(PileReadError) as ei:
        for item in iter_pile_file(p):
            seen.append(item)
    assert str(p) in str(ei.value) and "gzip" in str(ei.value)
    assert ei.value.last_line == len(seen)  # no bad lines here, so all complete lines yielded


# ------------------------------------------------------------------------- helpers


def test_file_format_and_listing(tmp_path: Path) -> None:
    assert file_format("x/a.JSONL.ZST") == "zstd"
    assert file_format("a.json.gz") == "gzip"
    assert file_format("a.parquet") == "parquet"
    assert file_format("a.jsonl") == "jsonl"
    with pytest.raises(ValueError, match="unsupported"):
        file_format("a.csv")
    with pytest.raises(ValueError, match="unsupported"):
        iter_pile_file(tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError):
        iter_pile_file(tmp_path / "missing.jsonl")

    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ["d/b.jsonl.zst", "d/a.jsonl", "d/sub/c.parquet", "d/notes.txt", "d/.tmp.jsonl"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_pile_files(tmp_path / "d")] == [
        "d/a.jsonl",
        "d/b.jsonl.zst",
        "d/sub/c.parquet",
    ]
    assert list_pile_files(tmp_path / "d/a.jsonl") == [tmp_path / "d/a.jsonl"]


def test_empty_files(tmp_path: Path) -> None:
    for name, payload in [
        ("e.jsonl", b""),
        ("e.jsonl.gz", gzip.compress(b"")),
        ("e.jsonl.zst", b""),
        ("e2.jsonl.zst", zstandard.ZstdCompressor().compress(b"")),
        ("blank.jsonl", b"\n\n  \n"),
    ]:
        p = tmp_path / name
        p.write_bytes(payload)
        assert list(iter_pile_file(p)) == [], name


def test_streams_without_reading_whole_file(tmp_path: Path) -> None:
    # The iterator yields its first document before the rest of a big file is decoded:
    # a truncated tail is only noticed after earlier documents came out.
    lines = [_doc(f"doc {i} " + "w" * 200) for i in range(20_000)]
    data = ("\n".join(lines) + "\n").encode()
    p = _write_zst(tmp_path / "s.jsonl.zst", [data])
    p.write_bytes(p.read_bytes()[:-10])
    it = iter_pile_file(p)
    first = next(it)
    assert first == PileDoc(1, "doc 0 " + "w" * 200, "Pile-CC")
