"""Greedy responses of a causal LM to instruction prompts, and their uncertainty.

Pure torch/transformers.  For a batch of prompts:

1. each prompt (instruction, plus the input after a blank line) is wrapped in the model's
   chat template as one user turn when the tokenizer has a template, else used as is;
2. prompts are tokenised with LEFT padding (every row's last prompt token sits in the
   same column, so one ``generate`` call continues all rows) and generated greedily with
   the KV cache, up to ``max_new_tokens`` tokens;
3. the raw next-token logits of every generated position (``output_logits``, before any
   logits processor) and the chosen tokens go through
   :func:`sift_ops.uncertainty.token_uncertainty`.

A response ends at its first EOS token; the EOS position itself is scored (the model's
confidence in stopping is part of its answer) but not counted in ``gen_tokens``.
Prompts are tokenised once and processed in length-sorted micro-batches bounded by a token
budget (rows x (longest prompt + max_new_tokens) padded tokens, the size of the KV cache
the batch fills) and by a row cap, so little compute goes to padding, long prompts share a
batch with few others and short ones with many; results come back in input order.
On CPU each prompt but its last token is first run through the model alone (no padding:
prefill is most of the CPU time, and even length-sorted batches of 16 sample-pool prompts
were 30 % padding); the rows' caches are left-padded into one batch cache and ``generate``
continues from it, one cached decode step per token for the whole batch. Elsewhere
``generate`` runs the padded prompts as one prefill pass. Either way the positions and the
attention mask are those of the padded batch, so the scores agree to float rounding.
On CUDA the budget comes from the free memory (:func:`lm_token_budget`). The model's dtype
only changes the forward passes (the uncertainty scores are always computed in float32),
but bf16 forward passes change the greedy answers themselves (measured:
benchmarks/README.md), so scoring runs float32 unless bf16 is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sift_ops.embedding import budget_batches
from sift_ops.precision import MAX_TOKEN_BUDGET, device_free_bytes
from sift_ops.uncertainty import UNCERTAINTY_KEYS, token_uncertainty

__all__ = ["SCORE_KEYS", "build_prompts", "count_tokens", "greedy_scores", "lm_token_budget",
           "prompt_text"]

#: every per-item number :func:`greedy_scores` returns
SCORE_KEYS = (*UNCERTAINTY_KEYS, "gen_tokens", "prompt_tokens")


def prompt_text(instruction: str, input_text: str | None) -> str:
    """The user turn for one pool item: the instruction, then its input if any."""
    if input_text and input_text.strip():
        return f"{instruction}\n\n{input_text}"
    return instruction


def build_prompts(tokenizer: Any, texts: Sequence[str]) -> list[str]:
    """Wrap each text in the chat template (one user turn + generation prompt) when the
    tokenizer has one; otherwise return the texts unchanged."""
    if not getattr(tokenizer, "chat_template", None):
        return list(texts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                      add_generation_prompt=True)
        for t in texts
    ]


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """``[n]`` int64 token counts of the raw texts (no template, no special tokens): the
    prompt part of an item's annotation cost."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def lm_token_budget(free_bytes: int, *, layers: int, hidden: int, intermediate: int,
                    kv_dim: int, vocab: int, max_new_tokens: int, dtype_bytes: int,
                    fraction: float = 0.5) -> tuple[int, int]:
    """``(token_budget, max_rows)`` for greedy scoring in ``fraction`` of ``free_bytes``.

    Per token of the batch (prompt + response, padded): the KV cache, 2 x layers x kv_dim
    values, plus one layer's activations during prefill (6 x hidden + 2 x intermediate),
    twice for slack. Per row: the raw logits kept for scoring, max_new_tokens x vocab, in the
    model dtype and again as float32 when scored; that bounds the rows.
    """
    per_token = (2 * layers * kv_dim + 2 * (6 * hidden + 2 * intermediate)) * dtype_bytes
    per_row = max_new_tokens * vocab * (dtype_bytes + 4)
    usable = fraction * max(free_bytes, 0)
    budget = int(min(usable / 2 // per_token, MAX_TOKEN_BUDGET))
    rows = int(max(1, usable / 2 // per_row))
    return max(budget, 1), rows


def _model_token_budget(model: Any, max_new_tokens: int) -> tuple[int | None, int | None]:
    dev = next(model.parameters()).device
    free = device_free_bytes(dev)
    if free is None:
        return None, None
    cfg = model.config
    hidden = int(cfg.hidden_size)
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    return lm_token_budget(
        free, layers=int(cfg.num_hidden_layers), hidden=hidden,
        intermediate=int(getattr(cfg, "intermediate_size", 4 * hidden)),
        kv_dim=kv_heads * head_dim, vocab=int(cfg.vocab_size), max_new_tokens=max_new_tokens,
        dtype_bytes=next(model.parameters()).element_size())


@torch.inference_mode()
def greedy_scores(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int | None = 16,
    max_prompt_tokens: int = 1024,
    token_budget: int | None = None,
    prefill: str | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Greedy-generate a response to every text and score it.

    Args:
        model, tokenizer: from :func:`sift_ops.causal_lm.load_causal_lm` (left padding).
        texts: ``n`` user prompts (see :func:`prompt_text`).
        max_new_tokens: response length cap (tokens).
        batch_size: at most this many prompts per ``generate`` call (None: the token
            budget alone; on CUDA the free memory also caps the rows).
        max_prompt_tokens: longer templated prompts keep their LAST tokens (the end of
            the input and the generation prompt matter most for the response).
        token_budget: at most this many padded tokens (rows x (longest prompt +
            max_new_tokens)) per call; None: from the free CUDA memory, or no token bound
            on CPU (the row cap alone, as before). A prompt longer than the budget is
            generated alone.
        prefill: "rows": each prompt (but its last token) runs through the model alone,
            unpadded, and the batch decodes from the joined cache (no compute on padding:
            on CPU prefill is most of the time and length-sorted batches of 16 were still
            30 % padding, benchmarks/README.md); "batch": one padded prefill inside
            ``generate``; None: "rows" on CPU, "batch" elsewhere (on a GPU one
            forward pass per prompt is launch-bound; unmeasured).
        timings: when given, seconds and token counts are added to it (keys
            ``tokenize_s``, ``prefill_s`` (row prefill; a batched prefill is inside
            ``generate_s``), ``generate_s``, ``score_s`` (stacking the logits and the
            uncertainty scores), ``prompt_tokens`` / ``prompt_slots`` (real / padded
            prompt positions of the batches), ``response_tokens`` / ``response_slots``
            (scored positions / rows x decode steps)): the benchmark's breakdown.

    Returns:
        dict of ``[n]`` arrays: the five uncertainty scores (float64, NaN for an empty
        response), ``gen_tokens`` (int64 response length, EOS excluded) and
        ``prompt_tokens`` (int64 length of the raw text, no template).
    """
    n = len(texts)
    out = {k: np.full(n, np.nan) for k in UNCERTAINTY_KEYS}
    out["gen_tokens"] = np.zeros(n, dtype=np.int64)
    out["prompt_tokens"] = count_tokens(tokenizer, texts)
    if n == 0:
        return out
    tm = timings if timings is not None else {}
    clock = time.perf_counter()
    prompts = build_prompts(tokenizer, texts)
    enc = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    lengths = np.fromiter((min(len(x), max_prompt_tokens) for x in enc), dtype=np.int64,
                          count=n)
    mem_budget, mem_rows = _model_token_budget(model, max_new_tokens)
    budget = token_budget or mem_budget or np.iinfo(np.int64).max
    caps = [c for c in (batch_size, mem_rows) if c]
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    dev = next(model.parameters()).device
    per_row = _use_row_prefill(prefill, dev)
    clock = _tick(tm, "tokenize_s", clock)
    for rows in budget_batches(lengths + max_new_tokens, budget, min(caps) if caps else None):
        ids = [enc[i][-max_prompt_tokens:] for i in rows]
        width = max(len(x) for x in ids)
        # left padding by hand: the token lists already exist, no second tokenizer pass
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, width - len(x):] = torch.as_tensor(x)
            attn[r, width - len(x):] = 1
        cache = _row_prefill_cache(model, ids, dev) if per_row else None
        if per_row and cache is False:  # not a plain KV cache: batched prefill from now on
            per_row, cache = False, None
        clock = _tick(tm, "prefill_s", clock)
        gen = model.generate(
            input_ids=input_ids.to(dev), attention_mask=attn.to(dev),
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
            output_logits=True, return_dict_in_generate=True, pad_token_id=pad_id,
            temperature=None, top_p=None, top_k=None,
            **({"cache": cache} if cache is not None else {}),
        )
        clock = _tick(tm, "generate_s", clock)
        resp = gen.sequences[:, width:]  # [b, T] generated tokens
        logits = torch.stack(gen.logits, dim=1)  # [b, T, V] raw logits that chose them
        is_eos = torch.zeros_like(resp, dtype=torch.bool)
        for e in eos:
            is_eos |= resp == e
        # valid = positions up to and including the first EOS
        before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
        mask = before == 0
        scores = token_uncertainty(logits, resp, mask)
        for k in UNCERTAINTY_KEYS:
            out[k][rows] = scores[k].double().cpu().numpy()
        out["gen_tokens"][rows] = (mask & ~is_eos).sum(dim=1).cpu().numpy()
        clock = _tick(tm, "score_s", clock)
        for key, value in (("prompt_tokens", sum(len(x) for x in ids)),
                           ("prompt_slots", len(ids) * width),
                           ("response_tokens", int(mask.sum())),
                           ("response_slots", mask.numel())):
            tm[key] = tm.get(key, 0) + value
        del gen, logits, cache
    return out


def _tick(timings: dict[str, float], key: str, since: float) -> float:
    now = time.perf_counter()
    timings[key] = timings.get(key, 0.0) + now - since
    return now


def _use_row_prefill(prefill: str | None, dev: torch.device) -> bool:
    if prefill is None:
        return dev.type == "cpu"
    if prefill not in ("rows", "batch"):
        raise ValueError(f"prefill must be 'rows', 'batch' or None, got {prefill!r}")
    return prefill == "rows"


def _row_prefill_cache(model: Any, ids: Sequence[Sequence[int]], dev: torch.device) -> Any:
    """KV cache of every row's prompt except its last token, each row run alone (no
    padding), then left-padded into one batch cache of ``max(len) - 1`` positions.

    ``generate`` given this cache and the full left-padded prompts feeds only the last
    column (every row's last prompt token) and continues from there: the same positions
    (cumulative attention mask) and the same masked attention as a padded prefill, without
    computing the padding. Returns None when no row has more than one token, and False
    when the model's cache is not a plain per-layer key/value cache (sliding windows,
    recurrent state...), which this cannot pad.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    span = max(len(x) for x in ids) - 1
    if span <= 0:
        return None
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for r, x in enumerate(ids):
        n = len(x) - 1
        if n <= 0:
            continue  # a one-token prompt: nothing to cache, its column stays masked
        pkv = model(input_ids=torch.as_tensor(x[:-1], device=dev)[None], use_cache=True,
                    logits_to_keep=1).cache
        layers = getattr(pkv, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return False
        if not keys:  # [b, kv_heads, span, head_dim] per layer, zeros where masked
            for layer in layers:
                keys.append(layer.keys.new_zeros((len(ids), *layer.keys.shape[1:2], span,
                                                  layer.keys.shape[-1])))
                values.append(layer.values.new_zeros((len(ids), *layer.values.shape[1:2], span,
                                                      layer.values.shape[-1])))
        for k, v, layer in zip(keys, values, layers, strict=True):
            k[r, :, span - n:] = layer.keys[0]
            v[r, :, span - n:] = layer.values[0]
    return DynamicCache(ddp_cache_data=list(zip(keys, values, strict=True)))
