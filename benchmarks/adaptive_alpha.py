"""Steps Adaptive SIFT would take per prompt for several alpha values (no fine-tuning).

Retrieves the K nearest chunks of each held-out prompt exactly (inner product over the
corpus's embedding shards), runs SIFT for N steps and applies the stopping rule
(sift_ops.sift.adaptive_stop). One JSON line per alpha: steps per prompt (mean, min,
quartiles, max) and the uncertainty sigma_N relative to the prior.

    python benchmarks/adaptive_alpha.py --workspace WS --name r03 --queries Q.jsonl --n 20
"""

from __future__ import annotations

import json

import numpy as np
import torch
from exact_candidates import corpus_options, exact_candidates


def main() -> None:
    ap = corpus_options()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--lam", type=float, default=0.01)
    a = ap.parse_args()

    from sift_ops.sift import adaptive_stop, sift_select

    c = exact_candidates(a.workspace, a.name, a.queries, a.k)
    sel = sift_select(torch.from_numpy(c.query_emb), torch.from_numpy(c.emb[c.top]), a.n, a.lam)
    sigma_n = (sel.variances[:, -1] / sel.prior_variance).sqrt()
    print(json.dumps({"prompts": c.prompts, "n": a.n, "k": a.k, "lam": a.lam,
                      "sigma_N_quartiles": np.quantile(sigma_n.numpy(), [0, .25, .5, .75, 1])
                      .round(3).tolist()}))
    for alpha in (0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3):
        used = adaptive_stop(sel, alpha).n_used.numpy()
        print(json.dumps({"alpha": alpha, "mean_steps": round(float(used.mean()), 2),
                          "quartiles": np.quantile(used, [0, .25, .5, .75, 1]).tolist(),
                          "share_stopped_before_n": round(float((used < a.n).mean()), 3)}))


if __name__ == "__main__":
    main()
