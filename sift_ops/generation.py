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
Prompts are processed in length-sorted micro-batches so that little compute goes to
padding; results come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sift_ops.uncertainty import UNCERTAINTY_KEYS, token_uncertainty

__all__ = ["SCORE_KEYS", "build_prompts", "count_tokens", "greedy_scores", "prompt_text"]

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


@torch.inference_mode()
def greedy_scores(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    max_prompt_tokens: int = 1024,
) -> dict[str, np.ndarray]:
    """Greedy-generate a response to every text and score it.

    Args:
        model, tokenizer: from :func:`sift_ops.causal_lm.load_causal_lm` (left padding).
        texts: ``n`` user prompts (see :func:`prompt_text`).
        max_new_tokens: response length cap (tokens).
        batch_size: prompts per ``generate`` call.
        max_prompt_tokens: longer templated prompts keep their LAST tokens (the end of
            the input and the generation prompt matter most for the response).

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
    prompts = build_prompts(tokenizer, texts)
    enc = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in enc), dtype=np.int64, count=n)
    order = np.argsort(lengths, kind="stable")
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    dev = next(model.parameters()).device
    for s in range(0, n, batch_size):
        rows = order[s : s + batch_size]
        ids = [enc[i][-max_prompt_tokens:] for i in rows]
        width = max(len(x) for x in ids)
        # left padding by hand: the token lists already exist, no second tokenizer pass
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            input_ids[r, width - len(x):] = torch.as_tensor(x)
            attn[r, width - len(x):] = 1
        gen = model.generate(
            input_ids=input_ids.to(dev), attention_mask=attn.to(dev),
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
            output_logits=True, return_dict_in_generate=True, pad_token_id=pad_id,
            temperature=None, top_p=None, top_k=None,
        )
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
        del gen, logits
    return out
