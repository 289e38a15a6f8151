"""PNG plots written next to run reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def variance_curves(curves: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """Mean posterior variance after each pick, one line per strategy.

    ``curves[strategy]`` is ``[n]`` (already averaged over prompts).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, curve in sorted(curves.items()):
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, linewidth=2)
    ax.set_xlabel("number of selected chunks")
    ax.set_ylabel("mean posterior variance of the prompt")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
