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


class ClusteredStream:
    """A corpus of clustered unit vectors generated chunk by chunk (numpy only): row ``i``
    depends only on ``seed`` and ``i // chunk_rows``, so a 1M corpus is the prefix of the
    3M and 10M ones and no more than one chunk is ever in memory.

    Model (text embeddings cluster by topic and vary inside a topic along few directions):

    * ``n_topics`` (1,024) topics with Zipf-like sizes (``p_t ~ 1/(t + 10)^zipf``,
      ``zipf`` = 0.9: the largest topic holds ~2.6 % of the rows, the smallest ~0.03 %);
    * each topic: a random unit centre ``c_t`` and an orthonormal basis ``U_t [d, rank]``
      (``rank`` = 24) of its own variation, with decaying spread ``s_j ~ j^-1/2``
      scaled so that ``E|U_t (s * z)|^2 = spread`` (0.8);
    * a row is ``c_t + U_t (s * z) + e`` with isotropic noise ``E|e|^2 = noise`` (0.1),
      L2-normalised: two rows of one topic have cosine ~0.5, of different topics ~0;
    * ``dup`` (5 %) of the rows are near-copies (cosine ~0.999) of another row of the
      same chunk (noise of norm ``dup_noise`` = 0.05 before normalising).

    Queries (:meth:`queries`) come from the same topics and model on a separate random
    stream (no near-copies of corpus rows), so they are held out from the corpus.
    """

    def __init__(self, d: int = 384, seed: int = 0, *, n_topics: int = 1024, rank: int = 24,
                 zipf: float = 0.9, spread: float = 0.8, noise: float = 0.1,
                 dup: float = 0.05, dup_noise: float = 0.05, chunk_rows: int = 30_000
                 ) -> None:
        self.d, self.seed, self.rank, self.chunk_rows = d, seed, rank, chunk_rows
        self.dup, self.dup_noise, self.noise = dup, dup_noise, noise
        rng = np.random.default_rng([seed, 0])
        centres = rng.standard_normal((n_topics, d))
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)
                        ).astype(np.float32)
        basis, _ = np.linalg.qr(rng.standard_normal((n_topics, d, rank)))
        self.basis = basis.astype(np.float32)  # [T, d, rank], orthonormal columns
        s = 1.0 / np.sqrt(np.arange(1, rank + 1))
        self.scale = (s * np.sqrt(spread / (s ** 2).sum())).astype(np.float32)
        p = 1.0 / (np.arange(n_topics) + 10.0) ** zipf
        self.p = p / p.sum()

    def _rows(self, n: int, rng: np.random.Generator, dups: bool) -> np.ndarray:
        topic = rng.choice(len(self.p), size=n, p=self.p)
        z = rng.standard_normal((n, self.rank), dtype=np.float32) * self.scale
        x = self.centres[topic] + (np.sqrt(self.noise / self.d) *
                                   rng.standard_normal((n, self.d), dtype=np.float32))
        order = np.argsort(topic, kind="stable")
        ts = topic[order]
        cuts = np.flatnonzero(np.diff(ts)) + 1
        for grp in np.split(order, cuts):
            x[grp] += z[grp] @ self.basis[topic[grp[0]]].T
        if dups and self.dup > 0:
            is_dup = rng.random(n) < self.dup
            src = rng.integers(0, n, size=n)
            m = int(is_dup.sum())
            x[is_dup] = x[src[is_dup]] + (self.dup_noise / np.sqrt(self.d)) * \
                rng.standard_normal((m, self.d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32, copy=False)

    def chunk(self, c: int) -> np.ndarray:
        """Rows ``c * chunk_rows .. (c + 1) * chunk_rows - 1``."""
        return self._rows(self.chunk_rows, np.random.default_rng([self.seed, 1, c]),
                          dups=True)

    def iter_chunks(self, n: int):
        """``(x [m, d] float32, first_row)`` for rows ``0 .. n-1`` (a last partial chunk
        is the prefix of the full one: every corpus is a prefix of a larger one)."""
        for c, start in enumerate(range(0, n, self.chunk_rows)):
            yield self.chunk(c)[: n - start], start

    def queries(self, n: int) -> np.ndarray:
        """``n`` held-out query vectors (same topics, another random stream)."""
        return self._rows(n, np.random.default_rng([self.seed, 2]), dups=False)
