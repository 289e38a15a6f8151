"""Measure NN-F's duplicate threshold on a redundant sample: cosine similarity of candidate
pairs that are copies of each other vs pairs of distinct texts.

For every held-out prompt of the sample, the K nearest chunks (exact inner product over
the corpus's embedding shards) are taken, as `select` would retrieve them; every pair of
candidates is labelled by its texts: ``exact`` (identical), ``near`` (word 3-gram Jaccard
>= tasks.evaluation.evaluate.NEAR_DUP_JACCARD, i.e. a lightly edited copy or an overlapping chunk of
one) or ``distinct``. Prints one JSON line per threshold: the share of copy pairs a filter
at that threshold catches and the share of distinct pairs it wrongly drops.

    python benchmarks/dup_threshold.py --workspace WS --name r03 --queries Q.jsonl
"""

from __future__ import annotations

import json

import numpy as np
from exact_candidates import corpus_options, exact_candidates


def main() -> None:
    a = corpus_options().parse_args()

    from tasks.evaluation.evaluate import NEAR_DUP_JACCARD, _shingles

    cand = exact_candidates(a.workspace, a.name, a.queries, a.k, columns=("text", "embedding"))
    texts, emb, top = cand.table.column("text").to_pylist(), cand.emb, cand.top
    sims: dict[str, list[float]] = {"exact": [], "near": [], "distinct": []}
    for row in top:
        c = emb[row]
        s = c @ c.T
        iu = np.triu_indices(len(row), 1)
        sh = [_shingles(texts[i]) for i in row]
        for i, j, v in zip(iu[0], iu[1], s[iu], strict=True):
            ti, tj = texts[row[i]], texts[row[j]]
            if ti == tj:
                sims["exact"].append(float(v))
            elif v > 0.7 and len(sh[i] & sh[j]) >= NEAR_DUP_JACCARD * len(sh[i] | sh[j]):
                sims["near"].append(float(v))
            else:  # below 0.7 the texts are never copies here (checked on a sample)
                sims["distinct"].append(float(v))
    arr = {k: np.asarray(v) for k, v in sims.items()}
    print(json.dumps({"pairs": {k: len(v) for k, v in arr.items()},
                      "chunks": len(texts), "prompts": cand.prompts, "k": a.k,
                      "min_sim": {k: round(float(v.min()), 4) for k, v in arr.items() if len(v)},
                      "quantiles_near": np.quantile(arr["near"], [0.01, 0.05, 0.5]).round(4)
                      .tolist() if len(arr["near"]) else None,
                      "max_distinct": round(float(arr["distinct"].max()), 4)}))
    for thr in (0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99):
        print(json.dumps({
            "threshold": thr,
            "exact_caught": round(float((arr["exact"] >= thr).mean()), 4)
            if len(arr["exact"]) else None,
            "near_caught": round(float((arr["near"] >= thr).mean()), 4)
            if len(arr["near"]) else None,
            "distinct_dropped": round(float((arr["distinct"] >= thr).mean()), 6),
            "distinct_pairs_dropped": int((arr["distinct"] >= thr).sum()),
        }))


if __name__ == "__main__":
    main()
