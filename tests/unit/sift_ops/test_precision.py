"""Device, dtype and batch-size rules of sift_ops.precision (the CUDA branches included:
the device facts are arguments, so they are tested on a CPU machine)."""

from __future__ import annotations

import pytest
import torch

from sift_ops import precision as P


def test_dtype_rules_per_device():
    assert P.choose_dtype("cpu") == torch.float32
    assert P.choose_dtype("cpu", "auto", bf16_supported=True) == torch.float32
    assert P.choose_dtype("cuda", bf16_supported=True) == torch.bfloat16
    assert P.choose_dtype("cuda", bf16_supported=False) == torch.float16
    # the causal LM never falls to fp16 (softmax over a large vocabulary)
    assert P.choose_dtype("cuda", bf16_supported=False, allow_fp16=False) == torch.float32
    assert P.choose_dtype("cuda", "float32", bf16_supported=True) == torch.float32
    assert P.choose_dtype("cpu", "bf16") == torch.bfloat16
    assert P.choose_dtype("cpu", "torch.float16") == torch.float16
    assert P.choose_dtype("cpu", torch.float64) == torch.float64
    with pytest.raises(ValueError, match="dtype 'int8': expected auto or one of"):
        P.choose_dtype("cuda", "int8")


def test_token_budget_from_memory_scales_with_memory_and_dtype():
    shape = {"hidden": 384, "intermediate": 1536, "heads": 12, "max_len": 256}
    per_token_bf16 = 2 * (6 * 384 + 2 * 1536 + 12 * 256) * 2
    small = P.token_budget_from_memory(8 << 30, dtype_bytes=2, **shape)
    assert small % 256 == 0
    assert small == int(0.5 * (8 << 30) // per_token_bf16) // 256 * 256
    assert P.token_budget_from_memory(4 << 30, dtype_bytes=4, **shape) < small
    # a large GPU hits the cap; a tiny one still gets one window
    assert P.token_budget_from_memory(140 << 30, dtype_bytes=2, **shape) == P.MAX_TOKEN_BUDGET
    assert P.token_budget_from_memory(1 << 20, dtype_bytes=4, **shape) == 256


def test_budget_for_a_cpu_device_and_an_explicit_request():
    class Cfg:
        hidden_size, intermediate_size, num_attention_heads = 384, 1536, 12

    class M:
        config = Cfg()

    cpu = torch.device("cpu")
    assert P.device_free_bytes(cpu) is None
    assert P.token_budget_for(M(), cpu, torch.float32, 256) == P.CPU_TOKEN_BUDGET
    assert P.token_budget_for(M(), cpu, torch.float32, 256, requested=100) == 256
    assert P.token_budget_for(M(), cpu, torch.float32, 256, requested=5000) == 5000


def test_attention_and_device_defaults():
    assert P.attention_implementation() == "sdpa"  # torch >= 2.0 has fused SDPA
    assert P.resolve_device("cpu").type == "cpu"
    assert P.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert P.min_cosine([[1.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [0.0, 1.0]]) == pytest.approx(1)
    assert P.min_cosine([[1.0, 0.0]], [[0.0, 1.0]]) == pytest.approx(0.0)
