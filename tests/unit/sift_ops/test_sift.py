"""Correctness of sift_ops.sift against the closed form and brute force.

Every property is checked against an independent float64 reference
(``posterior_variance``: a dense linear solve, no rank-1 updates).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sift_ops.sift import (
    Selection,
    adaptive_stop,
    nn_select,
    nnf_select,
    posterior_variance,
    random_select,
    sift_select,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

lams = st.floats(min_value=1e-4, max_value=10.0).map(float)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def make_problem(
    seed: int, B: int, K: int, d: int, m: int | None, dtype=torch.float64, dup: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered unit vectors (so selections are non-trivial); queries near the candidates."""
    g = torch.Generator().manual_seed(seed)
    centers = _unit(torch.randn(B, 3, d, generator=g, dtype=torch.float64))
    which = torch.randint(0, 3, (B, K), generator=g)
    c = centers.gather(1, which.unsqueeze(-1).expand(B, K, d))
    c = _unit(c + 0.6 * torch.randn(B, K, d, generator=g, dtype=torch.float64))
    if dup and K >= 4:
        # near-duplicates: the second half copies the first half up to 1e-6 noise
        h = K // 2
        c[:, h : 2 * h] = _unit(c[:, :h] + 1e-6 * torch.randn(B, h, d, generator=g).double())
    shape = (B, d) if m is None else (B, m, d)
    q = torch.randn(*shape, generator=g, dtype=torch.float64)
    q = _unit(q + (c[:, :1] if m is not None else c[:, 0]))
    return q.to(dtype), c.to(dtype)


def gather_sets(c: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B, K, d], [B, s] -> [B, s, d] embeddings of the selected (repeated) set."""
    B, _, d = c.shape
    return c.gather(1, idx.unsqueeze(-1).expand(B, idx.shape[1], d))


def closed_form_path(q: torch.Tensor, c: torch.Tensor, idx: torch.Tensor, lam: float):
    """Closed-form variance after each prefix of idx: [B, n] float64."""
    return torch.stack(
        [posterior_variance(q, gather_sets(c, idx[:, : i + 1]), lam) for i in range(idx.shape[1])],
        dim=1,
    )


# ----------------------------------------------------------------------------- closed form


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(1, 5),
    K=st.integers(1, 24),
    d=st.integers(1, 12),
    m=st.one_of(st.none(), st.integers(1, 4)),
    n=st.integers(1, 15),
    lam=lams,
    dup=st.booleans(),
    fn=st.sampled_from([sift_select, nn_select, random_select]),
)
def test_variances_equal_closed_form_float64(seed, B, K, d, m, n, lam, dup, fn):
    q, c = make_problem(seed, B, K, d, m, dup=dup)
    res = fn(q, c, n, lam, dtype=torch.float64)
    assert res.indices.dtype == torch.long and res.indices.shape == (B, n)
    assert res.variances.dtype == torch.float64 and res.variances.shape == (B, n)
    prior = posterior_variance(q, c[:, :0], lam)
    torch.testing.assert_close(res.prior_variance, prior, rtol=1e-9, atol=1e-10)
    if fn is sift_select:
        assert (res.indices >= 0).all() and (res.indices < K).all()
        assert (res.n_used == n).all()
        ref = closed_form_path(q, c, res.indices, lam)
        torch.testing.assert_close(res.variances, ref, rtol=1e-7, atol=1e-9)
    else:
        # distinct picks; -1 only when K < n
        n_real = min(n, K)
        assert (res.indices[:, :n_real] >= 0).all()
        assert (res.indices[:, n_real:] == -1).all()
        assert (res.n_used == n_real).all()
        for b in range(B):
            assert len(set(res.indices[b, :n_real].tolist())) == n_real
        ref = closed_form_path(q, c, res.indices[:, :n_real], lam)
        torch.testing.assert_close(res.variances[:, :n_real], ref, rtol=1e-7, atol=1e-9)
        # after the last real pick the variance is repeated
        last = res.variances[:, n_real - 1 : n_real]
        assert torch.equal(res.variances[:, n_real:], last.expand(B, n - n_real))
    # posterior variance never increases with more data
    assert (res.variances[:, 1:] <= res.variances[:, :-1] + 1e-12).all()
    assert (res.variances >= 0).all()


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    m=st.one_of(st.none(), st.integers(1, 3)),
    lam=lams,
    dup=st.booleans(),
)
def test_variances_closed_form_float32(seed, m, lam, dup):
    """float32 compute path, checked against float64 closed form on the same picks."""
    q, c = make_problem(seed, 4, 40, 16, m, dup=dup)
    res = sift_select(q.float(), c.float(), 20, lam)
    assert res.variances.dtype == torch.float32
    ref = closed_form_path(q.float().double(), c.float().double(), res.indices, lam)
    # error of float32 round-off, scaled by the prior variance (m targets of norm 1)
    torch.testing.assert_close(res.variances.double(), ref, rtol=1e-3, atol=2e-4 * (m or 1))


def test_float32_and_float64_agree_on_picks():
    q, c = make_problem(7, 64, 50, 24, None)
    r64 = sift_select(q, c, 20, 0.01, dtype=torch.float64)
    r32 = sift_select(q, c, 20, 0.01)
    agree = (r64.indices == r32.indices).all(dim=1).float().mean().item()
    assert agree >= 0.95
    torch.testing.assert_close(r32.variances.double(), r64.variances, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- greedy optimality


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    K=st.integers(1, 16),
    d=st.integers(1, 8),
    m=st.one_of(st.none(), st.integers(1, 3)),
    n=st.integers(1, 8),
    lam=lams,
    dup=st.booleans(),
)
def test_greedy_choice_is_optimal_each_step(seed, K, d, m, n, lam, dup):
    """Each pick minimises the closed-form variance over all K candidates (brute force)."""
    B = 2
    q, c = make_problem(seed, B, K, d, m, dup=dup)
    res = sift_select(q, c, n, lam, dtype=torch.float64)
    for b in range(B):
        chosen: list[int] = []
        for i in range(n):
            # all K one-step extensions of the chosen prefix, as a batch of K problems
            sets = torch.stack([c[b, chosen + [j]] for j in range(K)])
            qb = q[b : b + 1].expand(K, *q.shape[1:])
            cand_var = posterior_variance(qb, sets, lam)
            pick = int(res.indices[b, i])
            best = cand_var.min().item()
            scale = max(1.0, abs(best))
            assert cand_var[pick].item() <= best + 1e-9 * scale, (i, pick, cand_var)
            assert res.variances[b, i].item() == pytest.approx(best, rel=1e-8, abs=1e-10)
            chosen.append(pick)


# ----------------------------------------------------------------------------- targets


@SETTINGS
@given(seed=st.integers(0, 10_000), m=st.integers(1, 4), lam=lams)
def test_multi_target_sums_individual_variances(seed, m, lam):
    q, c = make_problem(seed, 3, 20, 8, m)
    res = sift_select(q, c, 10, lam, dtype=torch.float64)
    sets = [gather_sets(c, res.indices[:, : i + 1]) for i in range(10)]
    for i in range(10):
        per_target = sum(posterior_variance(q[:, j], sets[i], lam) for j in range(m))
        torch.testing.assert_close(res.variances[:, i], per_target, rtol=1e-8, atol=1e-10)


def test_single_target_shapes_equivalent():
    q, c = make_problem(3, 5, 30, 10, None)
    a = sift_select(q, c, 12, 0.1, dtype=torch.float64)
    b = sift_select(q.unsqueeze(1), c, 12, 0.1, dtype=torch.float64)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.variances, b.variances)


def test_duplicated_target_doubles_variance():
    """m copies of the same target: same picks, m times the variance."""
    q, c = make_problem(4, 3, 25, 8, None)
    a = sift_select(q, c, 10, 0.05, dtype=torch.float64)
    b = sift_select(q.unsqueeze(1).repeat(1, 3, 1), c, 10, 0.05, dtype=torch.float64)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(3 * a.variances, b.variances)


# ----------------------------------------------------------------------------- redundancy, lam


def test_near_duplicates_are_not_repicked_with_small_lam():
    """SIFT skips a near-copy of what it already has; nearest neighbour takes both."""
    d = 16
    g = torch.Generator().manual_seed(0)
    q = _unit(torch.randn(1, d, generator=g, dtype=torch.float64))
    other = _unit(torch.randn(d, generator=g, dtype=torch.float64))
    close = _unit(q[0] + 0.3 * other)  # most similar
    twin = _unit(close + 1e-7 * torch.randn(d, generator=g, dtype=torch.float64))
    orth = torch.randn(d, generator=g, dtype=torch.float64)
    orth = _unit(orth - (orth @ close) * close)  # complementary direction
    c = torch.stack([close, twin, _unit(0.5 * q[0] + orth)]).unsqueeze(0)
    nn = nn_select(q, c, 2, 1e-4, dtype=torch.float64)
    s = sift_select(q, c, 2, 1e-4, dtype=torch.float64)
    assert sorted(nn.indices[0].tolist()) == [0, 1]  # redundant pair
    assert s.indices[0, 0].item() in (0, 1)
    assert s.indices[0, 1].item() == 2  # the informative, non-redundant one
    assert s.variances[0, 1] < nn.variances[0, 1]
    # float32 path makes the same choice and stays finite despite the near-singular pair
    s32 = sift_select(q, c, 2, 1e-4)
    assert s32.indices[0, 1].item() == 2
    assert torch.isfinite(s32.variances).all()


@pytest.mark.parametrize("lam", [1e-4, 1e-2, 1.0, 10.0])
def test_single_candidate_repeats_follow_closed_form(lam):
    """K = 1: every pick repeats candidate 0; variance follows sigma^2 = a - b^2 n/(c n + lam)."""
    q, c = make_problem(1, 3, 1, 6, None)
    res = sift_select(q, c, 7, lam, dtype=torch.float64)
    assert (res.indices == 0).all()
    kqq = (q * q).sum(-1, keepdim=True)
    kqc = (q * c[:, 0]).sum(-1, keepdim=True)
    kcc = (c[:, 0] * c[:, 0]).sum(-1, keepdim=True)
    reps = torch.arange(1, 8, dtype=torch.float64)
    expected = kqq - kqc**2 * reps / (kcc * reps + lam)
    torch.testing.assert_close(res.variances, expected, rtol=1e-10, atol=1e-12)


def test_large_lam_repeats_the_most_relevant_point():
    """With lam >> 1 one observation is weak evidence, so repeating the best point pays."""
    q, c = make_problem(11, 4, 30, 8, None)
    res = sift_select(q, c, 10, 10.0, dtype=torch.float64)
    for b in range(4):
        assert len(set(res.indices[b].tolist())) < 10


# ----------------------------------------------------------------------------- baselines


def test_nn_select_is_top_similarity():
    q, c = make_problem(5, 6, 40, 12, 2)
    res = nn_select(q, c, 15, 0.01, dtype=torch.float64)
    score = torch.einsum("bmd,bkd->bk", q, c)
    expected = torch.topk(score, 15, dim=1).indices
    assert torch.equal(res.indices, expected)


def test_random_select_reproducible_and_seeded():
    q, c = make_problem(6, 8, 30, 6, None)
    a = random_select(q, c, 10, seed=3)
    b = random_select(q, c, 10, seed=3)
    d = random_select(q, c, 10, seed=4)
    e = random_select(q, c, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.indices, e.indices)
    assert not torch.equal(a.indices, d.indices)
    # roughly uniform: over many queries every candidate is used
    qs, cs = make_problem(6, 400, 30, 4, None)
    counts = torch.bincount(random_select(qs, cs, 5, seed=0).indices.flatten(), minlength=30)
    assert counts.min() > 0.5 * counts.float().mean()


def test_sift_beats_baselines_on_variance():
    """SIFT minimises the variance greedily; on average it ends below nn and random."""
    q, c = make_problem(8, 32, 60, 16, None)
    s = sift_select(q, c, 10, 0.01, dtype=torch.float64).variances[:, -1]
    nn = nn_select(q, c, 10, 0.01, dtype=torch.float64).variances[:, -1]
    rnd = random_select(q, c, 10, 0.01, dtype=torch.float64).variances[:, -1]
    assert s.mean() < nn.mean() and s.mean() < rnd.mean()
    # the first pick is the one-step optimum, so SIFT's first variance is never worse
    s1 = sift_select(q, c, 1, 0.01, dtype=torch.float64).variances[:, 0]
    n1 = nn_select(q, c, 1, 0.01, dtype=torch.float64).variances[:, 0]
    assert (s1 <= n1 + 1e-12).all()


# ----------------------------------------------------------------------------- stopping rule


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    min_gain=st.floats(1e-4, 0.3),
    fn=st.sampled_from([sift_select, nn_select]),
)
def test_stopping_rule(seed, min_gain, fn):
    q, c = make_problem(seed, 6, 25, 8, None)
    full = fn(q, c, 20, 0.01, dtype=torch.float64)
    res = fn(q, c, 20, 0.01, dtype=torch.float64, min_gain=min_gain)
    prev = torch.cat([full.prior_variance.unsqueeze(1), full.variances], dim=1)
    reductions = prev[:, :-1] - prev[:, 1:]  # [B, n]: reduction of each pick
    for b in range(6):
        below = (reductions[b] < min_gain).nonzero()
        expect = int(below[0]) if len(below) else 20
        u = int(res.n_used[b])
        assert u == expect
        assert torch.equal(res.indices[b, :u], full.indices[b, :u])
        assert (res.indices[b, u:] == -1).all()
        torch.testing.assert_close(res.variances[b, :u], full.variances[b, :u])
        last = full.variances[b, u - 1] if u else full.prior_variance[b]
        assert (res.variances[b, u:] == last).all()


def test_stopping_all_queries_early_exit():
    q, c = make_problem(2, 3, 10, 4, None)
    res = sift_select(q, c, 30, 0.01, min_gain=10.0)  # nothing can reduce by 10
    assert (res.n_used == 0).all() and (res.indices == -1).all()
    torch.testing.assert_close(res.variances, res.prior_variance.unsqueeze(1).expand(3, 30))


# ----------------------------------------------------------------------------- plumbing


def test_valid_mask_equals_running_on_valid_subset():
    q, c = make_problem(9, 4, 30, 8, None)
    g = torch.Generator().manual_seed(1)
    valid = torch.rand(4, 30, generator=g) > 0.4
    valid[3] = False
    valid[3, 5] = True  # only one valid candidate: repeats it
    res = sift_select(q, c, 8, 0.05, dtype=torch.float64, valid=valid)
    for b in range(4):
        keep = valid[b].nonzero().squeeze(1)
        sub = sift_select(q[b : b + 1], c[b : b + 1, keep], 8, 0.05, dtype=torch.float64)
        assert torch.equal(res.indices[b], keep[sub.indices[0]])
        torch.testing.assert_close(res.variances[b], sub.variances[0])
    none_valid = sift_select(q, c, 4, 0.05, valid=torch.zeros(4, 30, dtype=torch.bool))
    assert (none_valid.indices == -1).all() and (none_valid.n_used == 0).all()
    nn = nn_select(q, c, 20, 0.05, valid=valid)
    for b in range(4):
        real = nn.indices[b][nn.indices[b] >= 0]
        assert len(real) == min(20, int(valid[b].sum())) == int(nn.n_used[b])
        assert valid[b, real].all()


@pytest.mark.parametrize("block_size", [1, 3, 64])
def test_block_size_does_not_change_results(block_size):
    q, c = make_problem(10, 10, 30, 8, 2)
    ref = sift_select(q, c, 12, 0.02, dtype=torch.float64, block_size=1000)
    res = sift_select(q, c, 12, 0.02, dtype=torch.float64, block_size=block_size)
    assert torch.equal(ref.indices, res.indices)
    torch.testing.assert_close(ref.variances, res.variances)


def test_numpy_inputs_and_unpacking():
    q, c = make_problem(12, 3, 15, 5, None)
    res = sift_select(q.numpy(), c.numpy(), 4)
    assert isinstance(res, Selection) and isinstance(res, tuple) and len(res) == 2
    idx, var = res
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.long
    assert var.dtype == torch.float32  # float32 by default even for float64 input
    ref = sift_select(q, c, 4)
    assert torch.equal(idx, ref.indices)
    assert res.n_used.shape == (3,) and res.prior_variance.shape == (3,)
    import pickle

    back = pickle.loads(pickle.dumps(res))
    assert torch.equal(back.indices, idx) and torch.equal(back.n_used, res.n_used)


def test_n_zero_and_errors():
    q, c = make_problem(13, 2, 5, 3, None)
    res = sift_select(q, c, 0)
    assert res.indices.shape == (2, 0) and res.variances.shape == (2, 0)
    with pytest.raises(ValueError):
        sift_select(q, c, 3, lam=0.0)
    with pytest.raises(ValueError):
        sift_select(q, c[0], 3)
    with pytest.raises(ValueError):
        sift_select(q[:1], c, 3)
    with pytest.raises(ValueError):
        sift_select(q, c, 3, dtype=torch.float16)


@pytest.mark.parametrize("fn", [sift_select, nn_select, random_select])
def test_no_candidates(fn):
    q, c = make_problem(15, 3, 4, 5, None)
    res = fn(q, c[:, :0], 4, 0.1)
    assert (res.indices == -1).all() and (res.n_used == 0).all()
    torch.testing.assert_close(res.variances, res.prior_variance.unsqueeze(1).expand(3, 4))


def test_posterior_variance_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5))
    t = rng.standard_normal(5)
    lam = 0.3
    kss = x @ x.T + lam * np.eye(6)
    ks = x @ t
    expected = t @ t - ks @ np.linalg.solve(kss, ks)
    got = posterior_variance(torch.tensor(t)[None], torch.tensor(x)[None], lam)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    q, c = make_problem(14, 50, 40, 16, None)
    cpu = sift_select(q, c, 15, 0.01, dtype=torch.float64)
    gpu = sift_select(q.cuda(), c.cuda(), 15, 0.01, dtype=torch.float64)
    assert gpu.indices.device.type == "cuda"
    assert torch.equal(cpu.indices, gpu.indices.cpu())
    torch.testing.assert_close(cpu.variances, gpu.variances.cpu())
    r = random_select(q.cuda(), c.cuda(), 5, seed=0)
    assert torch.equal(r.indices.cpu(), random_select(q, c, 5, seed=0).indices)


# ----------------------------------------------------------------------------- NN-F


@pytest.mark.parametrize("threshold", [0.3, 0.8, 0.999])
def test_nnf_never_picks_a_pair_above_the_threshold(threshold):
    q, c = make_problem(3, B=6, K=40, d=8, m=None, dup=True)
    sel = nnf_select(q, c, 15, dup_threshold=threshold)
    cn = _unit(c)
    for b in range(6):
        picks = [i for i in sel.indices[b].tolist() if i >= 0]
        assert len(picks) == int(sel.n_used[b]) and len(set(picks)) == len(picks)
        sims = cn[b, picks] @ cn[b, picks].T
        off = sims[~torch.eye(len(picks), dtype=torch.bool)]
        assert bool((off < threshold).all())
        # greedy in NN order: every skipped higher-scoring candidate is too close to a pick
        score = (c[b] @ q[b]).tolist()
        last = score[picks[-1]]
        for j in range(40):
            if j not in picks and score[j] > last:
                assert float((cn[b, picks] @ cn[b, j]).max()) >= threshold
    # the filter had work to do: plain NN picks near-identical copies (dup=True) together
    nn = nn_select(q, c, 15).indices
    sims = torch.einsum("bid,bjd->bij", gather_sets(cn, nn), gather_sets(cn, nn))
    assert bool((sims - 2 * torch.eye(15) >= 0.999).any())


def test_nnf_without_filter_is_nn_and_variances_follow_the_closed_form():
    q, c = make_problem(5, B=4, K=30, d=6, m=2, dup=True)
    off = nnf_select(q, c, 10, dup_threshold=2.0)
    assert torch.equal(off.indices, nn_select(q, c, 10).indices)
    sel = nnf_select(q, c, 10, lam=0.1, dup_threshold=0.9, dtype=torch.float64)
    for b in range(4):
        k = int(sel.n_used[b])
        idx = sel.indices[b : b + 1, :k]
        ref = closed_form_path(q[b : b + 1], c[b : b + 1], idx, 0.1)
        assert torch.allclose(sel.variances[b, :k], ref[0], atol=1e-9)


# ----------------------------------------------------------------------------- Adaptive SIFT


def test_adaptive_stop_follows_the_rule_and_stops_on_a_plateau():
    n = 30
    steps = torch.arange(1, n + 1, dtype=torch.float64)
    falling = 1.0 / steps**2  # sigma_n = 1/n: alpha * n * sigma_n = alpha, never > 1
    plateau = torch.full((n,), 0.25, dtype=torch.float64)  # sigma_n = 0.5 from the start
    sel = Selection(torch.arange(n).repeat(2, 1), torch.stack([falling, plateau]),
                    torch.full((2,), n), torch.ones(2, dtype=torch.float64))
    out = adaptive_stop(sel, alpha=0.1)
    assert out.n_used.tolist() == [30, 20]  # 0.1 * n * 0.5 <= 1  <=>  n <= 20
    assert out.indices[1, :20].tolist() == list(range(20))
    assert (out.indices[1, 20:] == -1).all()
    assert (out.variances[1, 20:] == 0.25).all()
    assert adaptive_stop(sel, alpha=0.2).n_used.tolist() == [30, 10]


def test_adaptive_sift_takes_fewer_steps_when_candidates_are_redundant():
    """Candidates that are copies of a few texts: uncertainty plateaus after the few
    distinct ones, so Adaptive SIFT stops early; with diverse candidates it goes on."""
    g = torch.Generator().manual_seed(0)
    d, K = 64, 60
    q = _unit(torch.randn(2, d, generator=g, dtype=torch.float64))
    diverse = _unit(q.unsqueeze(1) + 1.5 * torch.randn(1, K, d, generator=g,
                                                        dtype=torch.float64))
    few = diverse[:, :3].repeat(1, K // 3, 1)  # 3 distinct texts, 20 copies each
    c = torch.cat([diverse[:1], few[1:]])
    full = sift_select(q, c, 40, lam=0.01)
    out = adaptive_stop(full, alpha=0.1)
    assert int(out.n_used[1]) < int(out.n_used[0])
    assert int(out.n_used[1]) < 40
    # the kept picks are SIFT's own first picks
    k = int(out.n_used[1])
    assert torch.equal(out.indices[1, :k], full.indices[1, :k])


def test_adaptive_stop_and_nnf_errors():
    q, c = make_problem(0, B=1, K=5, d=3, m=None)
    with pytest.raises(ValueError, match="alpha"):
        adaptive_stop(sift_select(q, c, 2), alpha=0.0)
    with pytest.raises(ValueError, match="dup_threshold"):
        nnf_select(q, c, 2, dup_threshold=float("nan"))


# ----------------------------------------------------------------------------- CPU kernels


@contextlib.contextmanager
def torch_kernel():
    """Run the torch loop (the GPU's) on the CPU instead of the compiled one."""
    import sift_ops.sift as sift_mod

    orig, sift_mod._CPU_KERNEL = sift_mod._CPU_KERNEL, "torch"
    try:
        yield
    finally:
        sift_mod._CPU_KERNEL = orig


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(1, 40),
    K=st.integers(1, 30),
    m=st.one_of(st.none(), st.integers(1, 3)),
    n=st.integers(1, 14),
    lam=lams,
    masked=st.booleans(),
    min_gain=st.one_of(st.none(), st.floats(1e-4, 0.2)),
    fn=st.sampled_from([sift_select, nn_select, random_select, nnf_select]),
)
def test_compiled_kernel_matches_the_torch_kernel(seed, B, K, m, n, lam, masked, min_gain, fn):
    """The CPU's compiled loop (sift_ops.sift_kernel) and the torch loop (the GPU's) give the
    same picks, counts and variance paths: greedy, fixed orders, masks, stopping, m > 1."""
    q, c = make_problem(seed, B, K, 8, m, dup=seed % 2 == 0)
    # Exact copies: equal gains at the first step, where the lower index must win in both
    # loops.  Later steps (and m > 1 sums) round a copy's gain differently at a vector's tail
    # than in its body (BLAS's order, or ours), so there the copies are float near-ties:
    # either copy is right, and the variance path is the same.
    exact = seed % 3 == 0 and (m or 1) == 1
    if exact:
        h = K // 2
        c[:, h : 2 * h] = c[:, :h]
    valid = None
    if masked:
        valid = torch.rand(B, K, generator=torch.Generator().manual_seed(seed)) > 0.3
    kw = {"lam": lam, "min_gain": min_gain, "valid": valid, "dtype": torch.float64,
          "block_size": 16}
    compiled = fn(q, c, n, **kw)
    with torch_kernel():
        ref = fn(q, c, n, **kw)
    steps = 1 if exact else n
    assert torch.equal(compiled.indices[:, :steps], ref.indices[:, :steps])
    assert torch.equal(compiled.n_used, ref.n_used)
    torch.testing.assert_close(compiled.variances, ref.variances, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(compiled.prior_variance, ref.prior_variance)


def test_compiled_kernel_float32_and_threads_give_the_same_picks():
    """float32 at the bench's shape: the compiled loop agrees with the torch loop except on
    float near-ties, and splitting a block over threads changes nothing."""
    import sift_ops.sift as sift_mod

    q, c = make_problem(21, 96, 200, 48, None, dtype=torch.float32)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sift_select(q, c, 40, 0.01)
        torch.set_num_threads(4)  # 96 prompts: up to 4 chunks of >= 8 prompts each
        assert sift_mod._workers(96) == 4
        many = sift_select(q, c, 40, 0.01)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one.indices, many.indices)
    assert torch.equal(one.variances, many.variances)
    with torch_kernel():
        ref = sift_select(q, c, 40, 0.01)
    same = (one.indices == ref.indices).all(dim=1).float().mean().item()
    assert same >= 0.95, same
    torch.testing.assert_close(one.variances, ref.variances, rtol=1e-4, atol=1e-5)


def test_ties_go_to_the_lower_index_in_both_kernels():
    c = torch.ones(2, 4, 3, dtype=torch.float64) / 3**0.5  # four identical candidates
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    compiled = sift_select(q, c, 3, 0.1)
    with torch_kernel():
        ref = sift_select(q, c, 3, 0.1)
    assert compiled.indices.tolist() == ref.indices.tolist() == [[0, 0, 0], [0, 0, 0]]


def test_concurrent_callers_get_the_same_picks_and_leave_the_thread_count():
    """Two Python threads calling sift_select at once (e.g. two Prefect tasks in one
    process): same picks as one call alone, and torch's thread count restored."""
    from concurrent.futures import ThreadPoolExecutor

    q, c = make_problem(8, 64, 60, 16, None, dtype=torch.float32)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        alone = sift_select(q, c, 20, 0.01)
        with ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda _: sift_select(q, c, 20, 0.01), range(8)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)
    for r in results:
        assert torch.equal(r.indices, alone.indices)
