"""Evaluation plumbing: held-out documents, selected texts, fine-tune/score loops, result rows.

Two evaluations (the flows in flows/eval_ttt.py and flows/eval_budget.py, their tasks in
tasks/evaluation/ttt.py and tasks/evaluation/budget.py):

* test-time fine-tuning (TTT): a held-out document is cut into a prompt (prefix) and a
  continuation; chunks selected for the prompt from the indexed corpus fine-tune the LM,
  one Adam step each; the continuation's bits per byte is measured; the weights are
  restored before the next prompt.
* label efficiency: pool items chosen by a strategy at a budget are "annotated" with the
  sample's reference responses, the LM is fine-tuned on them, and the mean loss (nats per
  response token) on held-out test items is measured.

The math lives in :mod:`sift_ops.finetune`; this module reads files, joins texts and builds
the rows of the ``evaluations`` table.
"""

from __future__ import annotations

import json
import math
import random
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from sift_ops import finetune as ft
from sift_ops.generation import prompt_text
from sift_ops.pool_strategies import rank_items

#: Two texts are near duplicates when the Jaccard similarity of their word 3-gram sets is
#: at least this. Measured on the sample generator's copies
#: (tests/unit/tasks/sample/test_sample.py):
#: lightly edited copies >= 0.45 (a changed line in a 40-word function is the worst case),
#: distinct sample documents <= 0.04.
NEAR_DUP_JACCARD = 0.3
#: Long lines are the unit of the overlap check between a held-out document and the corpus
#: (short lines such as ``return x`` or ``else:`` occur everywhere and prove nothing).
LONG_LINE = 30
#: Documents reserved for the learning-rate sweep (split "dev"); the rest is split "test".
DEV_DOCS = 40
_SPLIT_SEED = 20261121


# --------------------------------------------------------------------------- held-out docs


@dataclass(frozen=True)
class HeldOutDoc:
    """A document that is not in the corpus, cut into ``prompt`` + ``continuation``."""

    key: str  # "news:<category>/<file>.txt" or "code:<module>.<qualname>"
    source: str
    prompt: str
    continuation: str


def split_document(text: str, prompt_chars: int, continuation_chars: int
                   ) -> tuple[str, str] | None:
    """Cut ``text`` at a whitespace boundary near ``prompt_chars`` into (prompt,
    continuation), the continuation ending at a whitespace boundary near
    ``continuation_chars`` characters later. None when the text is too short.

    The cut is at whitespace so the continuation starts a word (a mid-word cut would make
    its first token an artefact of the cut, not of the text).
    """
    if len(text) < prompt_chars + continuation_chars // 2:
        return None
    cut = text.rfind(" ", prompt_chars // 2, prompt_chars + 1)
    cut = text.rfind("\n", prompt_chars // 2, prompt_chars + 1) if cut < 0 else cut
    if cut <= 0:
        return None
    prompt, rest = text[:cut], text[cut:]
    if len(rest) > continuation_chars:
        end = max(rest.rfind(" ", continuation_chars // 2, continuation_chars + 1),
                  rest.rfind("\n", continuation_chars // 2, continuation_chars + 1))
        rest = rest[:end] if end > 0 else rest[:continuation_chars]
    if len(rest.strip()) < continuation_chars // 4:
        return None
    return prompt, rest


def _long_lines(text: str) -> set[str]:
    return {s for line in text.splitlines() if len(s := line.strip()) >= LONG_LINE}


def corpus_long_lines(pile_dir: str | Path) -> set[str]:
    """Every long line (>= 30 characters, stripped) of the corpus in ``pile_dir``."""
    from tasks.corpus.pile_reader import PileDoc, iter_pile_file, list_pile_files

    lines: set[str] = set()
    for path in list_pile_files(pile_dir):
        for doc in iter_pile_file(path):
            if isinstance(doc, PileDoc):
                lines |= _long_lines(doc.text)
    return lines


def heldout_candidates(pile_dir: str | Path, *, prompt_chars: int, continuation_chars: int
                       ) -> list[HeldOutDoc]:
    """BBC articles and stdlib functions sharing no long line with the corpus, split.

    The sample's sources (tasks/sample/bundled.py) hold far more text than the corpus uses, so the
    rest is a natural held-out set from the same distribution. A document is kept only if
    none of its long lines occurs anywhere in the corpus, which also drops the BBC set's
    near-duplicate articles and methods quoted under a class header. Deterministic order.
    """
    # the loaders are the sample builder's own, so held-out text is parsed exactly like
    # the corpus was
    from tasks.sample.bundled import CODE_SOURCE, NEWS_SOURCE, _bbc_data_dir, _load_code, _load_news

    seen = corpus_long_lines(pile_dir)
    out: list[HeldOutDoc] = []
    for a in _load_news(str(_bbc_data_dir())):
        text = a.text
        if _long_lines(text) & seen:
            continue
        cut = split_document(text, prompt_chars, continuation_chars)
        if cut:
            out.append(HeldOutDoc(f"news:{a.path}", NEWS_SOURCE, *cut))
    for u in _load_code(sysconfig.get_paths()["stdlib"]):
        if u.kind != "function" or not u.doc_text or (_long_lines(u.doc_text) & seen):
            continue
        cut = split_document(u.doc_text, prompt_chars, continuation_chars)
        if cut:
            out.append(HeldOutDoc(f"code:{u.module}.{u.qualname}", CODE_SOURCE, *cut))
    return out


def choose_docs(candidates: Sequence[HeldOutDoc], n_docs: int, seed: int, split: str
                ) -> list[HeldOutDoc]:
    """``n_docs`` documents for one seed, half news and half code.

    The candidates are first cut once (fixed seed) into ``dev`` (the first
    :data:`DEV_DOCS` of each source, for tuning the learning rate) and ``test`` (the
    rest), so the tuned setting is never scored on the documents it was tuned on.
    """
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test' (got {split!r})")
    by_source: dict[str, list[HeldOutDoc]] = {}
    for d in candidates:
        by_source.setdefault(d.source, []).append(d)
    rng = random.Random(seed)
    chosen: list[HeldOutDoc] = []
    sources = sorted(by_source)
    for i, src in enumerate(sources):
        docs = list(by_source[src])
        random.Random(_SPLIT_SEED).shuffle(docs)
        pool = docs[:DEV_DOCS] if split == "dev" else docs[DEV_DOCS:]
        want = n_docs // len(sources) + (i < n_docs % len(sources))
        if len(pool) < want:
            raise ValueError(f"only {len(pool)} held-out {src} documents in split {split}")
        chosen += rng.sample(pool, want)
    return chosen


# --------------------------------------------------------------------------- TTT loop


def fetch_texts(service: Any, rows: np.ndarray) -> list[list[str]]:
    """Chunk texts for ``rows [B, n]`` (vector-store rows of the picks, -1 = none), in
    pick order, per prompt; only the picks' row groups are read."""
    texts = service.texts(rows)["text"]
    return [[t for r, t in zip(rr, tt, strict=True) if r >= 0]
            for rr, tt in zip(rows.tolist(), texts.tolist(), strict=True)]


def pick_overlap(picks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per prompt, the share of ``picks``' distinct chunks that ``reference`` also picked.

    ``picks``, ``reference``: doc_ids ``[B, n]`` (-1 = none). Returns ``[B]`` floats in
    [0, 1]; NaN for a prompt with no picks. SIFT against NN tells how different the two
    fine-tuning sets really are (a small difference cannot show in bits per byte).
    """
    if picks.shape[0] != reference.shape[0]:
        raise ValueError(f"{picks.shape[0]} prompts vs {reference.shape[0]} in the reference")
    out = np.full(picks.shape[0], np.nan)
    for i, (row, ref) in enumerate(zip(picks.tolist(), reference.tolist(), strict=True)):
        mine = {d for d in row if d >= 0}
        if mine:
            out[i] = len(mine & {d for d in ref if d >= 0}) / len(mine)
    return out


def _shingles(text: str, n: int = 3) -> frozenset:
    words = text.split()
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def duplicate_stats(texts: Sequence[str], jaccard: float = NEAR_DUP_JACCARD
                    ) -> dict[str, float]:
    """How redundant one prompt's picks are, in pick order.

    Returns ``dup_exact``: share of picks whose text equals an earlier pick's;
    ``dup_near``: share of picks that are a near duplicate of an earlier pick (word
    3-gram Jaccard >= ``jaccard``, which includes exact repeats); ``distinct``: distinct
    texts; ``distinct_near``: picks that are no near duplicate of an earlier pick. Shares
    are NaN without picks. Quadratic in the picks (N <= a few hundred).
    """
    seen: set[str] = set()
    kept: list[frozenset] = []
    exact = near = 0
    for t in texts:
        sh = _shingles(t)
        if t in seen:
            exact += 1
            near += 1
        elif any(sh and k and len(sh & k) >= jaccard * len(sh | k) for k in kept):
            near += 1
        else:
            kept.append(sh)
        seen.add(t)
    n = len(texts)
    return {"dup_exact": exact / n if n else float("nan"),
            "dup_near": near / n if n else float("nan"),
            "distinct": float(len(seen)), "distinct_near": float(n - near)}


def ttt_rows_for_doc(model: torch.nn.Module, tokenizer: Any, base: dict[str, torch.Tensor],
                     doc: HeldOutDoc, selected: dict[str, list[str]], *, lr: float,
                     max_train_tokens: int, max_prompt_tokens: int | None = None,
                     equal_compute_steps: int | None = None) -> list[dict[str, Any]]:
    """Base and per-strategy bits per byte of one document's continuation.

    ``selected[strategy]`` are the chunk texts in pick order (repeats allowed). The model
    must hold ``base`` weights on entry and holds them again on return (checked).

    A strategy whose texts are a prefix of another's (Adaptive SIFT's picks are SIFT's
    first ones; NN-F equals NN when the filter removes nothing) is scored part-way
    through that strategy's run instead of being trained again: the first i steps of a
    run are exactly a run on the first i texts (same texts, same fresh Adam, same order),
    so the numbers are the same and the compute is not spent twice. With
    ``equal_compute_steps`` s, every strategy is also scored after min(s, its steps)
    steps (``bpb_equal_compute``): the comparison at Adaptive SIFT's compute.
    """
    nll, n_tok = ft.continuation_nll(model, tokenizer, doc.prompt, doc.continuation,
                                     max_prompt_tokens=max_prompt_tokens)
    base_bpb = ft.bits_per_byte(nll, doc.continuation)
    rows = [{"doc": doc.key, "source": doc.source, "strategy": "base", "steps": 0,
             "distinct": 0, "bpb": base_bpb,
             "tokens": n_tok, "first_loss": float("nan"), "last_loss": float("nan")}]
    # host[s]: the strategy whose run scores s (the longest list that s is a prefix of)
    host: dict[str, str] = {}
    for s in sorted(selected, key=lambda s: -len(selected[s])):
        texts = selected[s]
        host[s] = next((h for h in host if host[h] == h
                        and selected[h][:len(texts)] == texts), s)
    for h in [s for s in selected if host[s] == s]:
        texts = selected[h]
        want = {len(selected[s]) for s in selected if host[s] == h}
        if equal_compute_steps is not None:
            want |= {min(equal_compute_steps, len(selected[s]))
                     for s in selected if host[s] == h}
        scores: dict[int, tuple[float, int]] = {0: (base_bpb, n_tok)}

        def score(i: int, want=want, scores=scores) -> None:
            if i in want:
                nll_i, n_i = ft.continuation_nll(model, tokenizer, doc.prompt,
                                                 doc.continuation,
                                                 max_prompt_tokens=max_prompt_tokens)
                scores[i] = (ft.bits_per_byte(nll_i, doc.continuation), n_i)

        try:
            losses = ft.test_time_finetune(model, tokenizer, texts, lr=lr,
                                           max_tokens=max_train_tokens, after_step=score)
        finally:
            ft.restore(model, base)
        for s in [s for s in selected if host[s] == h]:
            steps = len(selected[s])
            mine = losses[:steps]
            row = {"doc": doc.key, "source": doc.source, "strategy": s, "steps": steps,
                   **duplicate_stats(selected[s]),
                   "bpb": scores[steps][0], "tokens": scores[steps][1],
                   "first_loss": mine[0] if mine else float("nan"),
                   "last_loss": mine[-1] if mine else float("nan"),
                   "trained_with": h}
            if equal_compute_steps is not None:
                at = min(equal_compute_steps, steps)
                row["equal_compute_steps"] = at
                row["bpb_equal_compute"] = scores[at][0]
            rows.append(row)
    order = {s: i for i, s in enumerate(["base", *selected])}
    rows.sort(key=lambda r: order[r["strategy"]])
    return rows


# --------------------------------------------------------------------------- pool data


@dataclass(frozen=True)
class PoolPair:
    item_id: str
    source: str
    prompt: str  # instruction + input, as the annotator sees it
    response: str  # the sample's reference response ("annotation")


def load_pool_pairs(pool: str | Path, references: str | Path) -> list[PoolPair]:
    """Join ``pool.jsonl`` with ``pool_references.jsonl`` on item_id (the "annotation")."""
    refs: dict[str, str] = {}
    with open(references, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                refs[str(r["item_id"])] = r["response"]
    out: list[PoolPair] = []
    with open(pool, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            p = json.loads(line)
            iid = str(p["item_id"])
            if iid not in refs:
                raise ValueError(f"{pool}:{lineno}: item {iid} has no reference response")
            # the user turn exactly as `rank` builds it for the LM (sift_ops.generation)
            prompt = prompt_text(p["instruction"], p.get("input"))
            out.append(PoolPair(iid, p.get("source", ""), prompt, refs[iid]))
    return out


def split_pool(pairs: Sequence[PoolPair], n_select: int, n_test: int, seed: int
               ) -> tuple[list[int], list[int]]:
    """Disjoint random (selection pool, test set) index lists for one seed."""
    if n_select + n_test > len(pairs):
        raise ValueError(f"pool has {len(pairs)} items; need {n_select} + {n_test}")
    perm = np.random.default_rng(seed).permutation(len(pairs)).tolist()
    return perm[n_test:n_test + n_select], perm[:n_test]


def budget_sizes(n_pool: int, fractions: Sequence[float]) -> list[int]:
    """Items per budget fraction (ceil, at least 1, at most the pool)."""
    return [min(n_pool, max(1, math.ceil(f * n_pool - 1e-9))) for f in fractions]


def rank_pool(strategy: str, emb: np.ndarray, targets: np.ndarray, n: int, *, seed: int,
              lam: float = 0.1, scores: Mapping[str, np.ndarray] | None = None) -> list[int]:
    """An order of ``n`` distinct pool items for ``strategy`` (prefixes are the budgets).

    Args:
        strategy: one of :data:`sift_ops.pool_strategies.STRATEGIES`.
        emb: ``[n_pool, d]`` float32 L2-normalised embeddings of the pool prompts.
        targets: ``[m, d]`` embeddings of the test prompts (unlabelled, so the
            transductive ``sift`` may look at them; the others ignore them).
        n: length of the order (at most ``n_pool``).
        seed: seed of ``random`` and of the top-up below.
        lam: SIFT noise parameter.
        scores: ``[n_pool]`` float arrays keyed by uncertainty metric (``mean_entropy``
            ...; NaN = not scored), the base LM's greedy-answer uncertainty; needed by
            :data:`sift_ops.pool_strategies.LM_STRATEGIES` (ValueError without them).

    The order is :func:`sift_ops.pool_strategies.rank_items`'s pick order under a budget
    of ``n`` items, one group, unit costs: every strategy there is a sort or a greedy, so
    the first ``b`` items of the order are exactly its picks at a budget of ``b``. A
    strategy that stops early (nothing left to gain) is topped up from a seeded random
    permutation so every budget gets its number of items.
    """
    ranking = rank_items(strategy, emb, scores, None, None, float(n), targets=targets,
                         seed=seed, lam=lam)
    return _distinct_prefix(ranking.index.tolist(), len(emb), n, seed)


def _distinct_prefix(order: list[int], n_pool: int, n: int, seed: int) -> list[int]:
    """The first ``n`` distinct items of ``order``, topped up from a seeded permutation
    of the pool when the strategy picked fewer."""
    out: list[int] = []
    seen: set[int] = set()
    rest = np.random.default_rng(seed).permutation(n_pool).tolist()
    for i in [*order, *rest]:
        if i not in seen and 0 <= i < n_pool:
            seen.add(i)
            out.append(i)
            if len(out) == n:
                break
    return out


# --------------------------------------------------------------------------- rows


def evaluation_rows(run_id: str, kind: str, records: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows for the ``evaluations`` table from dicts with strategy, budget, seed, metric,
    value."""
    return pa.table({
        "run_id": pa.array([run_id] * len(records), pa.string()),
        "kind": pa.array([kind] * len(records), pa.string()),
        "strategy": pa.array([r["strategy"] for r in records], pa.string()),
        "budget": pa.array([float(r["budget"]) for r in records], pa.float64()),
        "seed": pa.array([int(r["seed"]) for r in records], pa.int32()),
        "metric": pa.array([r["metric"] for r in records], pa.string()),
        "value": pa.array([float(r["value"]) for r in records], pa.float64()),
    })


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
