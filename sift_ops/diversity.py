"""Diversity-based experimental design on embeddings: k-center greedy and facility location.

* :func:`k_center_greedy` (coreset / farthest-first traversal, Gonzalez 1985): repeatedly add
  the point farthest (Euclidean) from its nearest selected centre.  A 2-approximation of the
  minimum covering radius.  O(budget * n * d) time, O(n) extra memory.
* :func:`facility_location`: greedy maximisation of
  ``f(S) = sum_i w_i * max_{j in S} sim(i, j)`` on a sparse kNN similarity graph (faiss
  ``IndexFlatIP``, exact inner-product neighbours, searched in batches) with lazy greedy (a
  priority queue of stale upper bounds, valid because f is submodular).  Memory
  O(n * knn); the n x n similarity matrix is never formed.

Similarities are inner products of the given embeddings (cosine similarity for the
L2-normalised embeddings this project stores).  Negative similarities are clamped to 0:
an item is never "represented" by an anti-correlated one, which keeps f monotone with
f(empty set) = 0 and gains >= 0.  Only the ``knn`` most similar items of each item i
(itself included) can represent i; the sparsified objective is
``f_knn(S) = sum_i w_i * max(0, max_{j in S and j in kNN(i)} sim(i, j))``, a lower bound of
the dense objective that equals it whenever i's best representative in S is among its
``knn`` nearest neighbours.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch

from sift_ops.tensors import to_tensor as _to_tensor

__all__ = [
    "covering_radius",
    "facility_location",
    "facility_location_objective",
    "k_center_greedy",
    "knn_graph",
]

DEFAULT_KNN = 64
DEFAULT_SEARCH_BATCH = 1024  # x 8192-row faiss tiles x 4 B = 32 MB of distances


def _to_numpy_f32(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


# ----------------------------------------------------------------------------- k-center


def k_center_greedy(
    emb: Any,
    budget: int,
    selected: Any | None = None,
    *,
    return_radii: bool = False,
    first: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Farthest-first traversal (k-center greedy) in Euclidean distance.

    Args:
        emb: ``[n, d]`` embeddings (torch or numpy; computed in float32 on emb's device).
        budget: number of NEW centres to pick (clipped to the number of unselected items).
        selected: optional indices of already-selected items (e.g. the labelled set); they
            count as centres from the start and are never returned.
        return_radii: also return the covering radius after each pick.
        first: the first centre when ``selected`` is empty; default: the item closest to
            the mean embedding (deterministic, and a central item is a useful first label).

    Returns:
        ``order`` LongTensor ``[budget']`` of item indices in pick order, or
        ``(order, radii)`` with ``radii[t] = max_i min_{c in centres after t+1 picks} ||x_i - c||``
        (Euclidean, embedding units; for unit vectors ``sqrt(2 - 2 cos)``) if
        ``return_radii``.  The radii never increase.
    """
    x = _to_tensor(emb)
    if x.ndim != 2:
        raise ValueError(f"emb must be [n, d], got {tuple(x.shape)}")
    x = x.to(torch.float32)
    n = x.shape[0]
    dev = x.device
    sq = torch.linalg.vector_norm(x, dim=1).square()  # [n] squared norms, no n x d temp
    # min_sq[i]: squared distance of i to its nearest centre; -inf marks centres themselves
    # so that they are never picked twice, even when every point is already covered.
    min_sq = torch.full((n,), float("inf"), device=dev)

    def update(c: int) -> None:
        # ||x - c||^2 = |x|^2 + |c|^2 - 2 <x, c>; clamp the round-off below 0
        d2 = (sq + sq[c] - 2.0 * (x @ x[c])).clamp_min_(0.0)
        torch.minimum(min_sq, d2, out=min_sq)
        min_sq[c] = float("-inf")

    sel = []
    if selected is not None:
        sel = [int(i) for i in _to_tensor(selected).reshape(-1).tolist()]
    with torch.no_grad():
        if sel:
            sel_t = torch.as_tensor(sel, device=dev, dtype=torch.long)
            # distances to the initial centres in chunks: memory O(n * chunk), not O(n * |S|)
            chunk = max(1, (1 << 24) // max(1, n))
            for s in range(0, len(sel), chunk):
                cs = sel_t[s : s + chunk]
                d2 = (sq[:, None] + sq[cs][None, :] - 2.0 * (x @ x[cs].T)).clamp_min_(0.0)
                torch.minimum(min_sq, d2.amin(dim=1), out=min_sq)
            min_sq[sel_t] = float("-inf")
        n_left = n - len(set(sel))
        budget = max(0, min(int(budget), n_left))
        order = torch.empty(budget, dtype=torch.long)
        radii = torch.empty(budget, dtype=torch.float32)
        for t in range(budget):
            if t == 0 and not sel:
                if first is None:
                    # argmin ||x - mean||^2 = argmin |x|^2 - 2 <x, mean>: no n x d temporary
                    first = int((sq - 2.0 * (x @ x.mean(dim=0))).argmin())
                c = int(first)
            else:
                c = int(min_sq.argmax())  # farthest from its nearest centre
            update(c)
            order[t] = c
            radii[t] = min_sq.max().clamp_min(0.0).sqrt()  # -inf (all centres) -> 0
    order = order.to(dev)
    if return_radii:
        return order, radii.to(dev)
    return order


def covering_radius(emb: Any, centers: Any) -> float:
    """``max_i min_{c in centers} ||x_i - x_c||`` computed directly (a reference helper)."""
    x = _to_tensor(emb).to(torch.float64)
    c = x[_to_tensor(centers).long()]
    return float(torch.cdist(x, c).amin(dim=1).max())


# ----------------------------------------------------------------------------- kNN graph


#: Above this many items ``method="auto"`` builds the kNN graph with an IVF index: exact
#: search costs O(n^2 d) (1M items: ~800 TFLOP), IVF about O(n * nprobe/nlist * n * d)
#: (1M items, defaults: ~0.8 % of that).
EXACT_GRAPH_MAX_N = 20_000


def knn_graph(
    emb: Any, knn: int = DEFAULT_KNN, *, batch_size: int = DEFAULT_SEARCH_BATCH,
    method: str = "exact", nlist: int | None = None, nprobe: int = 8, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``knn`` inner-product neighbours of every item (itself included) via faiss.

    ``method="exact"``: brute force, as ``IndexFlatIP`` would do it, but with
    ``faiss.knn`` on the caller's array so the n x d data is not copied into an index.
    Cost ``O(n^2 d)`` FLOPs (BLAS).  ``method="ivf"``: spherical faiss k-means into
    ``nlist`` cells (default ``sqrt(n)``); each item's neighbours are searched exactly among
    the items of the ``nprobe`` cells nearest to its own cell, one BLAS block per cell.
    Recall 0.999 at 50k clustered items with the defaults, at ~4 % of the exact cost (see
    benchmarks/README.md).  ``method="auto"``: exact up to :data:`EXACT_GRAPH_MAX_N` items,
    IVF above.  Memory ``O(n * knn)`` plus bounded score tiles (plus one copy of the data
    for IVF).

    Args:
        emb: ``[n, d]`` embeddings (converted to contiguous float32 for faiss).
        knn: neighbours per item (clipped to n).
        batch_size: queries per faiss call; bounds the result buffers.
        method: "exact", "ivf" or "auto".
        nlist, nprobe, seed: IVF cells, cells probed per cell, k-means seed.

    Returns:
        ``(nbr, sim)``: int64 ``[n, knn]`` neighbour ids and float32 ``[n, knn]`` inner
        products, most similar first (IVF pads with id -1 when too few were found).
    """
    x = _to_numpy_f32(emb)
    if x.ndim != 2:
        raise ValueError(f"emb must be [n, d], got {x.shape}")
    if method not in ("exact", "ivf", "auto"):
        raise ValueError(f"unknown kNN graph method {method!r}; use exact, ivf or auto")
    n = x.shape[0]
    k = max(1, min(int(knn), n))
    if method == "ivf" or (method == "auto" and n > EXACT_GRAPH_MAX_N):
        return _ivf_knn_graph(x, k, batch_size, nlist, nprobe, seed)
    nbr = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    # Larger database tiles than faiss's default (1024 rows) amortise the per-tile heap
    # bookkeeping: about 20% faster here at 50k x 384.  Global faiss state: restored after.
    old_bs = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = max(old_bs, 8192)
    try:
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            sim[s:e], nbr[s:e] = faiss.knn(x[s:e], x, k, metric=faiss.METRIC_INNER_PRODUCT)
    finally:
        faiss.cvar.distance_compute_blas_database_bs = old_bs
    return nbr, sim


def _ivf_knn_graph(x: np.ndarray, k: int, batch_size: int, nlist: int | None, nprobe: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-blocked IVF kNN graph: every item's neighbours among the items of the
    ``nprobe`` cells nearest to its own cell.

    The queries are the database itself, so instead of probing per item (faiss
    ``IndexIVFFlat.search``, a non-BLAS scan with per-query bookkeeping) all members of a
    cell share one candidate list: one ``[members, candidates]`` matmul + top-k per cell
    (per row chunk of at most ``batch_size * 8192`` scores).  Measured on 50k x 384
    clustered vectors, 2 threads: about 4x faster than the per-item IVF search at the same
    recall (see benchmarks/README.md).  Cost ``O(n * nprobe/nlist * n * d)`` (times the
    cell-size imbalance); memory: one permuted copy of x plus the ``[n, k]`` outputs.
    """
    n, d = x.shape
    # sqrt(n) cells of ~sqrt(n) items: k-means costs O(39 nlist^2 d), the search
    # O(n^2 d nprobe / nlist); sqrt(n) keeps both small from 10k to 1M items.
    nlist = int(max(1, min(n, nlist or round(np.sqrt(n)))))
    nprobe = max(1, min(int(nprobe), nlist))
    if nlist > 1:
        km = faiss.Kmeans(d, nlist, niter=10, spherical=True, seed=seed,
                          max_points_per_centroid=39, min_points_per_centroid=1)
        km.train(x)  # faiss subsamples 39 * nlist training points (seeded)
        _, cell = km.index.search(x, 1)
        cell = cell[:, 0]
        cent = km.centroids
        _, probes = faiss.knn(cent, cent, nprobe, metric=faiss.METRIC_INNER_PRODUCT)
        own = np.arange(nlist)
        # an item must be able to find itself: its own cell is always probed
        missing = ~(probes == own[:, None]).any(axis=1)
        probes[missing, -1] = own[missing]
    else:
        cell = np.zeros(n, dtype=np.int64)
        probes = np.zeros((1, 1), dtype=np.int64)
    order = np.argsort(cell, kind="stable")
    bounds = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(cell, minlength=nlist), out=bounds[1:])
    xs = torch.from_numpy(x[order])  # cell-contiguous copy: members are one slice
    nbr = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), np.finfo(np.float32).min, dtype=np.float32)  # faiss's padding
    max_scores = batch_size * 8192
    with torch.no_grad():
        for c in range(nlist):
            s, e = int(bounds[c]), int(bounds[c + 1])
            if e == s:
                continue
            cand = np.concatenate([np.arange(bounds[p], bounds[p + 1]) for p in probes[c]])
            kk = min(k, len(cand))
            db_t = xs[torch.from_numpy(cand)].T.contiguous()  # [d, candidates]
            step = max(1, max_scores // len(cand))
            for r in range(s, e, step):
                q = min(e, r + step)
                top, pos = torch.topk(xs[r:q] @ db_t, kk, dim=1)
                rows = order[r:q]
                sim[rows, :kk] = top.numpy()
                nbr[rows, :kk] = order[cand[pos.numpy()]]
    return nbr, sim


def _check_weights(weights: Any | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(
        weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights,
        dtype=np.float64,
    ).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights must have length n = {n}, got {w.shape[0]}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    return w


# ----------------------------------------------------------------------------- facility location


def facility_location(
    emb: Any,
    budget: int,
    knn: int = DEFAULT_KNN,
    weights: Any | None = None,
    *,
    selected: Any | None = None,
    graph: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = DEFAULT_SEARCH_BATCH,
    graph_method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lazy-greedy facility location on a sparse kNN similarity graph.

    Maximises ``f(S) = sum_i w_i * max(0, max_{j in S, j in kNN(i)} <x_i, x_j>)``.

    Args:
        emb: ``[n, d]`` embeddings (ignored apart from n when ``graph`` is given).
        budget: number of new items to pick (clipped to the number of unselected items).
        knn: neighbours per item in the similarity graph (memory ``n * knn * 20`` bytes).
        weights: optional ``[n]`` non-negative importance ``w_i`` of being represented
            (e.g. an uncertainty score, for uncertainty-weighted facility location).
        selected: optional indices already in S (counted as covering, never returned).
        graph: optional precomputed ``knn_graph(emb, knn)`` to reuse across calls.
        batch_size: faiss search batch when building the graph.
        graph_method: how the graph is built when not given (see :func:`knn_graph`):
            "auto" (default: exact up to :data:`EXACT_GRAPH_MAX_N` items, IVF above),
            "exact" or "ivf".

    Returns:
        ``(order, gains)``: LongTensor ``[budget']`` of item indices in pick order and
        float64 ``[budget']`` marginal gains ``f(S + j) - f(S)`` (similarity units times
        weight units), non-increasing.  ``gains.sum()`` is ``f`` of the picks (plus
        nothing for ``selected``).  Ties go to the lower index.
    """
    if graph is None:
        nbr, sim = knn_graph(emb, knn, batch_size=batch_size, method=graph_method)
    else:
        nbr, sim = graph
    nbr = np.asarray(nbr)
    n, k = nbr.shape
    w = _check_weights(weights, n)

    # Value of "j represents i" = w_i * max(0, sim(i, j)).  Transpose to CSC: for a
    # candidate j, all (i, value) it could represent, so a gain is one contiguous slice.
    # int32 / float32 storage: n * knn * 8 bytes (+ the int64 sort permutation, freed).
    col = nbr.reshape(-1)
    keep = col >= 0  # faiss pads with -1 when fewer than knn items exist
    # Stable counting of columns: torch's int32 stable sort (radix) is ~4x faster here than
    # numpy's argsort on 3.2M entries.  Padding goes last (key n) and is cut off.
    key = torch.from_numpy(np.where(keep, col, n).astype(np.int32 if n < 2**31 - 1 else np.int64))
    perm = torch.sort(key, stable=True).indices[: int(keep.sum())].numpy()
    rows_of = (perm // k).astype(np.int32)
    vals_of = np.maximum(np.asarray(sim, dtype=np.float32).reshape(-1)[perm], 0.0)
    if weights is not None:
        vals_of = (vals_of * w[rows_of]).astype(np.float32)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(col[keep], minlength=n), out=ptr[1:])
    del perm, keep, key
    order, gains = _lazy_greedy(ptr, rows_of, vals_of, nbr, budget, selected)
    return torch.from_numpy(order), torch.from_numpy(gains)


def _segment_gains(
    cand: np.ndarray, ptr: np.ndarray, rows_of: np.ndarray, vals_of: np.ndarray, cur: np.ndarray
) -> np.ndarray:
    """Exact marginal gains of the candidates ``cand`` in one vectorised pass."""
    start = ptr[cand]
    lens = ptr[cand + 1] - start
    out = np.zeros(len(cand))
    nz = lens > 0
    if not nz.all():
        start, lens = start[nz], lens[nz]
    if len(lens) == 0:
        return out
    offs = np.cumsum(lens) - lens
    # positions start[s] + (0 .. len[s]-1) of every segment, without a Python loop
    pos = np.arange(int(offs[-1] + lens[-1])) + np.repeat(start - offs, lens)
    contrib = vals_of[pos] - cur[rows_of[pos]]
    np.maximum(contrib, 0.0, out=contrib)
    out[nz] = np.add.reduceat(contrib, offs)
    return out


def _lazy_greedy(
    ptr: np.ndarray,
    rows_of: np.ndarray,
    vals_of: np.ndarray,
    nbr: np.ndarray,
    budget: int,
    selected: Any | None,
    batch: int = 32,
    pool_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy with targeted invalidation and batched re-evaluation (exact greedy).

    ``ub[j]`` is an upper bound of j's marginal gain (a stale gain is one, by
    submodularity) and ``exact[j]`` says it is the current gain.  Picking j only changes
    ``cur[i]`` for the items i that j represents better than before, and only candidates
    in kNN(i) of those i can lose gain, so only they are marked stale (a few hundred of
    n; the classic lazy greedy marks all n stale after every pick).
    Instead of a Python heap, a pool of the ``pool_size`` largest bounds is kept, with
    ``tau`` = the largest bound outside it: bounds only decrease, so while the pool's best
    bound is >= tau the argmax lies in the pool.  The ``batch`` largest stale bounds of the
    pool are re-evaluated together (one vectorised pass) and the pool's best bound is
    picked once it is exact.  Ties go to the lower index (the pool is sorted by index).
    """
    n = nbr.shape[0]
    cur = np.zeros(n, dtype=np.float64)  # w_i * current best similarity of i to S
    ub = np.empty(n, dtype=np.float64)
    if selected is not None:
        sel = np.unique(np.asarray(_to_tensor(selected).reshape(-1).cpu().numpy(), np.int64))
        for j in sel:
            s, e = ptr[j], ptr[j + 1]
            np.maximum.at(cur, rows_of[s:e], vals_of[s:e])
    else:
        sel = np.zeros(0, dtype=np.int64)
    ub[:] = _segment_gains(np.arange(n), ptr, rows_of, vals_of, cur)
    ub[sel] = -np.inf
    # exact has a spare last slot: nbr == -1 (padding) then marks that slot, harmlessly
    exact = np.ones(n + 1, dtype=bool)

    budget = max(0, min(int(budget), n - len(sel)))
    order = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    P = min(n, max(pool_size, 2 * batch))

    def refill() -> tuple[np.ndarray, float]:
        if P >= n:
            return np.arange(n), -np.inf
        part = np.argpartition(-ub, P)
        return np.sort(part[:P]), float(ub[part[P]])  # part[P]: largest bound outside

    pool, tau = refill()
    t = 0
    while t < budget:
        pu = ub[pool]
        k = int(np.argmax(pu))  # first maximum = lowest index (pool is sorted)
        top = pu[k]
        if top < tau:
            pool, tau = refill()  # every pool bound fell below an outside bound
            continue
        j = int(pool[k])
        if exact[j]:
            # exact, and >= every other bound in and outside the pool: the greedy argmax
            s, e = ptr[j], ptr[j + 1]
            r = rows_of[s:e]
            v = vals_of[s:e]
            better = v > cur[r]
            r = r[better]
            cur[r] = v[better]
            exact[nbr[r].reshape(-1)] = False  # only these candidates' gains changed
            ub[j] = -np.inf
            order[t] = j
            gains[t] = top
            t += 1
            continue
        # re-evaluate the `batch` largest bounds of the pool that are stale
        if len(pool) > batch:
            idx = np.argpartition(-pu, batch - 1)[:batch]
        else:
            idx = np.arange(len(pool))
        cand = pool[idx]
        cand = cand[~exact[cand] & (ub[cand] > -np.inf)]
        ub[cand] = _segment_gains(cand, ptr, rows_of, vals_of, cur)
        exact[cand] = True
    return order, gains


def facility_location_objective(
    graph: tuple[np.ndarray, np.ndarray],
    items: Any,
    weights: Any | None = None,
) -> float:
    """``f_knn(items)`` on a ``knn_graph`` (the objective :func:`facility_location` maximises)."""
    nbr, sim = graph
    n = nbr.shape[0]
    w = _check_weights(weights, n)
    in_s = np.zeros(n, dtype=bool)
    in_s[np.asarray(_to_tensor(items).reshape(-1).cpu().numpy(), dtype=np.int64)] = True
    nb = np.asarray(nbr)
    hit = in_s[np.where(nb >= 0, nb, 0)] & (nb >= 0)
    best = np.where(hit, np.maximum(np.asarray(sim, dtype=np.float64), 0.0), 0.0).max(axis=1)
    return float((w * best).sum())
