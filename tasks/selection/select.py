"""Test-time selection: retrieve K exact candidates per prompt from the partitioned index,
pick N with SIFT, nearest neighbours (plain, or NN-F: near-duplicates filtered), random,
or Adaptive SIFT (SIFT stopped per prompt by the compute-proportional rule, so a prompt
may get fewer than N picks: count its rows).

All strategies report the prompt's posterior variance after every pick (same formula), so
SIFT, nearest neighbours and random are comparable row by row in DuckDB. Prompts stream
through in blocks: memory is bounded by the block, not by the prompt file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from sift_ops import sift as sift_ops
from tasks.index.search_service import SearchService
from tasks.selection.prompt_files import iter_prompt_lines

log = logging.getLogger(__name__)

STRATEGIES = ("sift", "nn", "nn-f", "random", "adaptive-sift")
DEFAULT_DUP_THRESHOLD = sift_ops.DEFAULT_DUP_THRESHOLD
DEFAULT_ALPHA = sift_ops.DEFAULT_ADAPTIVE_ALPHA


@dataclass
class Queries:
    ids: list[str]
    texts: list[str]


def iter_query_blocks(path: str | Path, block: int = 256) -> Iterator[Queries]:
    """Prompts from JSONL (``text``/``prompt``/``query`` + optional ``query_id``/``id``) or
    a plain text file (one prompt per line), ``block`` at a time. Errors name the file and
    line; a query_id seen twice is refused."""
    path = Path(path)
    seen: dict[str, int] = {}
    ids: list[str] = []
    texts: list[str] = []
    for lineno, text, obj in iter_prompt_lines(path, "queries file"):
        qid = str((obj or {}).get("query_id", (obj or {}).get("id", f"q{lineno:06d}")))
        if qid in seen:
            raise ValueError(f"{path}:{lineno}: duplicate query_id {qid!r} (first on line "
                             f"{seen[qid]})")
        seen[qid] = lineno
        ids.append(qid)
        texts.append(text)
        if len(ids) >= block:
            yield Queries(ids, texts)
            ids, texts = [], []
    if ids:
        yield Queries(ids, texts)


def load_queries(path: str | Path) -> Queries:
    """All prompts of a (small) prompt file at once."""
    ids: list[str] = []
    texts: list[str] = []
    for q in iter_query_blocks(path, block=1 << 30):
        ids += q.ids
        texts += q.texts
    return Queries(ids, texts)


def check_selection_args(strategy: str, k: int, n: int, lam: float,
                         dup_threshold: float = DEFAULT_DUP_THRESHOLD,
                         alpha: float = DEFAULT_ALPHA) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if k < 1 or n < 1:
        raise ValueError(f"k and n must be positive (got k={k}, n={n})")
    if not lam > 0:
        raise ValueError(f"lam must be > 0 (got {lam})")
    if not -1.0 <= dup_threshold <= 2.0:
        raise ValueError(f"dup_threshold is a cosine similarity, in [-1, 1] (above 1 turns "
                         f"the filter off); got {dup_threshold}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (got {alpha})")


def select_block(service: SearchService, query_emb: np.ndarray, *, k: int, n: int,
                 lam: float, strategy: str, generator: torch.Generator | None = None,
                 min_gain: float | None = None,
                 dup_threshold: float = DEFAULT_DUP_THRESHOLD,
                 alpha: float = DEFAULT_ALPHA) -> dict[str, np.ndarray]:
    """Retrieve + select for one block of prompts ``query_emb [b, d]``.

    Returns ``picks [b, n]`` (doc_id, -1 where none), ``rows [b, n]`` (vector-store rows,
    for fetching texts), ``variances [b, n]``, ``similarity [b, n]`` (exact inner product
    of the pick with the prompt), ``prior [b]``, ``n_used [b]`` (real picks per prompt:
    fewer than n when Adaptive SIFT stopped, NN-F ran out of non-duplicates or
    ``min_gain`` stopped) and, for Adaptive SIFT, ``full_variances [b, n]``: SIFT's
    variance path before the stop (what the rule looked at).
    """
    check_selection_args(strategy, k, n, lam, dup_threshold, alpha)
    k_eff = min(k, service.n_vectors)
    hits = service.search(query_emb, k_eff)
    valid = hits.rows >= 0
    select = {"sift": sift_ops.sift_select, "nn": sift_ops.nn_select,
              "nn-f": sift_ops.nnf_select, "random": sift_ops.random_select,
              "adaptive-sift": sift_ops.sift_select}[strategy]
    kwargs = {"min_gain": min_gain, "valid": torch.from_numpy(valid)}
    if strategy == "random":
        kwargs["generator"] = generator or torch.Generator().manual_seed(0)
    if strategy == "nn-f":
        kwargs["dup_threshold"] = dup_threshold
    sel = select(torch.from_numpy(np.ascontiguousarray(query_emb, dtype=np.float32)),
                 torch.from_numpy(hits.vectors), n, lam, **kwargs)
    extra = {}
    if strategy == "adaptive-sift":
        extra["full_variances"] = sel.variances.double().numpy()
        sel = sift_ops.adaptive_stop(sel, alpha)
    idx = sel.indices.numpy()
    has = idx >= 0
    at = np.arange(len(idx))[:, None]
    safe = np.where(has, idx, 0)
    return {
        "picks": np.where(has, hits.doc_ids[at, safe], -1),
        "rows": np.where(has, hits.rows[at, safe], -1),
        "similarity": np.where(has, hits.scores[at, safe], np.nan).astype(np.float64),
        "variances": sel.variances.double().numpy(),
        "prior": sel.prior_variance.double().numpy(),
        "n_used": sel.n_used.numpy().astype(np.int64),
        **extra,
    }


def select_for_queries(service: SearchService, query_emb: np.ndarray, *, k: int, n: int,
                       lam: float, strategy: str, seed: int = 0,
                       min_gain: float | None = None, block: int = 256,
                       progress=None, dup_threshold: float = DEFAULT_DUP_THRESHOLD,
                       alpha: float = DEFAULT_ALPHA) -> dict[str, np.ndarray]:
    """:func:`select_block` over ``query_emb [B, d]`` in blocks of ``block`` prompts;
    the arrays of all blocks concatenated."""
    check_selection_args(strategy, k, n, lam, dup_threshold, alpha)
    if k > service.n_vectors:
        log.warning("corpus has only %d vectors; retrieving K=%d instead of %d",
                    service.n_vectors, service.n_vectors, k)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, len(query_emb), block):
        parts.append(select_block(service, query_emb[start : start + block], k=k, n=n,
                                  lam=lam, strategy=strategy, generator=gen,
                                  min_gain=min_gain, dup_threshold=dup_threshold,
                                  alpha=alpha))
        if progress is not None:
            progress(len(parts[-1]["prior"]))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def selection_rows(run_id: str, strategy: str, query_ids: list[str],
                   result: dict[str, np.ndarray]) -> pa.Table:
    """Long-format rows for ``test_time_selections`` (one per pick; rank is 1-based)."""
    picks = result["picks"]
    has = picks >= 0
    q_idx, rank = np.nonzero(has)
    return pa.table({
        "run_id": pa.array([run_id] * len(q_idx), pa.string()),
        "query_id": pa.array(np.asarray(query_ids, dtype=object)[q_idx], pa.string()),
        "rank": pa.array(rank + 1, pa.int32()),
        "doc_id": pa.array(picks[has], pa.int64()),
        "strategy": pa.array([strategy] * len(q_idx), pa.string()),
        "posterior_variance": pa.array(result["variances"][has], pa.float64()),
        "similarity": pa.array(result["similarity"][has], pa.float64()),
    })
