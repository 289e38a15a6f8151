"""token_uncertainty against a direct per-token computation (pure Python math, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift_ops.uncertainty import UNCERTAINTY_KEYS, token_uncertainty


def direct(logits: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> dict[str, list[float]]:
    """Scores computed position by position with the textbook formulas."""
    out: dict[str, list[float]] = {k: [] for k in UNCERTAINTY_KEYS}
    B, T, V = logits.shape
    for b in range(B):
        ents, logps, margins = [], [], []
        for t in range(T):
            if not mask[b, t]:
                continue
            row = [float(x) for x in logits[b, t]]
            mx = max(row)
            zs = sum(math.exp(x - mx) for x in row if x != -math.inf)
            probs = [math.exp(x - mx) / zs if x != -math.inf else 0.0 for x in row]
            ents.append(-sum(p * math.log(p) for p in probs if p > 0))
            logps.append(row[int(tokens[b, t])] - mx - math.log(zs))  # no underflow
            srt = sorted(probs, reverse=True) + [0.0]
            margins.append(srt[0] - srt[1])
        if not ents:
            for k in UNCERTAINTY_KEYS:
                out[k].append(float("nan"))
            continue
        out["mean_entropy"].append(sum(ents) / len(ents))
        out["max_entropy"].append(max(ents))
        out["least_confidence"].append(1 - math.exp(sum(logps) / len(logps)))
        out["mean_margin"].append(sum(margins) / len(margins))
        out["min_margin"].append(min(margins))
    return out


def make(seed: int, B: int, T: int, V: int, scale: float, p_mask: float, neg_inf: bool):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, V)) * scale
    if neg_inf and V > 2:
        logits[rng.random((B, T, V)) < 0.3] = -np.inf
        logits[..., 0] = np.maximum(logits[..., 0], 0.0)  # at least one finite logit
    mask = rng.random((B, T)) >= p_mask
    # the response token: usually the argmax (greedy), sometimes another finite one
    tokens = logits.argmax(-1)
    other = rng.integers(0, V, (B, T))
    finite = np.take_along_axis(np.isfinite(logits), other[..., None], -1)[..., 0]
    swap = (rng.random((B, T)) < 0.3) & finite
    tokens = np.where(swap, other, tokens)
    tokens = np.where(mask, tokens, -100)  # garbage at masked positions must be ignored
    return logits, tokens, mask


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(1, 4),
    T=st.integers(1, 7),
    V=st.integers(1, 12),
    scale=st.sampled_from([0.1, 1.0, 5.0, 300.0]),
    p_mask=st.sampled_from([0.0, 0.3, 0.9]),
    neg_inf=st.booleans(),
    chunk=st.sampled_from([1, 7, 1 << 24]),
)
def test_matches_direct_computation(seed, B, T, V, scale, p_mask, neg_inf, chunk):
    logits, tokens, mask = make(seed, B, T, V, scale, p_mask, neg_inf)
    ref = direct(logits, tokens, mask)
    got = token_uncertainty(
        torch.tensor(logits), torch.tensor(tokens), torch.tensor(mask), chunk_elements=chunk
    )
    assert set(got) == set(UNCERTAINTY_KEYS)
    for k in UNCERTAINTY_KEYS:
        assert got[k].shape == (B,) and got[k].dtype == torch.float64
        np.testing.assert_allclose(
            got[k].numpy(), np.array(ref[k]), rtol=1e-9, atol=1e-12, err_msg=k
        )


def test_float32_and_half_inputs_and_large_logits():
    logits, tokens, mask = make(1, 3, 5, 50, 1.0, 0.2, False)
    ref = token_uncertainty(torch.tensor(logits), torch.tensor(tokens), torch.tensor(mask))
    for dt in (torch.float32, torch.bfloat16):
        got = token_uncertainty(torch.tensor(logits).to(dt), tokens, mask)
        for k in UNCERTAINTY_KEYS:
            assert got[k].dtype == torch.float32
            tol = 1e-5 if dt == torch.float32 else 5e-2
            torch.testing.assert_close(got[k].double(), ref[k], rtol=tol, atol=tol)
    # shifting logits by a huge constant changes nothing (stable log-softmax)
    shifted = token_uncertainty(torch.tensor(logits, dtype=torch.float32) + 1e4, tokens, mask)
    for k in UNCERTAINTY_KEYS:
        assert torch.isfinite(shifted[k]).all()
        torch.testing.assert_close(shifted[k].double(), ref[k], rtol=2e-2, atol=2e-2)


def test_known_values():
    V = 4
    uniform = torch.zeros(1, 1, V)
    peaked = torch.tensor([[[100.0, 0.0, 0.0, 0.0]]])
    both = torch.cat([uniform, peaked], dim=1)  # T = 2
    tokens = torch.tensor([[0, 0]])
    r = token_uncertainty(both, tokens, torch.tensor([[True, True]]))
    assert r["max_entropy"].item() == pytest.approx(math.log(V), rel=1e-6)
    assert r["mean_entropy"].item() == pytest.approx(math.log(V) / 2, rel=1e-5)
    assert r["min_margin"].item() == pytest.approx(0.0, abs=1e-7)
    assert r["mean_margin"].item() == pytest.approx(0.5, abs=1e-6)
    # geometric mean of p(y) = sqrt(1/4 * 1) = 1/2
    assert r["least_confidence"].item() == pytest.approx(0.5, abs=1e-6)
    # masking the uniform position leaves a certain model
    r = token_uncertainty(both, tokens, torch.tensor([[False, True]]))
    assert r["mean_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert r["least_confidence"].item() == pytest.approx(0.0, abs=1e-6)
    assert r["min_margin"].item() == pytest.approx(1.0, abs=1e-6)


def test_fully_masked_row_is_nan_and_default_mask():
    logits, tokens, mask = make(2, 3, 4, 6, 1.0, 0.0, False)
    mask[1] = False
    r = token_uncertainty(logits, tokens, mask)  # numpy inputs accepted
    for k in UNCERTAINTY_KEYS:
        assert torch.isnan(r[k][1]) and torch.isfinite(r[k][[0, 2]]).all()
    r_all = token_uncertainty(logits, tokens)
    r_ones = token_uncertainty(logits, tokens, np.ones_like(mask))
    for k in UNCERTAINTY_KEYS:
        torch.testing.assert_close(r_all[k], r_ones[k])


def test_masked_positions_with_garbage_logits_are_ignored():
    logits, tokens, mask = make(3, 2, 6, 8, 1.0, 0.0, False)
    mask[:, 4:] = False
    clean = token_uncertainty(logits, tokens, mask)
    dirty_logits = logits.copy()
    dirty_logits[:, 4:] = np.nan
    dirty = token_uncertainty(dirty_logits, tokens, mask)
    for k in UNCERTAINTY_KEYS:
        torch.testing.assert_close(clean[k], dirty[k])


def test_shape_errors():
    with pytest.raises(ValueError):
        token_uncertainty(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError):
        token_uncertainty(torch.zeros(2, 3, 4), torch.zeros(2, 2), torch.ones(2, 3))
    with pytest.raises(ValueError):
        token_uncertainty(torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.ones(3, 3))
