"""SIFT test-time data selection and its baselines (nearest neighbour, random).

Model (the SIFT paper; docs/architecture.md, "Methods"): a linear kernel ``k(a, b) = <a, b>`` on
(usually L2-normalised) embeddings and a ridge / Gaussian-process posterior with
noise ``lam``.  After selecting the multiset ``S`` (repeats allowed) the posterior
variance of a target prompt ``x`` is::

    sigma_S^2(x) = k(x, x) - k_S(x)^T (K_SS + lam I)^-1 k_S(x)

SIFT greedily adds the candidate that minimises the (summed over targets)
posterior variance after the addition.  Adding candidate ``c`` to ``S`` is a rank-1
Schur-complement update of the posterior covariance ``k_n``::

    reduction(c)  = sum_t k_n(t, c)^2 / (k_n(c, c) + lam)
    k_{n+1}(a, b) = k_n(a, b) - k_n(a, c) k_n(c, b) / (k_n(c, c) + lam)

Implementation (why it is fast): for a block of queries we compute the prior Gram
matrix of the candidates with one batched matmul, and from then on keep only

* ``diag[c]   = k_n(c, c)``            the candidates' posterior variances  ``[b, K]``
* ``cov[t, c] = k_n(t, c)``            covariance with the targets          ``[b, m, K]``
* ``U[i, c]``                          the i-th rank-1 update vector        ``[b, n, K]``

so that ``k_n(c, c*) = Gram[c*, c] - sum_i U[i, c*] U[i, c]`` is recovered in
``O(K n)`` per step.  The full ``(K+1)^2`` posterior covariance is never rewritten,
which is what made a naive batched version memory-bound.  Total cost per query:
``O(K^2 d)`` for the Gram matmul (the FLOP floor) plus ``O(K n^2 + m K n)`` for
the greedy loop.  There is no Python loop over queries.  On the CPU the greedy loop is
compiled (:mod:`sift_ops.sift_kernel`, numba): each thread takes a share of the block and
walks one prompt's whole path at a time with its state in cache.  On a GPU it is a
Python loop over the ``n`` greedy steps, each step a few torch ops over the whole block
(:func:`_greedy_block`).  Both give the same picks up to float near-ties (tested).

Units: variances are in the units of the kernel (squared embedding norm); for
L2-normalised embeddings the prior variance of one target is 1.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from sift_ops.sift_kernel import greedy_path
from sift_ops.tensors import to_tensor as _to_tensor

__all__ = [
    "DEFAULT_ADAPTIVE_ALPHA",
    "DEFAULT_DUP_THRESHOLD",
    "Selection",
    "adaptive_stop",
    "nn_select",
    "nnf_select",
    "posterior_variance",
    "random_select",
    "sift_select",
]

ArrayLike = Any  # torch.Tensor | np.ndarray; kept loose so numpy callers type-check too

# Queries per block: bounds the working memory (block * K * (K + n) floats, ~25 MB at
# K=200, n=50).  CPU: threads split a block and work through it in sub-blocks of
# _SUB_BLOCK prompts that stay in cache.  GPU: larger blocks fill the device.
DEFAULT_BLOCK_SIZE = 128
DEFAULT_BLOCK_SIZE_CUDA = 2048
#: The CPU runs the greedy steps in the compiled kernel (:mod:`sift_ops.sift_kernel`);
#: "torch" runs the torch kernel there too (the GPU's; tests compare the two on the CPU).
_CPU_KERNEL = "compiled"

#: NN-F skips a candidate whose cosine similarity to an already picked chunk is at least
#: this.  Measured on the redundant sample (R=0.3, all-MiniLM-L6-v2, top-200 candidates of
#: 64 prompts, benchmarks/dup_threshold.py; docs/results.md, "Redundant corpora"): every pair of
#: identical chunks has cosine 1.0; 81 % of lightly edited copy pairs are >= 0.9 (92 % at
#: 0.85); of 1.27M pairs of distinct texts, 0.0115 % are >= 0.9 (0.041 % at 0.85).
DEFAULT_DUP_THRESHOLD = 0.9
#: Adaptive SIFT's compute-performance ratio: a prompt keeps taking steps while
#: ``alpha * n * sigma_n <= 1`` (see :func:`adaptive_stop`).  With K=200, lam=0.01 on the
#: sample's prompts (benchmarks/adaptive_alpha.py) 0.15 stops after 8-16 steps (mean
#: 10.5), about half of N=20; 0.1 stops after 12-20 (mean 17).
DEFAULT_ADAPTIVE_ALPHA = 0.15


class Selection(tuple):
    """Result of a selection: unpacks as ``(indices, variances)``.

    Attributes:
        indices:   LongTensor ``[B, n]``: positions into the K candidates, in pick order.
                   Repeats are possible for SIFT.  ``-1`` marks "no pick" (the query
                   stopped early, or ran out of valid / distinct candidates).
        variances: Tensor ``[B, n]`` (compute dtype): posterior variance of the query
                   (summed over its m targets) after each pick.  After a query stops
                   the last value is repeated.
        n_used:    LongTensor ``[B]``: number of real picks (entries != -1) per query.
        prior_variance: Tensor ``[B]``: variance before any pick, ``sum_t k(t, t)``.

    A 2-tuple subclass rather than a NamedTuple so that ``idx, var = sift_select(...)``
    keeps working while the extra fields stay reachable as attributes.
    """

    indices: torch.Tensor
    variances: torch.Tensor
    n_used: torch.Tensor
    prior_variance: torch.Tensor

    def __new__(
        cls,
        indices: torch.Tensor,
        variances: torch.Tensor,
        n_used: torch.Tensor,
        prior_variance: torch.Tensor,
    ) -> Selection:
        obj = super().__new__(cls, (indices, variances))
        obj.indices = indices
        obj.variances = variances
        obj.n_used = n_used
        obj.prior_variance = prior_variance
        return obj

    def __getnewargs__(self) -> tuple:  # keeps pickling (e.g. Ray object store) working
        return (self.indices, self.variances, self.n_used, self.prior_variance)

    def __repr__(self) -> str:
        return (
            f"Selection(indices={tuple(self.indices.shape)}, "
            f"variances={tuple(self.variances.shape)}, n_used={self.n_used.tolist()[:8]}...)"
        )


# --------------------------------------------------------------------------------------
# input handling


def _prepare(
    queries: ArrayLike,
    candidates: ArrayLike,
    n: int,
    lam: float,
    dtype: torch.dtype | None,
    valid: ArrayLike | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.dtype]:
    """Validate shapes and move everything to the candidates' device and the compute dtype."""
    c = _to_tensor(candidates)
    q = _to_tensor(queries)
    if c.ndim != 3:
        raise ValueError(f"candidates must be [B, K, d], got shape {tuple(c.shape)}")
    if q.ndim == 2:
        q = q.unsqueeze(1)  # [B, d] -> [B, 1, d]: one target per query
    if q.ndim != 3:
        raise ValueError(f"queries must be [B, d] or [B, m, d], got shape {tuple(q.shape)}")
    B, K, d = c.shape
    if q.shape[0] != B or q.shape[2] != d:
        raise ValueError(f"queries {tuple(q.shape)} do not match candidates {tuple(c.shape)}")
    if q.shape[1] < 1:
        raise ValueError("each query needs at least one target (m >= 1)")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a positive finite number, got {lam}")
    # float32 by default (fast, and embeddings are float32 anyway); float64 on request.
    dt = torch.float32 if dtype is None else dtype
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dt}")
    c = c.to(dtype=dt)
    q = q.to(device=c.device, dtype=dt)
    v = None
    if valid is not None:
        v = _to_tensor(valid).to(device=c.device, dtype=torch.bool)
        if tuple(v.shape) != (B, K):
            raise ValueError(f"valid must be [B, K] = {(B, K)}, got {tuple(v.shape)}")
    return q, c, v, dt


# --------------------------------------------------------------------------------------
# the kernel


def _run_block(
    q: torch.Tensor,
    c: torch.Tensor,
    n: int,
    lam: float,
    min_gain: float | None,
    valid: torch.Tensor | None,
    forced: torch.Tensor,
    out_idx: torch.Tensor,
    out_var: torch.Tensor,
    out_used: torch.Tensor,
    out_prior: torch.Tensor,
) -> None:
    """The variance path of a fixed pick order (the NN / random baselines), for one block.

    The same rank-1 updates as :func:`_greedy_block`, with the picks given.  Shapes: q
    ``[b, m, d]``, c ``[b, K, d]``, forced ``[b, n]`` long (-1 = no pick); ``valid`` is
    already applied by the order.  Writes into the ``out_*`` views.
    """
    del valid  # the order never contains an invalid candidate
    b, K, d = c.shape
    m = q.shape[1]
    dev, dt = c.device, c.dtype
    # gram [b, n, K]: row i is k_0(c_i*, .) (only the picks' rows); cov [b, m, K] k_n(t, c);
    # diag_lam [b, K] k_n(c, c) + lam, lam folded in (one op less per step), always >= lam.
    gram, cov, diag_lam = _kernel_inputs(q, c, n, lam, forced)
    var = q.square().sum(dim=(1, 2))  # [b]  sum_t k_n(t, t)
    out_prior.copy_(var)
    U = torch.empty(b, n, K, device=dev, dtype=dt)  # rank-1 update vectors
    active = torch.ones(b, dtype=torch.bool, device=dev)
    n_used = torch.zeros(b, dtype=torch.long, device=dev)
    last_var = var.clone()  # the variance reported for stopped queries
    cov1 = cov[:, 0, :] if m == 1 else None  # a [b, K] view: cheaper ops for one target

    for i in range(n):
        pick = forced[:, i]
        stop = pick < 0
        pick = pick.clamp_min(0)  # a harmless index for rows that do not pick
        row = gram[:, i, :].clone()
        # k_i(c, c*) for all c: prior Gram row minus the low-rank corrections so far.
        if i > 0:
            Ui = U[:, :i, :]
            u_pick = Ui.gather(2, pick.view(b, 1, 1).expand(b, i, 1))  # [b, i, 1]
            row.sub_(torch.bmm(u_pick.transpose(1, 2), Ui).squeeze(1))
        pick2 = pick.view(b, 1)
        denom = diag_lam.gather(1, pick2)  # [b, 1] k(c*,c*) + lam
        if cov1 is not None:
            cov_pick = cov1.gather(1, pick2)  # [b, 1]
        else:
            cov_pick = cov.gather(2, pick.view(b, 1, 1).expand(b, m, 1))  # [b, m, 1]
        reduction = cov_pick.square().sum(dim=tuple(range(1, cov_pick.ndim)))
        reduction = reduction / denom.view(b)
        if min_gain is not None:
            stop = stop | (reduction < min_gain)
        active &= ~stop  # stopping is sticky
        if not bool(active.any()):
            out_idx[:, i:] = -1
            out_var[:, i:] = last_var.unsqueeze(1)
            break

        # Rank-1 (Schur complement) update of the kept state.
        rs = denom.rsqrt()  # [b, 1]
        u = row.mul_(rs)  # k(c, c*) / sqrt(k(c*,c*) + lam)
        U[:, i, :] = u
        scale = u * rs  # k(c, c*) / (k(c*,c*) + lam)
        if cov1 is not None:
            cov1.addcmul_(cov_pick, scale, value=-1.0)
        else:
            cov.addcmul_(cov_pick, scale.unsqueeze(1), value=-1.0)
        # round-off must not push a posterior variance below 0 (i.e. diag_lam below lam)
        diag_lam.addcmul_(u, u, value=-1.0).clamp_min_(lam)
        var.sub_(reduction).clamp_min_(0.0)

        last_var = torch.where(active, var, last_var)
        out_idx[:, i] = torch.where(active, pick, torch.full_like(pick, -1))
        out_var[:, i] = last_var
        n_used += active.long()
    out_used.copy_(n_used)


def _greedy_block(
    q: torch.Tensor,
    c: torch.Tensor,
    n: int,
    lam: float,
    min_gain: float | None,
    valid: torch.Tensor | None,
    out_idx: torch.Tensor,
    out_var: torch.Tensor,
    out_used: torch.Tensor,
    out_prior: torch.Tensor,
) -> None:
    """Greedy SIFT for one block of queries with torch ops (the GPU's loop); writes into
    the ``out_*`` views.

    Shapes: q ``[b, m, d]``, c ``[b, K, d]``, valid ``[b, K]`` bool or None.

    Each step is ~15 ops on ``[b, K]`` tensors, all into preallocated buffers (no
    allocation in the loop).  Stopping (``min_gain``, no valid candidate) is applied
    after the loop: a query's picks never depend on whether it stopped, so cutting its
    path at the first failing step afterwards is exact, and the loop keeps no per-step
    bookkeeping for it.  The variance path is ``prior - cumsum(reductions)`` (float64).
    """
    b, K, d = c.shape
    m = q.shape[1]
    dev, dt = c.device, c.dtype
    # One batched matmul for the whole block: the prior Gram of the candidates (the FLOP
    # floor).  Only single rows of it are read later (it is symmetric, so a row == a
    # column and rows are contiguous); viewed flat so a row gather is one index_select.
    gram, cov0, diag_lam0 = _kernel_inputs(q, c, n, lam, None)  # [b, K, K], [b, m, K], [b, K]
    gram_rows = gram.view(b * K, K)
    # state[:, :m] = k_n(t, c) (covariance with the targets), state[:, m] = k_n(c, c) + lam
    # (lam folded in, always >= lam): one tensor so that a pick's values are one gather.
    state = torch.empty(b, m + 1, K, device=dev, dtype=dt)
    state[:, :m] = cov0
    state[:, m] = diag_lam0
    cov, diag_lam = state[:, :m], state[:, m]
    cov1 = state[:, 0] if m == 1 else None  # [b, K]: cheaper ops for one target
    prior = q.square().sum(dim=(1, 2))  # [b]  sum_t k(t, t)
    out_prior.copy_(prior)

    U = torch.empty(b, n, K, device=dev, dtype=dt)  # rank-1 update vectors
    picks = torch.empty(n, b, device=dev, dtype=torch.long)  # step-major: rows contiguous
    red = torch.empty(n, b, device=dev, dtype=dt)  # best variance reduction per step
    gain = torch.empty(b, K, device=dev, dtype=dt)
    sq = None if m == 1 else torch.empty(b, m, K, device=dev, dtype=dt)
    row = torch.empty(b, 1, K, device=dev, dtype=dt)  # k_i(c*, .) of the step's pick
    row2 = row.view(b, K)
    flat = torch.empty(b, device=dev, dtype=torch.long)
    row_base = torch.arange(b, device=dev) * K
    invalid = None if valid is None else ~valid
    check_stop = min_gain is not None or valid is not None
    steps = n

    for i in range(n):
        # reduction(c) = sum_t k(t,c)^2 / (k(c,c) + lam)
        if cov1 is not None:
            torch.mul(cov1, cov1, out=gain)
        else:
            torch.sum(torch.mul(cov, cov, out=sq), dim=1, out=gain)
        gain.div_(diag_lam)
        if invalid is not None:
            gain.masked_fill_(invalid, float("-inf"))
        torch.max(gain, dim=1, out=(red[i], picks[i]))  # first index wins ties
        if i == n - 1:
            break  # the last pick's update is never read
        if check_stop and i % 8 == 7 and not bool(_alive(red[: i + 1], min_gain).any()):
            steps = i + 1  # every query has stopped: the rest would be discarded
            break
        pick = picks[i]
        # k_i(c*, c) for all c: the prior Gram row minus the low-rank corrections so far
        torch.add(row_base, pick, out=flat)
        torch.index_select(gram_rows, 0, flat, out=row2)
        if i > 0:
            Ui = U[:, :i, :]
            u_pick = Ui.gather(2, pick.view(b, 1, 1).expand(b, i, 1))  # [b, i, 1]
            row.baddbmm_(u_pick.transpose(1, 2), Ui, alpha=-1.0)
        at = state.gather(2, pick.view(b, 1, 1).expand(b, m + 1, 1))  # [b, m+1, 1]
        rs = at[:, m].rsqrt_()  # [b, 1]  1 / sqrt(k(c*,c*) + lam)
        # Rank-1 (Schur complement) update of the kept state.
        u = U[:, i, :]
        torch.mul(row2, rs, out=u)  # k(c, c*) / sqrt(k(c*,c*) + lam)
        # k(c, c*) / (k(c*,c*) + lam), into the free gain buffer.  Formed as u * rs (not
        # k(t, c*) * rs first): the same rounding as before, so the same picks on near-ties.
        scale = torch.mul(u, rs, out=gain)
        if cov1 is not None:
            cov1.addcmul_(at[:, 0], scale, value=-1.0)
        else:
            cov.addcmul_(at[:, :m], scale.unsqueeze(1), value=-1.0)
        # round-off must not push a posterior variance below 0 (diag_lam below lam)
        diag_lam.addcmul_(u, u, value=-1.0).clamp_min_(lam)

    _finish(picks[:steps].t(), red[:steps].t(), prior, min_gain, check_stop, n,
            out_idx, out_var, out_used)


def _finish(
    p: torch.Tensor,
    r: torch.Tensor,
    prior: torch.Tensor,
    min_gain: float | None,
    check_stop: bool,
    n: int,
    out_idx: torch.Tensor,
    out_var: torch.Tensor,
    out_used: torch.Tensor,
) -> None:
    """Write a block's picks, counts and variance path from the picks ``p`` ``[b, s]`` and
    variance reductions ``r`` ``[b, s]`` of its first ``s <= n`` steps.

    A query stops at its first step whose reduction is not finite (nothing valid left) or,
    with ``min_gain``, below it: that pick and every later one become ``-1``."""
    steps = p.shape[1]
    if check_stop:
        keep = _alive_path(r, min_gain)  # [b, steps]  sticky: False from the first failure
        out_used.copy_(keep.sum(dim=1))
        out_idx[:, :steps] = torch.where(keep, p, torch.full_like(p, -1))
        r = torch.where(keep, r, torch.zeros_like(r))  # after a stop the variance stays
    else:
        out_used.fill_(n)
        out_idx[:, :steps] = p
    out_idx[:, steps:] = -1
    # var_i = max(prior - sum_{j<=i} reduction_j, 0); reductions are >= 0, so this equals
    # the step-by-step clamped subtraction (summed in float64 for accuracy).
    path = (prior.double().unsqueeze(1) - r.double().cumsum(dim=1)).clamp_min_(0.0)
    out_var[:, :steps] = path
    out_var[:, steps:] = path[:, -1:] if steps else prior.unsqueeze(1)


def _compiled_block(
    q: torch.Tensor,
    c: torch.Tensor,
    n: int,
    lam: float,
    min_gain: float | None,
    valid: torch.Tensor | None,
    forced: torch.Tensor | None,
    out_idx: torch.Tensor,
    out_var: torch.Tensor,
    out_used: torch.Tensor,
    out_prior: torch.Tensor,
) -> None:
    """Greedy SIFT (``forced`` None) or a fixed pick order's variance path for one block on
    the CPU: Gram rows by batched matmul, steps by :func:`sift_kernel.greedy_path`.

    Same shapes and results as :func:`_greedy_block` / :func:`_run_block`, which start from
    the same :func:`_kernel_inputs` (picks identical up to float near-ties: only rounding
    differs, see :mod:`sift_ops.sift_kernel`).

    Parallelism: the block is split into one contiguous share per torch thread, and each
    share runs on its own Python thread as a pipeline over sub-blocks of
    ``_SUB_BLOCK`` prompts: Gram matmul (one torch thread), target covariances, compiled
    steps (GIL-free).  Each core works through its share alone, with no OpenMP barrier
    between stages (after each multi-threaded op, OpenMP's waiting threads spin on the core
    the next stage needs), and a sub-block's candidates and Gram (~5 + 2.5 MB) are still in
    cache when its covariances and steps read them.
    """
    b = c.shape[0]
    dt = np.float32 if c.dtype == torch.float32 else np.float64
    picks = np.empty((b, n), dtype=np.int64)
    red = np.empty((b, n), dtype=dt)
    mask = _NO_MASK if valid is None else (~valid).contiguous().numpy()
    order = _NO_ORDER if forced is None else forced.contiguous().numpy()
    floor = -math.inf if min_gain is None else float(min_gain)

    def run(share: tuple[int, int]) -> None:
        for s, e in _spans(share[1] - share[0], _SUB_BLOCK, share[0]):
            rows, cov, diag_lam = _kernel_inputs(q[s:e], c[s:e], n, lam,
                                                 None if forced is None else forced[s:e])
            greedy_path(rows.numpy(), cov.numpy(), diag_lam.numpy(),
                        mask[s:e] if mask.shape[0] else mask,
                        order[s:e] if order.shape[0] else order,
                        n, float(lam), floor, picks[s:e], red[s:e])

    shares = _spans(b, -(-b // _workers(b)))
    if len(shares) == 1:
        run(shares[0])
    else:
        # torch's thread count is process-wide: one caller at a time sets and restores it
        # (two interleaved callers could otherwise leave it at 1)
        with _THREADS_LOCK, _torch_threads(1):
            list(_thread_pool(len(shares)).map(run, shares))
    out_prior.copy_(q.square().sum(dim=(1, 2)))  # sum_t k(t, t)
    _finish(torch.from_numpy(picks), torch.from_numpy(red), out_prior, min_gain, True, n,
            out_idx, out_var, out_used)


def _kernel_inputs(
    q: torch.Tensor, c: torch.Tensor, n: int, lam: float, forced: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every loop's inputs (compiled and torch) for prompts ``q`` ``[b, m, d]`` and
    candidates ``c`` ``[b, K, d]``: the Gram rows (all ``[b, K, K]``, or the ``[b, n, K]``
    rows of a fixed order ``forced``), ``k_0(t, c)`` ``[b, m, K]`` and ``k_0(c, c) + lam``
    ``[b, K]``."""
    b, K, d = c.shape
    if forced is None:
        rows = torch.bmm(c, c.transpose(1, 2))  # [b, K, K] the prior Gram (the FLOP floor)
        diag = rows.diagonal(dim1=1, dim2=2)
    else:  # only the picks' n Gram rows are needed (n/K of the Gram FLOPs)
        fpick = forced.clamp_min(0)
        rows = torch.bmm(c.gather(1, fpick.unsqueeze(2).expand(b, n, d)), c.transpose(1, 2))
        diag = c.square().sum(dim=2)
    return rows, _target_cov(q, c).contiguous(), diag + lam


def _target_cov(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``k_0(t, c)`` ``[b, m, K]`` (a transposed view) for ``q`` ``[b, m, d]``, ``c``
    ``[b, K, d]``.  Formed as ``c @ q^T``: with the candidates' rows contiguous along d
    this is a plain matrix-vector product per prompt, ~30 % faster on the CPU than
    ``q @ c^T``.  Every kernel uses it, so they start from the same numbers."""
    return torch.bmm(c, q.transpose(1, 2)).transpose(1, 2)


@contextlib.contextmanager
def _torch_threads(k: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``k`` (process-wide), restored on exit."""
    prev = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


_NO_MASK = np.zeros((0, 0), dtype=np.bool_)
_NO_ORDER = np.zeros((0, 0), dtype=np.int64)
#: prompts per sub-block of a thread's share (see :func:`_compiled_block`)
_SUB_BLOCK = 16
#: prompts per thread below which another thread costs more than it saves
_MIN_PROMPTS_PER_THREAD = 8
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_THREADS_LOCK = threading.Lock()


def _workers(b: int) -> int:
    """Threads for a block of ``b`` prompts: torch's intra-op thread count, so that the
    kernel uses the cores the caller gave torch (Ray actors set it per actor)."""
    return max(1, min(torch.get_num_threads(), b // _MIN_PROMPTS_PER_THREAD))


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of at least ``workers`` threads (grown when asked for more)."""
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE < workers:
        old, _POOL, _POOL_SIZE = _POOL, ThreadPoolExecutor(workers, "sift"), workers
        if old is not None:
            old.shutdown(wait=False)
    return _POOL


def _alive_path(red: torch.Tensor, min_gain: float | None) -> torch.Tensor:
    """``[b, s]`` bool: the query is still taking steps (all reductions so far finite and,
    with ``min_gain``, at least it).  ``red`` is ``[b, s]``."""
    ok = torch.isfinite(red)
    if min_gain is not None:
        ok &= red >= min_gain
    return ok.cumprod(dim=1).bool()


def _alive(red_steps: torch.Tensor, min_gain: float | None) -> torch.Tensor:
    """``[b]`` bool from step-major reductions ``[s, b]``: no step has failed yet."""
    ok = torch.isfinite(red_steps)
    if min_gain is not None:
        ok &= red_steps >= min_gain
    return ok.all(dim=0)


def _select(
    queries: ArrayLike,
    candidates: ArrayLike,
    n: int,
    lam: float,
    min_gain: float | None,
    dtype: torch.dtype | None,
    block_size: int | None,
    valid: ArrayLike | None,
    order_fn: Any,
) -> Selection:
    q, c, v, dt = _prepare(queries, candidates, n, lam, dtype, valid)
    B = c.shape[0]
    dev = c.device
    idx = torch.empty(B, n, dtype=torch.long, device=dev)
    var = torch.empty(B, n, dtype=dt, device=dev)
    used = torch.empty(B, dtype=torch.long, device=dev)
    prior = torch.empty(B, dtype=dt, device=dev)
    if c.shape[1] == 0:  # no candidates at all: nothing to pick, the prior stays
        prior.copy_(q.square().sum(dim=(1, 2)))
        idx.fill_(-1)
        var.copy_(prior.unsqueeze(1).expand(B, n))
        used.zero_()
        return Selection(idx, var, used, prior)
    forced_all = order_fn(q, c, v) if order_fn is not None else None
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE_CUDA if dev.type == "cuda" else DEFAULT_BLOCK_SIZE
    bs = max(1, int(block_size))
    compiled = dev.type == "cpu" and _CPU_KERNEL == "compiled"
    with torch.no_grad():
        for s, e in _spans(B, bs):
            vb = None if v is None else v[s:e]
            if compiled:
                _compiled_block(q[s:e], c[s:e], n, float(lam), min_gain, vb,
                                None if forced_all is None else forced_all[s:e],
                                idx[s:e], var[s:e], used[s:e], prior[s:e])
            elif forced_all is None:
                _greedy_block(q[s:e], c[s:e], n, float(lam), min_gain, vb,
                              idx[s:e], var[s:e], used[s:e], prior[s:e])
            else:
                _run_block(q[s:e], c[s:e], n, float(lam), min_gain, vb, forced_all[s:e],
                           idx[s:e], var[s:e], used[s:e], prior[s:e])
    return Selection(idx, var, used, prior)


def _spans(B: int, block_size: int, start: int = 0) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``block_size`` covering ``start .. start + B``
    (the benchmark times its Gram floor over the same blocks)."""
    end = start + B
    return [(s, min(end, s + block_size)) for s in range(start, end, max(1, block_size))]


# --------------------------------------------------------------------------------------
# public API


def sift_select(
    queries: ArrayLike,
    candidates: ArrayLike,
    n: int,
    lam: float = 0.01,
    *,
    min_gain: float | None = None,
    dtype: torch.dtype | None = None,
    block_size: int | None = None,
    valid: ArrayLike | None = None,
) -> Selection:
    """SIFT: greedily pick ``n`` candidates (with repeats) minimising posterior variance.

    Args:
        queries: ``[B, d]`` (one target prompt per query) or ``[B, m, d]`` (m target
            prompts per query; their posterior variances are summed).  torch or numpy.
        candidates: ``[B, K, d]`` candidate embeddings per query (e.g. the faiss top-K).
        n: number of greedy steps (picks) per query.
        lam: ridge / noise parameter ``lam > 0`` (kernel units).  Small lam makes
            repeats useless (a picked point is already "known"); large lam makes
            repeating the most relevant point worthwhile.
        min_gain: optional stopping rule: a query stops as soon as its best variance
            reduction is ``< min_gain``; later entries are ``-1`` / the last variance.
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        block_size: queries processed together; bounds the working memory to
            ``block_size * K * (K + n + m)`` numbers.  Default 128 on CPU (cache
            friendly), 2048 on CUDA.  Results do not depend on it.
        valid: optional bool ``[B, K]``; False marks padding (e.g. faiss id -1) that
            must never be picked.

    Returns:
        :class:`Selection`, which unpacks as ``(indices, variances)``: indices LongTensor
        ``[B, n]`` into K and variances ``[B, n]`` after each pick, plus ``.n_used`` ``[B]``
        and ``.prior_variance`` ``[B]``.  Device follows ``candidates``.
    """
    return _select(queries, candidates, n, lam, min_gain, dtype, block_size, valid, None)


def nn_select(
    queries: ArrayLike,
    candidates: ArrayLike,
    n: int,
    lam: float = 0.01,
    *,
    min_gain: float | None = None,
    dtype: torch.dtype | None = None,
    block_size: int | None = None,
    valid: ArrayLike | None = None,
) -> Selection:
    """Nearest-neighbour baseline: the ``n`` distinct candidates of highest similarity.

    The score of a candidate is its inner product with the query, summed over the m
    targets (i.e. the mean similarity ranking).  Ties go to the lower index.  Variances
    are the posterior variances after each pick given the picks so far, computed exactly
    as in :func:`sift_select`, so strategies are comparable.  Picks are distinct, so if
    fewer than ``n`` valid candidates exist the rest is ``-1``.  With ``min_gain`` the
    query stops when the next neighbour would reduce the variance by less than that.
    Arguments and return value as :func:`sift_select`.
    """

    def order(q: torch.Tensor, c: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        score = torch.einsum("bmd,bkd->bk", q, c)
        return _top_order(score, v, n)

    return _select(queries, candidates, n, lam, min_gain, dtype, block_size, valid, order)


def random_select(
    queries: ArrayLike,
    candidates: ArrayLike,
    n: int,
    lam: float = 0.01,
    *,
    min_gain: float | None = None,
    dtype: torch.dtype | None = None,
    block_size: int | None = None,
    valid: ArrayLike | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Selection:
    """Random baseline: ``n`` distinct candidates uniformly at random (without replacement).

    Randomness comes from ``generator`` (a CPU ``torch.Generator``) or else ``seed``
    (default 0, so runs are reproducible).  Variances, ``valid``, ``min_gain`` and the
    return value behave as in :func:`nn_select`.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))

    def order(q: torch.Tensor, c: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        # i.i.d. uniform keys + top-n  ==  a uniformly random ordered subset.
        keys = torch.rand(c.shape[0], c.shape[1], generator=generator, dtype=torch.float64)
        return _top_order(keys.to(c.device), v, n)

    return _select(queries, candidates, n, lam, min_gain, dtype, block_size, valid, order)


def nnf_select(
    queries: ArrayLike,
    candidates: ArrayLike,
    n: int,
    lam: float = 0.01,
    *,
    dup_threshold: float = DEFAULT_DUP_THRESHOLD,
    min_gain: float | None = None,
    dtype: torch.dtype | None = None,
    block_size: int | None = None,
    valid: ArrayLike | None = None,
) -> Selection:
    """NN-F: nearest neighbours with near-duplicates filtered (the SIFT paper's stronger
    baseline).

    Walks the candidates in :func:`nn_select`'s order (highest similarity to the query
    first) and skips every candidate whose cosine similarity to an already picked chunk is
    ``>= dup_threshold``.  So no two picks of a query are that similar, and when the filter
    leaves fewer than ``n`` candidates the rest is ``-1``.  ``dup_threshold`` > 1 turns the
    filter off (NN-F == NN).  Variances, ``valid``, ``min_gain`` and the return value as
    :func:`nn_select`.

    Vectorised over queries: one batched Gram matmul of the (re-normalised) candidates per
    block, then ``n`` masked argmax steps over ``[b, K]`` tensors, each removing the pick
    and every candidate too similar to it.  ``O(K^2 d + n K)`` per query.
    """
    if not math.isfinite(dup_threshold):
        raise ValueError(f"dup_threshold must be finite, got {dup_threshold}")

    def order(q: torch.Tensor, c: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        return _filtered_order(q, c, v, n, float(dup_threshold))

    return _select(queries, candidates, n, lam, min_gain, dtype, block_size, valid, order)


def _filtered_order(q: torch.Tensor, c: torch.Tensor, v: torch.Tensor | None, n: int,
                    threshold: float, block: int = 256) -> torch.Tensor:
    """NN-F pick order ``[B, n]`` (``-1`` = none); see :func:`nnf_select`."""
    B, K, _ = c.shape
    out = torch.full((B, n), -1, dtype=torch.long, device=c.device)
    score_all = torch.einsum("bmd,bkd->bk", q, c).to(torch.float64)
    for s in range(0, B, block):
        e = min(B, s + block)
        cb = torch.nn.functional.normalize(c[s:e], dim=2)
        sim = torch.bmm(cb, cb.transpose(1, 2))  # [b, K, K] cosine between candidates
        b = e - s
        score = score_all[s:e]
        avail = torch.ones(b, K, dtype=torch.bool, device=c.device)
        if v is not None:
            avail &= v[s:e]
        rows = torch.arange(b, device=c.device)
        for i in range(min(n, K)):
            best, pick = score.masked_fill(~avail, float("-inf")).max(dim=1)  # first wins ties
            ok = torch.isfinite(best)
            if not bool(ok.any()):
                break
            out[s:e, i] = torch.where(ok, pick, torch.full_like(pick, -1))
            # a pick removes itself and every candidate at least `threshold`-similar to it
            near = sim[rows, pick] >= threshold  # [b, K]
            near[rows, pick] = True
            avail &= ~(near & ok.unsqueeze(1))
    return out


def adaptive_stop(sel: Selection, alpha: float = DEFAULT_ADAPTIVE_ALPHA) -> Selection:
    """Adaptive SIFT: cut each query's picks where more steps stop paying for themselves.

    The SIFT paper's compute-proportional stopping rule, as in its reference
    implementation (activeft's ``Retriever(alpha=...)``): with ``sigma_n`` the query's
    uncertainty after ``n`` picks (square root of the posterior variance, here relative to
    the prior so that it starts at 1 whatever the number of targets), keep taking steps
    while ``alpha * n * sigma_n <= 1``, i.e. while the "performance" ``1 / sigma_n`` still
    grows at least in proportion to the compute ``n``.  When the variance plateaus,
    ``n * sigma_n`` grows linearly and the query stops; a query whose uncertainty keeps
    falling fast goes on.  Stopping is sticky (steps are taken in order): the first ``n``
    that breaks the rule and every later pick are dropped (``-1``, variance of the last
    kept pick).  Exact as post-processing, because the rule never changes earlier picks.

    Args:
        sel: a :class:`Selection` (any strategy; Adaptive SIFT applies it to
            :func:`sift_select`'s).
        alpha: compute-performance ratio > 0; larger stops sooner.  A query takes at most
            ``1 / (alpha * sigma_n)`` steps: with ``alpha`` = 0.1 and an uncertainty that
            settles at 0.5, about 20.

    Returns:
        a new :class:`Selection` with the same shapes; ``n_used`` counts the kept picks.
    """
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    idx, var = sel.indices, sel.variances
    B, n = idx.shape
    prior = sel.prior_variance.to(var.dtype)
    sigma = (var / prior.clamp_min(1e-30).unsqueeze(1)).clamp_min(0.0).sqrt()  # [B, n]
    steps = torch.arange(1, n + 1, device=var.device, dtype=var.dtype).unsqueeze(0)
    ok = (alpha * steps * sigma <= 1.0) & (idx >= 0)
    keep = ok.long().cumprod(dim=1).bool()  # sticky: stop at the first failure
    n_used = keep.sum(dim=1)
    new_idx = torch.where(keep, idx, torch.full_like(idx, -1))
    # after the stop the variance stays at the last kept pick's (the prior if none)
    at_last = var.gather(1, (n_used - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    last = torch.where(n_used > 0, at_last, prior)
    new_var = torch.where(keep, var, last.unsqueeze(1).expand(B, n))
    return Selection(new_idx, new_var, n_used, sel.prior_variance)


def _top_order(score: torch.Tensor, valid: torch.Tensor | None, n: int) -> torch.Tensor:
    """Indices ``[B, n]`` of the highest scores (distinct, descending), ``-1`` padded."""
    B, K = score.shape
    score = score.to(torch.float64)
    if valid is not None:
        score = score.masked_fill(~valid, float("-inf"))
    k = min(n, K)
    # stable descending sort: ties go to the lower index, deterministic across devices
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    ok = torch.isfinite(score.gather(1, order))
    order = torch.where(ok, order, torch.full_like(order, -1))
    if k < n:
        pad = torch.full((B, n - k), -1, dtype=torch.long, device=score.device)
        order = torch.cat([order, pad], dim=1)
    return order


def posterior_variance(
    queries: ArrayLike,
    selected: ArrayLike,
    lam: float,
) -> torch.Tensor:
    """Closed-form posterior variance, the reference for tests and benchmarks (float64).

    ``sum_t [k(t,t) - k_S(t)^T (K_SS + lam I)^-1 k_S(t)]`` with ``k(a,b) = <a,b>``.

    Args:
        queries: ``[B, d]`` or ``[B, m, d]`` target embeddings.
        selected: ``[B, s, d]`` embeddings of the selected multiset (repeats allowed;
            ``s`` may be 0).
        lam: ridge parameter > 0.

    Returns:
        float64 Tensor ``[B]``.
    """
    q = _to_tensor(queries).to(torch.float64)
    x = _to_tensor(selected).to(device=q.device, dtype=torch.float64)
    if q.ndim == 2:
        q = q.unsqueeze(1)
    prior = q.pow(2).sum(dim=(1, 2))
    if x.shape[1] == 0:
        return prior
    kss = torch.bmm(x, x.transpose(1, 2))
    kss = kss + lam * torch.eye(x.shape[1], dtype=torch.float64, device=q.device)
    ks = torch.bmm(x, q.transpose(1, 2))  # [B, s, m]
    sol = torch.linalg.solve(kss, ks)
    return prior - (ks * sol).sum(dim=(1, 2))
