"""PNG plots written next to run reports, and the figure set-up and saving that every plot
module of ``tasks/`` shares (rank_plots, eval_plots, the index build's recall plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.runtime.atomic import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, suptitle: str | None = None, *,
                rect: tuple[float, float, float, float] | None = None,
                dpi: float | None = None) -> Path:
    """Lay out ``fig`` (``tight_layout``, within ``rect`` if given), write it to ``path``
    and close it; the written path.

    ``suptitle`` (fontsize 10) is set before the layout.  ``dpi`` defaults to the
    figure's own.  The folder is created; the file is written atomically, with the
    target's extension so matplotlib picks the same format.
    """
    if suptitle is not None:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=rect)
    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi="figure" if dpi is None else dpi)
    finally:
        pyplot().close(fig)
    return path


def variance_curves(curves: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """Mean posterior variance after each pick, one line per strategy.

    ``curves[strategy]`` is ``[n]`` (already averaged over prompts).
    """
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0), dpi=110)
    for name, curve in sorted(curves.items()):
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, linewidth=2)
    ax.set_xlabel("number of selected chunks")
    ax.set_ylabel("mean posterior variance of the prompt")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
