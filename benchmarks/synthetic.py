"""Synthetic embeddings shared by the benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, d]`` float32 unit vectors standing in for text or instruction embeddings.

    100 topics x 10 subtopics with Zipf-like sizes (cosine ~0.5-0.8 within a subtopic),
    and 15% of the rows are near-copies (cos ~0.99) of another one, as in a web corpus such
    as the Pile or a real instruction pool. Near-copies are what makes nearest-neighbour
    retrieval redundant.
    """
    n_topics, n_sub = 100, 10
    topics = rng.standard_normal((n_topics, d))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    sub = topics.repeat(n_sub, 0) + 0.8 * rng.standard_normal((n_topics * n_sub, d)) / np.sqrt(d)
    sub /= np.linalg.norm(sub, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, len(sub) + 1) ** 0.8  # Zipf-like subtopic sizes
    which = rng.choice(len(sub), size=n, p=p / p.sum())
    x = sub[which] + 0.75 * rng.standard_normal((n, d)) / np.sqrt(d)
    dup = rng.random(n) < 0.15
    src = rng.integers(0, n, size=n)
    x[dup] = x[src[dup]] + 0.1 * rng.standard_normal((int(dup.sum()), d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)
