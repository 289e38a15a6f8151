"""Greedy scoring in token-budget batches, the LM's memory budget and dtype rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sift_ops.generation import greedy_scores, lm_token_budget

TEXTS = ["a", "a much longer prompt with many characters " * 4, "mid length", "b c",
         "another prompt of medium length here", "x" * 150, "short", "q?"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from sift_ops.causal_lm import load_causal_lm
    from tests.tiny_lm import build_tiny_lm

    return load_causal_lm(str(build_tiny_lm(tmp_path_factory.mktemp("lm"), seed=5)))


def test_token_budget_batches_give_the_one_by_one_scores(lm):
    """Any batching (a tight token budget, a row cap, none) scores every prompt the same."""
    model, tok = lm
    single = greedy_scores(model, tok, TEXTS, max_new_tokens=6, batch_size=1)
    for kwargs in ({"token_budget": 200, "batch_size": None},
                   {"token_budget": 60, "batch_size": 3},
                   {"token_budget": None, "batch_size": 8}):
        got = greedy_scores(model, tok, TEXTS, max_new_tokens=6, **kwargs)
        for k in single:
            np.testing.assert_allclose(got[k], single[k], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{k} {kwargs}")


def test_row_prefill_gives_the_padded_prefill_scores(lm, tmp_path):
    """Each prompt prefilled alone, joined into a left-padded cache (the CPU default), scores
    like one padded prefill inside generate; one-token and empty prompts included; the
    timings count every real and padded position."""
    model, tok = lm
    texts = [*TEXTS, "", "z"]
    padded = greedy_scores(model, tok, texts, max_new_tokens=5, batch_size=4, prefill="batch")
    tm: dict = {}
    rows = greedy_scores(model, tok, texts, max_new_tokens=5, batch_size=4, timings=tm)
    for k in padded:
        np.testing.assert_allclose(rows[k], padded[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert tm["prefill_s"] > 0 and tm["generate_s"] > 0 and tm["score_s"] > 0
    assert tm["prompt_tokens"] < tm["prompt_slots"]  # unequal lengths share batches
    assert tm["response_tokens"] <= tm["response_slots"] == len(texts) * 5
    # no chat template: one-token prompts (nothing to prefill), alone and beside longer ones
    from sift_ops.causal_lm import load_causal_lm
    from tests.tiny_lm import build_tiny_lm

    plain, ptok = load_causal_lm(str(build_tiny_lm(tmp_path / "plain", seed=3,
                                                   chat_template=False)))
    short = ["z", "q", "z", "abc", "a longer one"]
    a = greedy_scores(plain, ptok, short, max_new_tokens=3, batch_size=2, prefill="batch")
    b = greedy_scores(plain, ptok, short, max_new_tokens=3, batch_size=2, prefill="rows")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    with pytest.raises(ValueError, match="prefill"):
        greedy_scores(model, tok, ["a"], max_new_tokens=2, prefill="rowz")


def test_bf16_scores_stay_close_to_float32(lm, tmp_path):
    """The CUDA dtype, run on CPU: same greedy answers' scores within a small tolerance
    where the answers agree (a random tiny LM has near-ties, so compare the rows whose
    generated lengths agree)."""
    import copy

    model, tok = lm
    ref = greedy_scores(model, tok, TEXTS, max_new_tokens=4, batch_size=4)
    half = copy.deepcopy(model).to(torch.bfloat16)
    got = greedy_scores(half, tok, TEXTS, max_new_tokens=4, batch_size=4)
    same = got["gen_tokens"] == ref["gen_tokens"]
    assert same.mean() >= 0.5
    for k in ("mean_entropy", "least_confidence"):
        assert np.isfinite(got[k]).all()
        np.testing.assert_allclose(got[k][same], ref[k][same], atol=0.1, err_msg=k)


def test_lm_memory_budget():
    shape = {"layers": 30, "hidden": 576, "intermediate": 1536, "kv_dim": 192,
             "vocab": 49152, "max_new_tokens": 64}
    b16, rows16 = lm_token_budget(80 << 30, dtype_bytes=2, **shape)
    b32, rows32 = lm_token_budget(80 << 30, dtype_bytes=4, **shape)
    assert 0 < b32 < b16 and 0 < rows32 < rows16
    per_token = (2 * 30 * 192 + 2 * (6 * 576 + 2 * 1536)) * 2
    assert b16 == min(int(0.5 * (80 << 30) / 2 // per_token), 1 << 18)
    assert rows16 == int(0.5 * (80 << 30) / 2 // (64 * 49152 * 6))
    assert lm_token_budget(0, dtype_bytes=2, **shape) == (1, 1)


def test_causal_lm_dtype_follows_the_device_rule(tmp_path):
    from sift_ops.causal_lm import load_causal_lm
    from tests.tiny_lm import build_tiny_lm

    folder = str(build_tiny_lm(tmp_path / "lm"))
    model, _ = load_causal_lm(folder, dtype=None, device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    model, _ = load_causal_lm(folder, dtype="bf16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
