"""Inter-process locks on workspace resources (a corpus, a pool, the DuckDB file).

Two jobs started at once against one workspace must not interleave writes to the same
corpus folder, and DuckDB lets only one process open a file read-write. Both are guarded
with ``flock`` on small files under ``<workspace>/.locks``: the kernel drops the lock when
its process dies, so a SIGKILLed run never leaves a stale lock behind. The holder writes
its pid, host and start time into the file so the "busy" message can say who holds it.

Locks are advisory and per host. On a Ray cluster only the driver takes them (workers
never open DuckDB), so one driver host per workspace is the supported set-up.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["WorkspaceBusy", "hold"]


class WorkspaceBusy(RuntimeError):
    """Another process holds a workspace resource this run needs."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('what')}, since "
            f"{info.get('since')})")


@contextmanager
def hold(lock_file: str | Path, what: str, *, shared: bool = False,
         wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``lock_file`` exclusively (or ``shared``) for the ``with`` block.

    ``wait_s=0`` fails at once when the lock is taken (fail fast); a positive value waits
    up to that many seconds (queueing short writes). Raises :class:`WorkspaceBusy` naming
    the holder when the lock cannot be had.
    """
    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + wait_s
    delay = 0.02
    try:
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:.0f} s" if wait_s else ""
                    raise WorkspaceBusy(
                        f"workspace busy: {what} is in use by {_holder(path)}{waited}. "
                        f"Wait for that run to finish (lock file {path})"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        if not shared:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                    "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
