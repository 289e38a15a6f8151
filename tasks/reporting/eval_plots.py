"""PNG plots of the evaluations (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tasks.reporting.plots import pyplot, save_figure


def strategy_points(per_seed: dict[str, Sequence[float]], path: str | Path, title: str,
                    ylabel: str, reference: str | None = "base") -> Path:
    """One column per strategy: each seed's value as a dot, mean as a bar, +-1 std whiskers.

    ``per_seed[strategy]`` holds one value per seed (e.g. mean bits per byte over that
    seed's documents). A dashed line marks the ``reference`` strategy's mean.
    """
    plt = pyplot()
    names = list(per_seed)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    means = [float(np.mean(per_seed[s])) for s in names]
    stds = [float(np.std(per_seed[s], ddof=1)) if len(per_seed[s]) > 1 else 0.0
            for s in names]
    x = np.arange(len(names))
    ax.errorbar(x, means, yerr=stds, fmt="o", color="black", capsize=8, markersize=8,
                label="mean +- 1 std over seeds", zorder=3)
    for i, s in enumerate(names):
        vals = np.asarray(per_seed[s], dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.scatter(i + jitter, vals, alpha=0.55, s=26, color=f"C{i}", zorder=2,
                   label="one seed" if i == 0 else None)
    if reference in per_seed:
        ax.axhline(float(np.mean(per_seed[reference])), ls="--", color="grey", lw=1,
                   label=f"{reference} mean")
    lo = min(min(per_seed[s]) for s in names)
    hi = max(max(per_seed[s]) for s in names)
    pad = 0.15 * (hi - lo or abs(hi) * 0.05 or 0.01)
    ax.set_ylim(lo - pad, hi + pad)  # the differences, not the distance from zero, matter
    ax.set_xticks(x, names)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def budget_curves(curves: dict[str, dict[float, Sequence[float]]], path: str | Path,
                  title: str, ylabel: str, reference: float | None = None,
                  base: float | None = None,
                  panels: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Loss vs budget (percent of the pool, log x axis), one line per strategy with a
    +-1 std band over seeds; dashed: random at 100 %; dotted: the base model.

    ``curves[strategy][budget fraction]`` holds one value per seed. ``panels`` (panel
    title -> strategies) splits the strategies over side-by-side axes sharing the y axis
    (e.g. diversity | uncertainty, each with random), so ten lines are not drawn on top
    of each other; a strategy keeps its colour in every panel. Default: one untitled
    panel with every strategy.
    """
    plt = pyplot()
    names = list(curves)
    groups = {t: list(g) for t, g in panels.items()} if panels else {"": names}
    colour = {s: f"C{i % 10}" for i, s in enumerate(names)}
    fig, axes = plt.subplots(1, len(groups), figsize=(6.8 * len(groups), 4.6), dpi=110,
                             sharey=True, squeeze=False)
    ticks = sorted({x * 100 for c in curves.values() for x in c})
    for ax, (panel, group) in zip(axes[0], groups.items(), strict=True):
        for name in group:
            by_budget = curves[name]
            b = sorted(by_budget)
            m = np.array([np.mean(by_budget[x]) for x in b])
            s = np.array([np.std(by_budget[x], ddof=1) if len(by_budget[x]) > 1 else 0.0
                          for x in b])
            pct = np.array(b) * 100
            ax.plot(pct, m, marker="o", label=name, color=colour[name], lw=2)
            ax.fill_between(pct, m - s, m + s, color=colour[name], alpha=0.12)
        if reference is not None:
            ax.axhline(reference, ls="--", color="black", lw=1, label="random at 100 %")
        if base is not None:
            ax.axhline(base, ls=":", color="grey", lw=1, label="base model (no fine-tuning)")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("annotation budget (share of the selection pool)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if panel:
            ax.set_title(panel, fontsize=9)
    axes[0][0].set_ylabel(ylabel)
    return save_figure(fig, path, suptitle=title)


def grouped_strategy_points(groups: Mapping[str, Mapping[str, Sequence[float]]],
                            bars: Mapping[str, Mapping[str, float]], path: str | Path,
                            title: str, ylabel: str, bar_label: str,
                            hollow: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                            hollow_label: str = "") -> Path:
    """Two panels sharing the strategies' x axis, one colour per group (e.g. corpus).

    Left: ``groups[group][strategy]`` per-seed values as dots with mean +- 1 std (e.g.
    bits per byte minus the base model; a line at 0). Right: ``bars[group][strategy]``
    as grouped bars (e.g. the share of picks that duplicate an earlier pick).
    ``hollow[group][strategy]`` adds hollow diamonds (mean over seeds) in the left panel,
    e.g. the value at equal compute.
    """
    plt = pyplot()
    gnames = list(groups)
    snames = list(dict.fromkeys(s for g in groups.values() for s in g))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.6), dpi=110,
                                 gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(snames))
    width = 0.8 / max(len(gnames), 1)
    for gi, g in enumerate(gnames):
        off = (gi - (len(gnames) - 1) / 2) * width
        for si, s in enumerate(snames):
            vals = np.asarray(groups[g].get(s, []), dtype=float)
            if not len(vals):
                continue
            sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            ax.errorbar(si + off, vals.mean(), yerr=sd, fmt="o", color=f"C{gi}",
                        capsize=5, markersize=7, label=g if si == 0 else None, zorder=3)
            ax.scatter(si + off + np.linspace(-0.05, 0.05, len(vals)), vals, s=12,
                       color=f"C{gi}", alpha=0.45, zorder=2)
            hv = (hollow or {}).get(g, {}).get(s)
            if hv is not None and len(hv):
                ax.scatter(si + off + 0.12, float(np.mean(hv)), marker="D", s=36,
                           facecolors="none", edgecolors=f"C{gi}", zorder=3,
                           label=hollow_label if (si, gi) == (0, 0) and hollow_label
                           else None)
        bx.bar(x + off, [bars.get(g, {}).get(s, np.nan) for s in snames], width,
               color=f"C{gi}", label=g)
    ax.axhline(0.0, ls="--", color="grey", lw=1)
    ax.set_xticks(x, snames, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    bx.set_xticks(x, snames, fontsize=8)
    bx.set_ylabel(bar_label)
    bx.grid(axis="y", alpha=0.3)
    bx.legend(fontsize=8)
    return save_figure(fig, path, suptitle=title)
