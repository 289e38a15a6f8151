"""Test-time selection: embed prompts, retrieve K candidates from the sharded index, pick N.

All strategies report the prompt's posterior variance after every pick (same formula), so
SIFT, nearest neighbours and random are comparable row by row in DuckDB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from sift_ops import sift as sift_ops
from sift_ops.index import search_shards
from tasks.corpus import CorpusReader
from tasks.index import iter_shard_indices, load_index_meta
from tasks.prompt_files import iter_prompt_lines

log = logging.getLogger(__name__)

STRATEGIES = ("sift", "nn", "random")


@dataclass
class Queries:
    ids: list[str]
    texts: list[str]


def load_queries(path: str | Path) -> Queries:
    """Prompts from JSONL (``text``/``prompt``/``query`` + optional ``query_id``/``id``) or a
    plain text file (one prompt per line). Errors name the file and line."""
    path = Path(path)
    ids: list[str] = []
    texts: list[str] = []
    for lineno, text, obj in iter_prompt_lines(path, "queries file"):
        ids.append(str((obj or {}).get("query_id", (obj or {}).get("id", f"q{lineno:06d}"))))
        texts.append(text)
    dupes = {q for q in ids if ids.count(q) > 1} if len(ids) < 50_000 else set()
    if dupes:
        raise ValueError(f"{path}: duplicate query_id values {sorted(dupes)[:5]}")
    return Queries(ids, texts)


def retrieve(paths, query_emb: np.ndarray, k: int, nprobe: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, doc_ids) ``[B, k]`` over every shard of the corpus index."""
    meta = load_index_meta(paths)
    if query_emb.shape[1] != meta["dim"]:
        raise ValueError(
            f"query embedding dimension {query_emb.shape[1]} != index dimension {meta['dim']}"
        )
    return search_shards(iter_shard_indices(paths, meta), query_emb, k, nprobe=nprobe)


def select_for_queries(
    reader: CorpusReader, paths, query_emb: np.ndarray, *, k: int, n: int, lam: float,
    strategy: str, seed: int = 0, min_gain: float | None = None, nprobe: int | None = None,
    block: int = 256, progress=None,
) -> dict[str, np.ndarray]:
    """Run retrieval + selection for ``query_emb [B, d]`` in blocks of ``block`` prompts.

    Returns arrays ``picks [B, n]`` (doc_id, -1 where none), ``variances [B, n]``,
    ``similarity [B, n]`` (inner product of the pick with the prompt), ``prior [B]``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if k < 1 or n < 1:
        raise ValueError(f"k and n must be positive (got k={k}, n={n})")
    k_eff = min(k, reader.n_chunks)
    if k_eff < k:
        log.warning("corpus has only %d chunks; retrieving K=%d instead of %d",
                    reader.n_chunks, k_eff, k)
    select = {"sift": sift_ops.sift_select, "nn": sift_ops.nn_select,
              "random": sift_ops.random_select}[strategy]
    gen = torch.Generator().manual_seed(seed)
    B = len(query_emb)
    picks = np.full((B, n), -1, dtype=np.int64)
    variances = np.zeros((B, n), dtype=np.float64)
    similarity = np.full((B, n), np.nan, dtype=np.float64)
    prior = np.zeros(B, dtype=np.float64)
    # one pass over the index shards for all prompts ([B, K] ids are small), then
    # candidate embeddings are fetched and selected block by block ([block, K, d] floats)
    all_scores, all_ids = retrieve(paths, query_emb, k_eff, nprobe)
    for start in range(0, B, block):
        q = query_emb[start : start + block]
        scores, ids = all_scores[start : start + block], all_ids[start : start + block]
        valid = ids >= 0
        # padding slots point at the first hit so fetch() stays in range; never picked
        safe_ids = np.where(valid, ids, ids[:, :1])
        cand = reader.fetch(safe_ids)["embedding"]
        kwargs = {"min_gain": min_gain, "valid": torch.from_numpy(valid)}
        if strategy == "random":
            kwargs["generator"] = gen
        sel = select(torch.from_numpy(q), torch.from_numpy(cand), n, lam, **kwargs)
        idx = sel.indices.numpy()
        has = idx >= 0
        rows = np.arange(len(q))[:, None]
        safe_idx = np.where(has, idx, 0)
        picks[start : start + len(q)] = np.where(has, safe_ids[rows, safe_idx], -1)
        similarity[start : start + len(q)] = np.where(has, scores[rows, safe_idx], np.nan)
        variances[start : start + len(q)] = sel.variances.double().numpy()
        prior[start : start + len(q)] = sel.prior_variance.double().numpy()
        if progress is not None:
            progress(len(q))
    return {"picks": picks, "variances": variances, "similarity": similarity, "prior": prior}


def selection_rows(run_id: str, strategy: str, query_ids: list[str],
                   result: dict[str, np.ndarray]) -> pa.Table:
    """Long-format rows for ``test_time_selections`` (one per pick; rank is 1-based)."""
    picks = result["picks"]
    B, n = picks.shape
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
