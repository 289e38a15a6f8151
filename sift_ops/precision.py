"""Device, dtype, attention and batch-size choices for the encoder and the causal LM.

Pure decisions (torch only, no model loading) so that the CUDA paths are unit-testable on a
CPU machine: every function takes the device facts (bf16 support, free memory) as
arguments, with a small wrapper that reads them from torch.

Rules:

* CPU runs in float32 unless a dtype is asked for (bf16 on CPU is allowed when asked: it
  is fast where the CPU has AMX/AVX512-BF16, and its embeddings are checked like CUDA's).
* CUDA runs in bfloat16 where the device supports it, else float16 (encoder) or float32
  (causal LM: fp16 logits over a 49k vocabulary overflow in the softmax's exponent range
  far more easily than an encoder's mean-pooled states, so the LM does not fall to fp16).
* Attention: PyTorch's fused ``scaled_dot_product_attention`` ("sdpa", which dispatches to
  flash / memory-efficient kernels on CUDA) whenever the installed torch has it.
* Token budget (padded tokens per forward pass) on CUDA from the free device memory and the
  model's shape; on CPU a fixed budget measured in ``benchmarks/bench_embed.py``.
"""

from __future__ import annotations

import torch

__all__ = [
    "CPU_TOKEN_BUDGET",
    "DTYPES",
    "MAX_TOKEN_BUDGET",
    "attention_implementation",
    "choose_dtype",
    "device_free_bytes",
    "min_cosine",
    "resolve_device",
    "token_budget_for",
    "token_budget_from_memory",
]

#: names accepted for ``dtype`` options (None / "auto": the rule above)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

#: padded tokens per encoder forward pass on CPU: 32 full 256-token windows (the old fixed 64
#: rows were 16,384 tokens for full windows). Not tuned beyond that: on CPU a forward pass
#: costs about the same per token from a few thousand tokens up, and smaller batches keep
#: the latency of a shard's last batch low.
CPU_TOKEN_BUDGET = 8192
#: never more than this many padded tokens per pass, whatever the memory: beyond ~256k
#: tokens a GPU is saturated and a larger batch only delays the first result.
MAX_TOKEN_BUDGET = 1 << 18


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def choose_dtype(device_type: str, requested: str | torch.dtype | None = None, *,
                 bf16_supported: bool = False, allow_fp16: bool = True) -> torch.dtype:
    """The compute dtype for a model on ``device_type`` ("cpu", "cuda", ...).

    ``requested`` (a name from :data:`DTYPES` or a torch dtype) wins; ``None``/"auto" gives
    float32 off CUDA and bf16 (if ``bf16_supported``), else fp16 (if ``allow_fp16``), else
    float32 on CUDA.
    """
    if isinstance(requested, torch.dtype):
        return requested
    if requested not in (None, "", "auto"):
        key = str(requested).lower().removeprefix("torch.")
        if key not in DTYPES:
            raise ValueError(f"dtype {requested!r}: expected auto or one of "
                             f"{', '.join(sorted(DTYPES))}")
        return DTYPES[key]
    if device_type != "cuda":
        return torch.float32
    if bf16_supported:
        return torch.bfloat16
    return torch.float16 if allow_fp16 else torch.float32


def cuda_bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and bool(torch.cuda.is_bf16_supported())


def attention_implementation() -> str:
    """"sdpa" when this torch has fused scaled-dot-product attention, else "eager"."""
    return "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "eager"


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device in bytes (None for other devices)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def token_budget_from_memory(free_bytes: int, *, hidden: int, intermediate: int, heads: int,
                             max_len: int, dtype_bytes: int, fraction: float = 0.5,
                             cap: int = MAX_TOKEN_BUDGET) -> int:
    """Padded tokens per forward pass that fit in ``fraction`` of ``free_bytes``.

    Inference keeps one layer's activations alive at a time; per token that is about the
    layer input and output, Q, K, V and the attention output (6 x hidden), the MLP's
    intermediate activation before and after the nonlinearity (2 x intermediate), and, should
    attention fall back to the unfused math kernel, one row of scores per head (heads x
    max_len). Counted at ``dtype_bytes`` each, with a factor 2 for allocator slack and
    temporaries. The result is a multiple of ``max_len`` (whole windows), at least one
    window, at most ``cap``.
    """
    per_token = 2 * (6 * hidden + 2 * intermediate + heads * max_len) * dtype_bytes
    budget = int(fraction * max(free_bytes, 0) // per_token)
    budget = min(budget, cap)
    return max(max_len, budget // max_len * max_len)


def token_budget_for(model, device: torch.device, dtype: torch.dtype, max_len: int,
                     requested: int | None = None) -> int:
    """The encoder's token budget: ``requested`` if given, else from the free CUDA memory
    (:func:`token_budget_from_memory`), else :data:`CPU_TOKEN_BUDGET`."""
    if requested:
        return max(int(requested), max_len)
    free = device_free_bytes(device)
    if free is None:
        return max(CPU_TOKEN_BUDGET, max_len)
    cfg = model.config
    hidden = int(cfg.hidden_size)
    return token_budget_from_memory(
        free, hidden=hidden, intermediate=int(getattr(cfg, "intermediate_size", 4 * hidden)),
        heads=int(getattr(cfg, "num_attention_heads", 1)), max_len=max_len,
        dtype_bytes=torch.empty((), dtype=dtype).element_size())


def min_cosine(a, b) -> float:
    """Smallest row-wise cosine similarity between two ``[n, d]`` arrays/tensors."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return float(cos.min()) if cos.numel() else 1.0
