"""Sequence-level uncertainty scores from a causal LM's greedy response.

For every response position ``t`` the model gives a next-token distribution
``p_t = softmax(logits[:, t])`` and the response contains the token ``y_t = tokens[:, t]``
(so ``logits[:, t]`` must be the logits that *produced* ``tokens[:, t]``; for a HF
causal LM that is ``outputs.logits[:, t - 1]`` of the full sequence, or the ``scores`` of
``generate``).  Over the unmasked positions of each sequence (docs/architecture.md, "Methods"):

* ``mean_entropy``     ``mean_t H(p_t)``                        (nats; high = uncertain)
* ``max_entropy``      ``max_t H(p_t)``                         (nats; high = uncertain)
* ``least_confidence`` ``1 - exp(mean_t log p_t(y_t))``         (in [0, 1]; high = uncertain)
* ``mean_margin``      ``mean_t (p_t(top1) - p_t(top2))``       (in [0, 1]; LOW = uncertain)
* ``min_margin``       ``min_t (p_t(top1) - p_t(top2))``        (in [0, 1]; LOW = uncertain)

``least_confidence`` is one minus the geometric-mean probability of the response
tokens, i.e. ``1 - 1/perplexity``.  A sequence with no unmasked position gets NaN in
every score (undefined, and easy to filter) instead of a number that would rank it.
"""

from __future__ import annotations

from typing import Any

import torch

from sift_ops.tensors import to_tensor as _to_tensor

__all__ = ["UNCERTAINTY_KEYS", "token_uncertainty"]

UNCERTAINTY_KEYS = ("mean_entropy", "max_entropy", "least_confidence", "mean_margin", "min_margin")

# Elements of [B, t, V] processed at once: bounds the temporaries (log-probs, probs) to a
# few hundred MB even for V = 150k vocabularies.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def token_uncertainty(
    logits: Any,
    tokens: Any,
    mask: Any | None = None,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, torch.Tensor]:
    """Per-sequence uncertainty scores (see module docstring for the definitions).

    Args:
        logits: ``[B, T, V]`` unnormalised next-token logits (any float dtype; ``-inf``
            entries, e.g. from vocabulary masking, are fine).
        tokens: ``[B, T]`` integer ids of the response tokens (values at masked positions
            are ignored and may be anything, e.g. -100 or the pad id).
        mask: ``[B, T]`` bool/0-1, True for real response positions; None = all valid.
        chunk_elements: work on ``ceil(chunk_elements / (B * V))`` positions at a time to
            bound memory.

    Returns:
        dict of ``[B]`` tensors (float32, or float64 for float64 logits) keyed by
        :data:`UNCERTAINTY_KEYS`, on the device of ``logits``.
    """
    z_all = _to_tensor(logits)
    if z_all.ndim != 3:
        raise ValueError(f"logits must be [B, T, V], got {tuple(z_all.shape)}")
    B, T, V = z_all.shape
    dev = z_all.device
    tok = _to_tensor(tokens).to(device=dev, dtype=torch.long)
    if tuple(tok.shape) != (B, T):
        raise ValueError(f"tokens must be [B, T] = {(B, T)}, got {tuple(tok.shape)}")
    if mask is None:
        m = torch.ones(B, T, dtype=torch.bool, device=dev)
    else:
        m = _to_tensor(mask).to(device=dev).bool()
        if tuple(m.shape) != (B, T):
            raise ValueError(f"mask must be [B, T] = {(B, T)}, got {tuple(m.shape)}")
    # half-precision logits are upcast: entropies of a 50k vocabulary need > 3 digits
    dt = torch.float64 if z_all.dtype == torch.float64 else torch.float32

    ent = torch.zeros(B, T, dtype=dt, device=dev)
    logp_y = torch.zeros(B, T, dtype=dt, device=dev)
    margin = torch.zeros(B, T, dtype=dt, device=dev)
    step = max(1, chunk_elements // max(1, B * V))
    tok_safe = tok.clamp(0, max(V - 1, 0))  # masked positions may hold -100 etc.
    with torch.no_grad():
        for s in range(0, T, step):
            e = min(T, s + step)
            z = z_all[:, s:e].to(dt)
            # stable log-softmax: subtract logsumexp, never exponentiate raw logits
            logp = torch.log_softmax(z, dim=-1)
            p = logp.exp()
            # p * log p -> 0 where p == 0 (incl. -inf logits), instead of 0 * -inf = NaN
            plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=dt, device=dev))
            ent[:, s:e] = -plogp.sum(dim=-1)
            logp_y[:, s:e] = logp.gather(-1, tok_safe[:, s:e].unsqueeze(-1)).squeeze(-1)
            if V >= 2:
                top2 = torch.topk(logp, 2, dim=-1).values.exp()
                margin[:, s:e] = top2[..., 0] - top2[..., 1]
            else:
                margin[:, s:e] = 1.0  # one-word vocabulary: the model is certain
            del z, logp, p, plogp

    count = m.sum(dim=1)
    empty = count == 0
    cnt = count.clamp_min(1).to(dt)
    zero = torch.zeros((), dtype=dt, device=dev)
    nan = torch.tensor(float("nan"), dtype=dt, device=dev)
    # torch.where (not multiplication by the mask): masked positions may hold NaN/inf
    # when their logits are padding garbage.
    mean_entropy = torch.where(m, ent, zero).sum(dim=1) / cnt
    max_entropy = torch.where(m, ent, torch.full_like(ent, float("-inf"))).amax(dim=1)
    mean_logp = torch.where(m, logp_y, zero).sum(dim=1) / cnt
    least_confidence = 1.0 - mean_logp.exp()
    mean_margin = torch.where(m, margin, zero).sum(dim=1) / cnt
    min_margin = torch.where(m, margin, torch.full_like(margin, float("inf"))).amin(dim=1)
    out = {
        "mean_entropy": mean_entropy,
        "max_entropy": max_entropy,
        "least_confidence": least_confidence,
        "mean_margin": mean_margin,
        "min_margin": min_margin,
    }
    return {k: torch.where(empty, nan, v) for k, v in out.items()}
