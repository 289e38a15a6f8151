"""The Prefect tasks of the ``index`` flow, beside the index I/O they wrap
(:mod:`tasks.index.build`)."""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.index.build import build_index
from tasks.reporting import artifacts
from tasks.runtime.progress import new_bar
from tasks.runtime.retry import TRANSIENT_RETRIES
from tasks.runtime.workspace import CorpusPaths


@task(name="build-index", persist_result=False, cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def build_corpus_index(workspace: str | None, name: str, factory: str, memory_budget: str,
                       target_recall: float, recall_k: int, train_size: int | None,
                       block_vectors: int, store_dtype: str, rebuild: bool,
                       ray_address: str | None = None) -> dict:
    """Build or extend the partitioned index of corpus ``name`` (:func:`tasks.index.build.
    build_index`), with a progress bar per stage (blocks, partitions)."""
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    bars: dict[str, Any] = {}  # one tqdm bar per stage, opened at its first row

    def progress(stage: str, row: dict) -> None:
        if stage not in bars:
            bars[stage] = new_bar(f"index {name}: {stage}s", stage)
        bars[stage].update(1)
        if stage == "block":
            logger.info("block %d: %d vectors from %d shards in %.1fs", row["block"],
                        row["n"], row["shards"], row["seconds"])
        else:
            logger.info("partition %d: %d vectors, %.1f MB, in %.1fs", row["partition"],
                        row["ntotal"], row["bytes"] / 1e6, row["seconds"])

    try:
        return build_index(paths, factory, memory_budget=memory_budget,
                           target_recall=target_recall, recall_k=recall_k,
                           train_size=train_size, block_vectors=block_vectors,
                           store_dtype=store_dtype, rebuild=rebuild, ray_address=ray_address,
                           progress=progress)
    finally:
        for bar in bars.values():
            bar.close()


def _recall_table(meta_recall: dict) -> str:
    key = f"recall@{meta_recall['k']}"
    rows = [{"nprobe": c["nprobe"], "rerank": c["rerank_factor"], key: c[key],
             "ms/query": c["ms_per_query"]} for c in meta_recall["curve"]]
    return artifacts.md_table(rows)


@task(name="index-artifact", persist_result=False, cache_policy=NO_CACHE)
def index_artifact(rid: str, workspace: str | None, name: str, summary: dict,
                   target_recall: float) -> None:
    """Log the index's figures and publish them, with the recall curve, as an artifact."""
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    meta = json.loads(paths.index_meta.read_text())
    logger.info("index %s: %s, %d vectors in %d partitions, %.1f bytes/vector; recall@%d "
                "%.4f at nprobe=%s, re-rank x%s", name, summary["factory"],
                summary["n_vectors"], summary["partitions_total"],
                summary["index_bytes_per_vector"], meta["recall"]["k"],
                meta["recall"]["achieved"], summary["nprobe"], summary["rerank_factor"])
    artifacts.markdown(
        f"index-{name}",
        f"# faiss index for `{name}`\n\n{meta['choice_reason']}\n\n"
        + artifacts.md_table([{k: v for k, v in summary.items()
                               if k not in ("index_dir", "recall_plot")}])
        + f"\n\n## Recall against exact search ({meta['recall']['holdout']} held-out corpus "
        f"vectors)\n\n" + _recall_table(meta["recall"])
        + f"\n\nChosen: nprobe={summary['nprobe']}, re-rank x{summary['rerank_factor']} "
        f"(target {target_recall}). Plot: `{summary['recall_plot']}`\n",
        description=f"index run {rid}",
    )
