"""Fine-tuning math for the evaluations: bits per byte, one Adam step per text, weight restore.

Pure torch (plus a Hugging Face tokenizer/model passed in): no Prefect, Ray or DuckDB.

Units:
* negative log-likelihoods are in nats, summed over the scored tokens;
* bits per byte (bpb) = total NLL / ln 2 / number of UTF-8 bytes of the scored text. It
  does not depend on the tokenizer (a model that tokenizes coarser is not rewarded), which
  is why the SIFT paper reports it.

Test-time fine-tuning (:func:`test_time_finetune`) takes one optimizer step per selected
text, in selection order, with a fresh Adam each prompt, and the caller restores the
weights from a :func:`snapshot` afterwards, so every prompt starts from the same base
model. Supervised fine-tuning on (prompt, response) pairs (:func:`sft_train`) masks the
prompt tokens out of the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "IGNORE",
    "PairExample",
    "bits_per_byte",
    "collate_right",
    "continuation_nll",
    "encode_pair",
    "make_optimizer",
    "pairs_nll",
    "restore",
    "same_weights",
    "sft_train",
    "snapshot",
    "test_time_finetune",
    "text_step",
]

IGNORE = -100  # label value that Hugging Face causal-LM losses skip
LN2 = math.log(2.0)


# --------------------------------------------------------------------------- weights


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (``state_dict`` clone, same device).

    Memory: one extra copy of the model (540 MB for a 135M-parameter fp32 model).
    """
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`snapshot`) back into ``model`` in place, bit for bit.

    In place (``copy_``) rather than ``load_state_dict`` on new tensors so tied weights
    (embedding and LM head share one tensor) stay tied and no memory is reallocated.
    """
    current = model.state_dict()
    missing = set(current) - set(state)
    if missing:
        raise KeyError(f"snapshot lacks {sorted(missing)[:3]}")
    for k, v in current.items():
        v.copy_(state[k])
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """True when every tensor of ``model`` equals ``state`` exactly (not approximately)."""
    current = model.state_dict()
    return set(current) == set(state) and all(torch.equal(current[k], state[k])
                                               for k in current)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over the trainable parameters; no weight decay (a few steps only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one fused kernel per step over all tensors, much faster than a Python loop
    return torch.optim.Adam(params, lr=lr, foreach=True)


# --------------------------------------------------------------------------- scoring


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _ids(tokenizer: Any, text: str) -> list[int]:
    # no BOS/EOS: the prompt and the continuation are tokenized separately and joined, so
    # the scored tokens decode to exactly the continuation's bytes
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def continuation_nll(model: torch.nn.Module, tokenizer: Any, prompt: str, continuation: str,
                     *, max_prompt_tokens: int | None = None) -> tuple[float, int]:
    """``(NLL in nats summed over the continuation's tokens, number of those tokens)``.

    The prompt and continuation are tokenized separately (no special tokens) and joined;
    only continuation tokens are scored, each conditioned on the prompt and on the earlier
    continuation tokens. ``max_prompt_tokens`` keeps only the prompt's last tokens.
    """
    p_ids = _ids(tokenizer, prompt)
    c_ids = _ids(tokenizer, continuation)
    if not c_ids:
        raise ValueError("empty continuation")
    if max_prompt_tokens is not None:
        p_ids = p_ids[-max_prompt_tokens:] if max_prompt_tokens > 0 else []
    if not p_ids:  # the first continuation token needs something to condition on
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
            tokenizer.eos_token_id
        p_ids = [bos]
    ids = torch.tensor([p_ids + c_ids], device=_device(model))
    logits = model(input_ids=ids).logits[0, :-1].float()  # [T-1, V] predicts token t+1
    targets = ids[0, 1:]
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return float(nll[len(p_ids) - 1:].sum()), len(c_ids)


def bits_per_byte(nll_nats: float, text: str) -> float:
    """Bits per UTF-8 byte of ``text`` given its total NLL in nats."""
    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("bits per byte of an empty text")
    return nll_nats / LN2 / n_bytes


# --------------------------------------------------------------------------- training


def text_step(model: torch.nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
              text: str, *, max_tokens: int) -> float:
    """One optimizer step of next-token loss on ``text`` (its first ``max_tokens`` tokens).

    Returns the mean token loss (nats) before the step. Texts shorter than 2 tokens are
    skipped (nothing to predict) and return NaN.
    """
    ids = _ids(tokenizer, text)[:max_tokens]
    if len(ids) < 2:
        return float("nan")
    x = torch.tensor([ids], device=_device(model))
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def test_time_finetune(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *,
                       lr: float, max_tokens: int = 256,
                       after_step: Callable[[int], None] | None = None) -> list[float]:
    """Fine-tune on ``texts`` in order, one Adam step each (fresh optimizer state).

    ``after_step(i)`` is called after the i-th step (1-based), e.g. to score the model
    part-way: the first i steps are exactly what a run on ``texts[:i]`` would do, so one
    run serves every prefix. The caller owns restoring the weights (:func:`snapshot`
    before, :func:`restore` after). Returns the per-step losses (nats per token, before
    each step).
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0 (got {lr})")
    opt = make_optimizer(model, lr)
    try:
        losses = []
        for i, t in enumerate(texts, start=1):
            losses.append(text_step(model, tokenizer, opt, t, max_tokens=max_tokens))
            if after_step is not None:
                after_step(i)
        return losses
    finally:
        del opt  # Adam's moments are two more model-sized tensors: free them now


test_time_finetune.__test__ = False  # type: ignore[attr-defined]  # pytest: not a test


@dataclass(frozen=True)
class PairExample:
    """A tokenized (prompt, response) pair: ``input_ids`` and ``labels`` (prompt masked)."""

    input_ids: list[int]
    labels: list[int]


def encode_pair(tokenizer: Any, prompt: str, response: str, *, max_prompt_tokens: int = 128,
                max_response_tokens: int = 96) -> PairExample:
    """Chat-format ``prompt`` as a user turn and ``response`` as the assistant turn.

    Only response tokens (and the end-of-turn token, when the template has one) carry
    labels. The prompt text is cut to its first ``max_prompt_tokens`` tokens before the
    chat template is applied (the instruction comes first and must survive; template
    tokens come on top), the response to its first ``max_response_tokens``.
    """
    raw = _ids(tokenizer, prompt)
    if len(raw) > max_prompt_tokens:
        prompt = tokenizer.decode(raw[:max_prompt_tokens])
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
        p_ids = _ids(tokenizer, head)
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        tail = [eos] if isinstance(eos, int) and eos != tokenizer.unk_token_id else []
    else:
        p_ids = _ids(tokenizer, prompt + "\n")
        tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    r_ids = _ids(tokenizer, response)[:max_response_tokens] + tail
    return PairExample(p_ids + r_ids, [IGNORE] * len(p_ids) + r_ids)


def collate_right(batch: Sequence[PairExample], pad_id: int,
                  device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]``.

    Right padding keeps position ids 0..len-1 for every row (left padding would shift
    them), and causal attention never lets a real token see the pads after it.
    """
    T = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


def _batch_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor,
                                                                               int]:
    """(summed NLL over labelled tokens as a tensor, number of labelled tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                            targets.reshape(-1), ignore_index=IGNORE,
                                            reduction="sum")
    return nll, int((targets != IGNORE).sum())


@torch.no_grad()
def pairs_nll(model: torch.nn.Module, examples: Sequence[PairExample], pad_id: int, *,
              batch_size: int = 8, progress: Callable[[int], Any] | None = None
              ) -> tuple[float, int]:
    """``(NLL in nats summed over all response tokens, number of response tokens)``."""
    total, count = 0.0, 0
    dev = _device(model)
    # length-sorted batches waste less compute on padding; the sum does not depend on order
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for s in range(0, len(order), batch_size):
        batch = collate_right([examples[i] for i in order[s:s + batch_size]], pad_id, dev)
        nll, n = _batch_nll(model, batch)
        total += float(nll)
        count += n
        if progress is not None:
            progress(len(batch["input_ids"]))
    return total, count


def sft_train(model: torch.nn.Module, examples: Sequence[PairExample], pad_id: int, *,
              lr: float, epochs: int = 1, batch_size: int = 8,
              generator: torch.Generator | None = None,
              progress: Callable[[int], Any] | None = None) -> list[float]:
    """Supervised fine-tuning with Adam: ``epochs`` passes in shuffled mini-batches.

    The loss of a batch is the mean over its response tokens. Returns the batch losses
    (nats per token, before each step). A fixed number of epochs means a larger budget
    also buys more optimizer steps, as when a team annotates more data and trains on it.
    """
    if lr <= 0 or epochs < 1 or batch_size < 1:
        raise ValueError("need lr > 0, epochs >= 1 and batch_size >= 1")
    losses: list[float] = []
    if not examples:
        return losses
    opt = make_optimizer(model, lr)
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(examples), generator=generator).tolist()
            for s in range(0, len(perm), batch_size):
                batch = collate_right([examples[i] for i in perm[s:s + batch_size]], pad_id,
                                      _device(model))
                opt.zero_grad(set_to_none=True)
                nll, n = _batch_nll(model, batch)
                loss = nll / max(n, 1)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(len(batch["input_ids"]))
        opt.zero_grad(set_to_none=True)
    finally:
        del opt
    return losses
