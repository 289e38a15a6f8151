"""tasks.runtime.atomic: whole file or old file, never half; no temporary left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.runtime.atomic import atomic_path, write_bytes_atomic, write_json_atomic


def test_write_creates_folder_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_json_format_is_indented_sorted_with_newline(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"b": 1, "a": Path("x")})
    text = (tmp_path / "m.json").read_text()
    assert text == json.dumps({"a": "x", "b": 1}, indent=2) + "\n"


def test_error_keeps_old_file_and_removes_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".parquet") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".f.parquet.")
        assert tmp.name.endswith(".tmp.parquet")
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet"]


def test_temporary_name_is_swept_by_the_drivers_glob(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "part-00000-00000.parquet") as tmp:
        tmp.write_bytes(b"x")
        # what clean_partial_files (embed) and build_index remove after a crash
        assert list(tmp_path.glob(".*.tmp")) == [tmp]
    assert not list(tmp_path.glob(".*.tmp"))
