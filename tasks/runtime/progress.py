"""Progress bars of the Prefect tasks: tqdm on stderr (stdout carries the verbs' results),
as wide as the terminal, closed when their block ends, also on an error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

__all__ = ["new_bar", "progress_bar"]


def new_bar(desc: str, unit: str = "it", total: int | None = None, **options: Any) -> tqdm:
    """A bar of ``total`` ``unit``s (None: a counter); ``options`` go to tqdm (e.g.
    ``unit_scale``, or an iterable to wrap). The caller closes it."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                **options)


@contextmanager
def progress_bar(desc: str, unit: str = "it", total: int | None = None,
                 **options: Any) -> Iterator[tqdm]:
    """:func:`new_bar` for a ``with`` block, closed when the block ends."""
    bar = new_bar(desc, unit, total, **options)
    try:
        yield bar
    finally:
        bar.close()
