"""PNG plots of a rank run: score distributions, a 2-D map of the pool with each strategy's
picks, and the budget per group.  matplotlib with the Agg backend (no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.reporting.plots import pyplot, save_figure

MAX_POINTS = 5000  # points drawn in the 2-D map (a uniform sample of larger pools)


def score_distributions(scores: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """One histogram per metric (finite values only), in a grid."""
    plt = pyplot()
    keys = [k for k in scores if np.isfinite(scores[k]).any()]
    cols = min(3, max(1, len(keys)))
    rows = max(1, int(np.ceil(len(keys) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), dpi=100,
                             squeeze=False)
    for ax, k in zip(axes.flat, keys, strict=False):
        v = scores[k][np.isfinite(scores[k])]
        ax.hist(v, bins=40, color="#4c72b0", alpha=0.85)
        ax.set_title(f"{k} (n={len(v)}, median {np.median(v):.3g})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def pca_2d(emb: np.ndarray) -> np.ndarray:
    """``[n, 2]`` projection on the top two principal axes (SVD of the centred d x d
    covariance, so memory is O(n) beyond the input)."""
    x = np.asarray(emb, dtype=np.float64)
    mu = x.mean(axis=0)
    cov = (x - mu).T @ (x - mu) / max(len(x) - 1, 1)
    _, vecs = np.linalg.eigh(cov)
    return (x - mu) @ vecs[:, ::-1][:, :2]


def selection_map(emb: np.ndarray, groups: np.ndarray, picks: dict[str, np.ndarray],
                  path: str | Path, title: str, seed: int = 0) -> Path:
    """The pool in 2-D (PCA), coloured by group, one panel per strategy with its picks
    highlighted."""
    plt = pyplot()
    xy = pca_2d(emb)
    n = len(xy)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(n, MAX_POINTS, replace=False)) if n > MAX_POINTS else np.arange(n)
    names = sorted(set(groups.tolist()))
    colours = plt.get_cmap("tab10")
    k = len(picks)
    cols = min(4, max(1, k))
    rows = max(1, int(np.ceil(k / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), dpi=100,
                             squeeze=False)
    for ax, (strategy, idx) in zip(axes.flat, sorted(picks.items()), strict=False):
        for gi, g in enumerate(names):
            m = shown[groups[shown] == g]
            ax.scatter(xy[m, 0], xy[m, 1], s=7, color=colours(gi % 10), alpha=0.45,
                       label=g, linewidths=0)
        ax.scatter(xy[idx, 0], xy[idx, 1], s=22, facecolors="none", edgecolors="black",
                   linewidths=0.8, label="selected")
        ax.set_title(f"{strategy} ({len(idx)})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8,
               markerscale=2, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, rect=(0, 0.05, 1, 1))


def budget_bars(rows: list[dict], path: str | Path, title: str, unit: str) -> Path:
    """Allocated (light) and spent (dark) budget per group, one cluster per strategy."""
    plt = pyplot()
    strategies = sorted({r["strategy"] for r in rows})
    groups = sorted({r["grp"] for r in rows})
    colours = plt.get_cmap("tab10")
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(strategies) + 2), 4.0), dpi=100)
    x = np.arange(len(strategies))
    for gi, g in enumerate(groups):
        alloc = [next((r["allocated"] for r in rows if r["strategy"] == s and r["grp"] == g), 0)
                 for s in strategies]
        spent = [next((r["spent"] for r in rows if r["strategy"] == s and r["grp"] == g), 0)
                 for s in strategies]
        pos = x - 0.4 + width * (gi + 0.5)
        ax.bar(pos, alloc, width * 0.95, color=colours(gi % 10), alpha=0.35)
        ax.bar(pos, spent, width * 0.6, color=colours(gi % 10), label=f"{g} (spent)")
    ax.set_xticks(x)
    ax.set_xticklabels(strategies, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"budget ({unit}); light = allocated")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, path)
