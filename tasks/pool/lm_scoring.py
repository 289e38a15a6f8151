"""Ray Data actor stages over a pool's ``items.parquet``: LM uncertainty and prompt embeddings.

Both stages stream: Ray reads the Parquet in blocks of about ``rows_per_call`` rows, an
actor pool (one actor by default, each holding its model once) maps them, and the driver
collects small result rows (item id + a few numbers, or + one embedding) as they come,
so worker memory is bounded by a block, never by the pool.  Ray Data's default block
target (128 MB) would make one block of a whole Parquet row group (8,192 rows): results,
and the progress bar, would then arrive once per 8,192 items, after up to hours of LM
generation on a CPU; the stage sizes blocks from the file's bytes per row instead.
Workers never open DuckDB; the flow writes the returned Arrow tables.  Already-labelled
items are skipped.

Resources follow tasks/corpus/embed.py (:func:`tasks.runtime.ray_runtime.actor_resources`):
read tasks ask for half a CPU, an actor for at most one CPU and at least half, never all of
them (whole-CPU actors on a small machine starve the read task, and the stage hangs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sift_ops.generation import SCORE_KEYS, greedy_scores, prompt_text

log = logging.getLogger(__name__)

_READ_COLS = ["item_id", "instruction", "input", "output"]
NO_PROGRESS_TIMEOUT_S = 4 * 3600  # Ray Data's default is 1800 s


def _unlabeled_texts(batch: pa.Table) -> tuple[list[str], list[str]]:
    keep = [o is None for o in batch.column("output").to_pylist()]
    ids = [i for i, k in zip(batch.column("item_id").to_pylist(), keep, strict=True) if k]
    texts = [prompt_text(a, b) for a, b, k in zip(batch.column("instruction").to_pylist(),
                                                   batch.column("input").to_pylist(), keep,
                                                   strict=True) if k]
    return ids, texts


class LMScorer:
    """Ray Data actor: holds the causal LM; scores the greedy answer to each prompt."""

    def __init__(self, lm_path: str, max_new_tokens: int, gen_batch_size: int | None,
                 threads: int | None, max_prompt_tokens: int = 1024,
                 token_budget: int | None = None, dtype: str | None = None) -> None:
        import torch

        from sift_ops.causal_lm import load_causal_lm

        if threads:
            torch.set_num_threads(threads)
        # float32 unless asked: bf16 moved the scores of SmolLM2 by up to 0.33 in least
        # confidence (greedy answers diverge; benchmarks/README.md), so it is opt-in
        self.model, self.tok = load_causal_lm(lm_path, dtype=dtype or "float32")
        self.max_new_tokens = max_new_tokens
        self.gen_batch_size = gen_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.token_budget = token_budget

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        ids, texts = _unlabeled_texts(batch)
        s = greedy_scores(self.model, self.tok, texts, max_new_tokens=self.max_new_tokens,
                          batch_size=self.gen_batch_size,
                          max_prompt_tokens=self.max_prompt_tokens,
                          token_budget=self.token_budget)
        cols: dict[str, Any] = {"item_id": pa.array(ids, pa.string())}
        for k in SCORE_KEYS:
            cols[k] = pa.array(np.asarray(s[k], dtype=np.float64))
        cols["seconds"] = pa.array(np.full(len(ids), (time.perf_counter() - t0)
                                           / max(len(ids), 1)))
        return pa.table(cols)


class PromptEmbedder:
    """Ray Data actor: holds the sentence encoder; embeds every item's prompt (labelled
    items too: diversity strategies use them as already chosen)."""

    def __init__(self, model: str | None, max_tokens: int | None, threads: int | None,
                 batch_size: int = 64) -> None:
        from sift_ops.embedding import TextEncoder

        self.encoder = TextEncoder(model, max_tokens=max_tokens, threads=threads,
                                   batch_size=batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [prompt_text(a, b) for a, b in zip(batch.column("instruction").to_pylist(),
                                                   batch.column("input").to_pylist(),
                                                   strict=True)]
        emb = self.encoder.encode(texts)
        return pa.table({
            "item_id": batch.column("item_id"),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)),
                                                           emb.shape[1]),
        })


def block_bytes(items_parquet: str | Path, rows_per_call: int) -> int:
    """Ray Data block target (bytes) for blocks of about ``rows_per_call`` rows of the file
    (uncompressed bytes per row from the Parquet footer; at least 16 KiB)."""
    md = pq.ParquetFile(items_parquet).metadata
    total = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    per_row = total / max(1, md.num_rows)
    return int(max(16 << 10, per_row * max(1, rows_per_call)))


def run_actor_stage(items_parquet: str | Path, actor: type, kwargs: dict[str, Any], *,
                    rows_per_call: int, actors: int = 1, gpus_per_actor: float = 0.0,
                    progress: Callable[[int], None] | None = None,
                    ray_address: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Map ``actor`` over the pool's rows with Ray Data; return (results, stats).

    ``kwargs`` go to the actor's constructor; ``threads`` is filled in from the cluster
    size when None.  ``progress(n_rows)`` is called on the driver per result block.
    """
    import ray

    from tasks.runtime.ray_runtime import actor_resources, data_context, ensure_ray

    resources = ensure_ray(address=ray_address)
    kwargs = dict(kwargs)
    actor_cpus, actor_gpus, kwargs["threads"] = actor_resources(
        resources, actors, gpus_per_actor, kwargs.get("threads"))
    settings: dict[str, Any] = {
        "enable_progress_bars": False,  # the flow draws its own tqdm bar from the results
        "target_max_block_size": block_bytes(items_parquet, rows_per_call),
    }
    # Ray's hang detector (1800 s without a finished block) fired on a small machine when
    # one block held the whole pool; small blocks fix that, and a block of a slow CPU
    # generation (64 items x a few s) still gets hours before it counts as a hang.
    no_progress_s = ray.data.DataContext.get_current().execution_no_progress_timeout_s
    if (no_progress_s or 0) > 0:  # <= 0: the user turned it off
        settings["execution_no_progress_timeout_s"] = max(NO_PROGRESS_TIMEOUT_S, no_progress_s)
    with data_context(**settings):
        ds = ray.data.read_parquet(str(items_parquet), num_cpus=0.5).select_columns(_READ_COLS)
        ds = ds.map_batches(
            actor, fn_constructor_kwargs=kwargs, batch_size=rows_per_call,
            batch_format="pyarrow", zero_copy_batch=True,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(actors, 1)),
            num_cpus=actor_cpus, num_gpus=actor_gpus,
        )
        parts: list[pa.Table] = []
        t0 = time.perf_counter()
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(block)
            if progress is not None:
                progress(block.num_rows)
    seconds = time.perf_counter() - t0
    table = pa.concat_tables(parts) if parts else None
    n = 0 if table is None else table.num_rows
    return table, {"rows": n, "seconds": seconds, "rows_per_s": n / seconds if seconds else 0.0,
                   "actors": actors, "actor_cpus": actor_cpus, "threads": kwargs["threads"]}


def score_pool(items_parquet: str | Path, lm_path: str, *, max_new_tokens: int = 64,
               gen_batch_size: int = 16, rows_per_call: int = 64, actors: int = 1,
               gpus_per_actor: float = 0.0, threads: int | None = None,
               progress: Callable[[int], None] | None = None,
               ray_address: str | None = None, token_budget: int | None = None,
               dtype: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """LM uncertainty of every unlabelled item: Arrow table ``item_id`` + :data:`SCORE_KEYS`
    (+ ``seconds`` per item); stats with ``items_per_s``.

    Each ``generate`` call holds at most ``gen_batch_size`` prompts and ``token_budget``
    padded tokens (None: from the free CUDA memory, none on CPU); ``dtype`` None is float32
    on every device ("auto" is bf16 on CUDA, see :func:`sift_ops.causal_lm.load_causal_lm`:
    measured to change the scores, so not the default)."""
    table, stats = run_actor_stage(
        items_parquet, LMScorer,
        {"lm_path": lm_path, "max_new_tokens": max_new_tokens,
         "gen_batch_size": gen_batch_size, "threads": threads,
         "token_budget": token_budget, "dtype": dtype},
        rows_per_call=rows_per_call, actors=actors, gpus_per_actor=gpus_per_actor,
        progress=progress, ray_address=ray_address)
    if table is None:
        table = pa.table({"item_id": pa.array([], pa.string()),
                          **{k: pa.array([], pa.float64()) for k in (*SCORE_KEYS, "seconds")}})
    stats["items_per_s"] = stats.pop("rows_per_s")  # wall clock, actor start-up included
    busy = float(pc.sum(table.column("seconds")).as_py() or 0.0)
    stats["actor_seconds"] = busy
    stats["compute_items_per_s"] = table.num_rows / busy if busy > 0 else 0.0
    return table, stats


def embed_pool(items_parquet: str | Path, model: str | None, max_tokens: int | None, *,
               rows_per_call: int = 256, actors: int = 1, threads: int | None = None,
               progress: Callable[[int], None] | None = None,
               ray_address: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Prompt embeddings of every item: Arrow table ``item_id``, ``embedding`` (float32
    fixed-size list, L2-normalised)."""
    table, stats = run_actor_stage(
        items_parquet, PromptEmbedder,
        {"model": model, "max_tokens": max_tokens, "threads": threads},
        rows_per_call=rows_per_call, actors=actors, progress=progress,
        ray_address=ray_address)
    return table, stats
