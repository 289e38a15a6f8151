"""SIFT over a whole instruction pool toward a set of target prompts (distinct picks).

Same model as :mod:`sift_ops.sift` (linear kernel ``k(a, b) = <a, b>``, noise ``lam``),
but the candidates are the pool itself, possibly a million items, so nothing of size
``K x K`` or ``picks x K`` may be kept.  With a linear kernel in d dimensions the
posterior covariance after selecting the rows of ``X`` is ``k_S(a, b) = a^T P b`` with the
d x d matrix ``P = lam (X^T X + lam I)^-1``, and the summed variance reduction of the
targets ``t`` for candidate ``c`` is::

    gain(c) = sum_t (t^T P c)^2 / (c^T P c + lam) = c^T P A P c / (c^T P c + lam),
    A = sum_t t t^T / m                                   (d x d; mean over targets)

so the targets only enter through ``A`` (any number of them, or the pool itself).  Per
candidate we keep two numbers, ``diag = c^T P c`` and ``num = c^T P A P c``.  Picking
``c*`` is the rank-1 update ``P' = P - u u^T / delta`` with ``u = P c*`` and
``delta = c*^T P c* + lam``, which changes them by::

    s = C u,  r = C (P A u)                               (one [K, d] x [d, 2] product)
    diag' = diag - s^2 / delta
    num'  = num - 2 s r / delta + s^2 (u^T A u) / delta^2

State ``O(K + d^2)``, cost per pick ``O(K d + d^2)``: one pass over the embeddings.
Picks are distinct (an item is annotated once).  Already-labelled items start in ``X``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["pool_sift", "target_gram"]

_ROWS = 65536  # rows per chunk for the O(K d^2) start-up products (bounded temporaries)


def _f32(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


def target_gram(targets: Any, rows: int = _ROWS) -> np.ndarray:
    """``A = sum_t t t^T / m`` (float64 ``[d, d]``) from ``[m, d]`` targets, in chunks."""
    t = _f32(targets)
    if t.ndim != 2 or len(t) == 0:
        raise ValueError(f"targets must be a non-empty [m, d] array, got {t.shape}")
    a = np.zeros((t.shape[1], t.shape[1]), dtype=np.float64)
    for s in range(0, len(t), rows):
        blk = t[s : s + rows].astype(np.float64)
        a += blk.T @ blk
    return a / len(t)


def _quad_rows(c: np.ndarray, m: np.ndarray, rows: int = _ROWS) -> np.ndarray:
    """``diag(C M C^T)`` ``[K]`` in chunks (never a K x K matrix)."""
    out = np.empty(len(c), dtype=np.float64)
    m32 = m.astype(np.float32)
    for s in range(0, len(c), rows):
        blk = c[s : s + rows]
        out[s : s + rows] = np.einsum("kd,kd->k", blk @ m32, blk, dtype=np.float64)
    return out


def pool_sift(
    emb: Any,
    budget: int,
    *,
    gram: np.ndarray,
    lam: float = 0.1,
    labeled: Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy SIFT picks from ``emb`` toward the targets summarised by ``gram``.

    Args:
        emb: ``[K, d]`` candidate embeddings (float32 is used for the K x d products).
        budget: picks wanted (clipped to K).
        gram: ``[d, d]`` target second moment from :func:`target_gram`.
        lam: noise / ridge ``> 0`` (kernel units).  Smaller: coverage of new directions
            dominates; larger: several items close to dense target regions are worth it.
        labeled: optional ``[L, d]`` embeddings already annotated (conditioned on first).

    Returns:
        ``(order [k] int64, gains [k] float64)``: candidate indices in pick order and the
        mean (over targets) posterior-variance reduction each pick achieved.  The mean
        variance after the first j picks is ``trace(P0 A) - gains[:j].sum()`` where
        ``P0`` accounts for ``labeled``.  Stops early only if no candidate is left.
    """
    if not (lam > 0 and np.isfinite(lam)):
        raise ValueError(f"lam must be a positive finite number, got {lam}")
    c = _f32(emb)
    if c.ndim != 2:
        raise ValueError(f"emb must be [K, d], got {c.shape}")
    K, d = c.shape
    a = np.asarray(gram, dtype=np.float64)
    if a.shape != (d, d):
        raise ValueError(f"gram must be [{d}, {d}], got {a.shape}")
    if labeled is not None and len(labeled):
        x = _f32(labeled).astype(np.float64)
        p = lam * np.linalg.inv(x.T @ x + lam * np.eye(d))
        p = (p + p.T) / 2
    else:
        p = np.eye(d)
    diag = _quad_rows(c, p)
    num = _quad_rows(c, p @ a @ p)
    budget = max(0, min(int(budget), K))
    order = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    free = np.ones(K, dtype=bool)
    k = 0
    for k in range(budget):
        gain = np.where(free, num / (diag + lam), -np.inf)
        j = int(np.argmax(gain))  # first maximum: ties go to the lower index
        if not np.isfinite(gain[j]):
            return order[:k], gains[:k]
        order[k], gains[k] = j, gain[j]
        free[j] = False
        u = p @ c[j].astype(np.float64)
        delta = diag[j] + lam
        au = a @ u
        uau = float(u @ au)
        su = c @ np.stack([u, p @ au], axis=1).astype(np.float32)  # [K, 2]
        s, r = su[:, 0].astype(np.float64), su[:, 1].astype(np.float64)
        diag -= s * s / delta
        num -= 2.0 * s * r / delta - s * s * (uau / (delta * delta))
        # round-off must not make a variance (or a reduction) negative
        np.maximum(diag, 0.0, out=diag)
        np.maximum(num, 0.0, out=num)
        p -= np.outer(u, u) / delta
    return order, gains
