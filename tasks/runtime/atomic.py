"""Atomic, durable file writes: a reader sees the old file or the whole new one, never half.

Every writer in ``tasks/`` goes through here, so they all give the same guarantee: the data
is written to a hidden temporary file in the target's folder (same filesystem, so the move
is a rename), the file is fsynced, :func:`os.replace` moves it over the target, and the
folder is fsynced so the rename itself survives a power cut.  On an error the temporary
file is removed and the target is untouched.

Temporary names are ``.<name>.<pid>.<random>.tmp`` (plus ``suffix`` where a writer needs
the extension, e.g. ``.png`` for matplotlib): unique per writer, hidden, and matched by the
``.*.tmp`` / ``*.tmp*`` globs with which the embed and index drivers sweep what a crashed
run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "replace_durably", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # platforms that cannot open a folder: the rename is all we get
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, path: str | Path) -> None:
    """Move the finished file ``tmp`` over ``path`` (same filesystem): fsync ``tmp``,
    :func:`os.replace`, fsync ``path``'s folder."""
    tmp, path = Path(tmp), Path(path)
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(path.parent, directory=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on a clean exit it replaces
    ``path`` durably (:func:`replace_durably`), on an exception it is removed.

    The folder is created if missing.  ``suffix`` is appended to the temporary name for
    writers that pick the format from the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (``default=str``) plus a newline,
    atomically and durably."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
