"""Results table (Markdown) and plot of the issue-15 evaluation: eval-ttt runs on a clean
and a redundant sample, read from their ``ttt_documents.jsonl``.

    python benchmarks/redundancy_report.py --run clean=WS/reports/RID1 \
        --run redundant=WS/reports/RID2 --png docs/results/eval_ttt_redundancy.png

Per corpus and strategy: bits per byte minus the base model (paired per document, mean over
a seed's documents, then mean +- std over seeds), SIFT's per-document wins, Adam steps per
prompt, the share of picks that repeat an earlier pick exactly / as a near copy, distinct
texts per prompt, and bits per byte minus base at Adaptive SIFT's number of steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _ms(v: list[float], digits: int = 4) -> str:
    a = np.asarray(v, dtype=float)
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():+.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, help="label=report_dir")
    ap.add_argument("--png", required=True)
    a = ap.parse_args()
    from tasks.reporting.eval_plots import grouped_strategy_points

    groups: dict[str, dict[str, list[float]]] = {}
    equal: dict[str, dict[str, list[float]]] = {}
    bars: dict[str, dict[str, float]] = {}
    lines = ["| corpus | strategy | bpb minus base (paired) | better than nn (docs) | "
             "steps per prompt | dup picks (near / exact) | distinct texts per prompt | "
             "minus base at adaptive-sift's steps | posterior variance after the picks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for spec in a.run:
        label, folder = spec.split("=", 1)
        rows = [json.loads(x) for x in (Path(folder) / "ttt_documents.jsonl")
                .read_text().splitlines()]
        base = {(r["seed"], r["doc"]): r["bpb"] for r in rows if r["strategy"] == "base"}
        nn = {(r["seed"], r["doc"]): r["bpb"] for r in rows if r["strategy"] == "nn"}
        seeds = sorted({r["seed"] for r in rows})
        strategies = [s for s in dict.fromkeys(r["strategy"] for r in rows) if s != "base"]
        groups[label], bars[label], equal[label] = {}, {}, {}
        for s in strategies:
            mine = [r for r in rows if r["strategy"] == s]
            per_seed = [float(np.mean([r["bpb"] - base[(r["seed"], r["doc"])]
                                       for r in mine if r["seed"] == sd])) for sd in seeds]
            eq = [float(np.mean([r["bpb_equal_compute"] - base[(r["seed"], r["doc"])]
                                 for r in mine if r["seed"] == sd])) for sd in seeds] \
                if all("bpb_equal_compute" in r for r in mine) else None
            wins = sum(r["bpb"] < nn[(r["seed"], r["doc"])] for r in mine) if nn else None
            groups[label][s] = per_seed
            if eq is not None:
                equal[label][s] = eq
            bars[label][s] = float(np.mean([r["dup_near"] for r in mine]))
            lines.append(
                f"| {label} | {s} | {_ms(per_seed)} | "
                f"{'' if s == 'nn' or wins is None else f'{wins} of {len(mine)}'} | "
                f"{np.mean([r['steps'] for r in mine]):.1f} | "
                f"{100 * np.mean([r['dup_near'] for r in mine]):.1f} % / "
                f"{100 * np.mean([r['dup_exact'] for r in mine]):.1f} % | "
                f"{np.mean([r['distinct'] for r in mine]):.1f} | "
                f"{'' if eq is None else _ms(eq)} | "
                f"{np.mean([r['final_variance'] for r in mine]):.3f} |")
        lines.append(f"| {label} | (documents: {len(base)}, seeds {seeds}) | | | | | | | |")
    print("\n".join(lines))
    png = grouped_strategy_points(
        groups, bars, a.png, "Test-time fine-tuning on a clean and a redundant sample",
        "bits per byte minus base model (per seed; lower is better)",
        "share of picks duplicating an earlier pick (near or exact)", hollow=equal,
        hollow_label="mean at adaptive-sift's steps (equal compute)")
    print(f"\nplot: {png}")


if __name__ == "__main__":
    main()
