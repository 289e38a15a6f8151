"""The greedy SIFT loop on the CPU, compiled with numba: one prompt's whole path at a time.

:mod:`sift_ops.sift` computes each block's prior Gram matrices with one batched matmul (the
FLOP floor, ``O(K^2 d)`` per prompt) and hands the rest to :func:`greedy_path`.  That rest
is ``O(K n^2 + m K n)`` per prompt, ~2 % of the Gram's FLOPs at K=200, n=50, d=384, but as
torch ops over a block it is ~15 small ops per step, each paying dispatch overhead and
streaming the block's update vectors (block * n * K floats, several MB) through the caches
once per step.  Compiled, one prompt's state (``U`` is n * K floats, 40 KB at n=50) stays in
L1/L2 for its whole path and each step is a few tight loops over K.

The kernel releases the GIL (``nogil``), so :mod:`sift_ops.sift` runs chunks of a block on
several Python threads in parallel, with no OpenMP region per step (an OpenMP barrier per
small op stalled the torch loop whenever another process held a core).

Arithmetic: the per-candidate operations are those of the torch kernel (``gain = sum_t
cov^2 / (k(c,c) + lam)``, ``u = row * rs``, ``scale = u * rs``).  The only fast-math
freedom allowed is ``contract`` (a multiply and an add may fuse into one FMA, as BLAS does);
no sum is reassociated.  So the two kernels differ only in rounding (fused operations, and
the order in which a Gram row's low-rank corrections are summed: BLAS's vs ours), which
changes a pick only on a float near-tie.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["greedy_path"]


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"contract"})
def greedy_path(
    rows: np.ndarray,
    cov: np.ndarray,
    diag_lam: np.ndarray,
    invalid: np.ndarray,
    forced: np.ndarray,
    n: int,
    lam: float,
    min_gain: float,
    picks: np.ndarray,
    red: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered through sift_ops.sift's tests
    """Greedy (or fixed-order) SIFT steps for ``b`` prompts; results written in place.

    Args:
        rows: ``[b, R, K]`` prior Gram rows.  Greedy (``forced`` empty): ``R = K``, the
            whole Gram matrix, row ``c`` read when candidate ``c`` is picked.  Fixed order:
            ``R = n``, row ``i`` is the Gram row of step ``i``'s pick.
        cov: ``[b, m, K]`` covariance of the m targets with the candidates, ``k_0(t, c)``;
            overwritten with the posterior covariance.
        diag_lam: ``[b, K]`` ``k_0(c, c) + lam``; overwritten (never below ``lam``).
        invalid: ``[b, K]`` bool, True = never pick; or ``[0, 0]`` when all are valid.
        forced: ``[b, n]`` int64 pick order (``-1`` = stop); or ``[0, 0]`` for greedy.
        n: steps.
        lam: ridge parameter > 0 (kernel units).
        min_gain: a prompt stops at the first step whose variance reduction is below it
            (``-inf``: never).
        picks: ``[b, n]`` int64 out: the candidate picked at each step, ``-1`` once stopped.
        red: ``[b, n]`` out (dtype of ``cov``): the variance reduction of each step (summed
            over targets); ``-inf`` once stopped.

    Ties go to the lower candidate index, as ``torch.max`` does.
    """
    b, m, K = cov.shape
    use_forced = forced.shape[0] > 0
    has_invalid = invalid.shape[0] > 0
    U = np.empty((max(n - 1, 1), K), dtype=cov.dtype)  # rank-1 update vectors of one prompt
    acc = np.empty(K, dtype=cov.dtype)
    gain = np.empty(K, dtype=cov.dtype)
    cp = np.empty(m, dtype=cov.dtype)
    rsb = np.empty(1, dtype=cov.dtype)  # rounds 1/sqrt to the compute dtype, as torch does
    for p in range(b):
        cv = cov[p]  # [m, K]
        dg = diag_lam[p]  # [K]
        stopped = False
        for i in range(n):
            if stopped:
                picks[p, i] = -1
                red[p, i] = -math.inf
                continue
            # the step's pick and its variance reduction sum_t k(t,c)^2 / (k(c,c) + lam)
            if use_forced:
                c = forced[p, i]
                best = -math.inf
                if c >= 0:
                    s = cv[0, c] * cv[0, c]
                    for t in range(1, m):
                        s += cv[t, c] * cv[t, c]
                    best = s / dg[c]
            else:
                for j in range(K):  # one vectorised pass, then the argmax
                    gain[j] = cv[0, j] * cv[0, j]
                for t in range(1, m):
                    for j in range(K):
                        gain[j] += cv[t, j] * cv[t, j]
                for j in range(K):
                    gain[j] /= dg[j]
                c = -1
                best = -math.inf
                for j in range(K):
                    if has_invalid and invalid[p, j]:
                        continue
                    if gain[j] > best or c < 0:  # first index wins ties
                        best = gain[j]
                        c = j
            if c < 0 or not best >= min_gain:  # nothing valid, below the bar, or NaN
                stopped = True
                picks[p, i] = -1
                red[p, i] = -math.inf
                continue
            picks[p, i] = c
            red[p, i] = best
            if i == n - 1:
                break  # the last pick's update is never read
            # k_i(c*, .) = prior Gram row - sum_{s<i} U[s, c*] U[s, .]
            # (the hot loop: ~2/3 of the kernel's time at n=50.  Four update rows per pass
            # over acc halve its loads and stores; the sums keep the one-row-at-a-time order.)
            acc[:] = 0.0
            s_ = 0
            while s_ + 4 <= i:
                a0, a1, a2, a3 = U[s_, c], U[s_ + 1, c], U[s_ + 2, c], U[s_ + 3, c]
                u0, u1, u2, u3 = U[s_], U[s_ + 1], U[s_ + 2], U[s_ + 3]
                for j in range(K):
                    acc[j] = (((acc[j] + a0 * u0[j]) + a1 * u1[j]) + a2 * u2[j]) + a3 * u3[j]
                s_ += 4
            while s_ < i:
                a0, u0 = U[s_, c], U[s_]
                for j in range(K):
                    acc[j] += a0 * u0[j]
                s_ += 1
            row = rows[p, i if use_forced else c]
            rsb[0] = 1.0 / math.sqrt(dg[c])
            rs = rsb[0]
            for t in range(m):
                cp[t] = cv[t, c]
            # rank-1 (Schur complement) update of the kept state
            ui = U[i]
            for j in range(K):
                u = (row[j] - acc[j]) * rs
                ui[j] = u
                dl = dg[j] - u * u
                # round-off must not push a posterior variance below 0 (diag_lam below lam)
                dg[j] = dl if dl > lam else lam
            for t in range(m):
                ct = cp[t]
                cvt = cv[t]
                for j in range(K):
                    cvt[j] -= ct * (ui[j] * rs)
