"""Flow: build (or extend) a corpus' index: one trained faiss model in a few partitions."""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from tasks.index.build import DEFAULT_BLOCK_VECTORS, DEFAULT_MEMORY_BUDGET, build_index
from tasks.reporting import artifacts
from tasks.runtime.locks import hold
from tasks.runtime.retry import TRANSIENT_RETRIES
from tasks.runtime.workspace import CorpusPaths, db_path, lock_path
from tasks.storage.runs import make_run_id, tracked_run


@task(name="build-index", persist_result=False, cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def build_corpus_index(workspace: str | None, name: str, factory: str, memory_budget: str,
                       target_recall: float, recall_k: int, train_size: int | None,
                       block_vectors: int, store_dtype: str, rebuild: bool,
                       ray_address: str | None = None) -> dict:
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, row: dict) -> None:
        if stage not in bars:
            bars[stage] = tqdm(desc=f"index {name}: {stage}s", unit=stage, file=sys.stderr,
                               dynamic_ncols=True)
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


@flow(name="index", log_prints=True)
def index_flow(name: str, workspace: str | None = None, factory: str = "auto",
               memory_budget: str = DEFAULT_MEMORY_BUDGET, target_recall: float = 0.95,
               recall_k: int = 200, train_size: int | None = None,
               block_vectors: int = DEFAULT_BLOCK_VECTORS, store_dtype: str = "auto",
               rebuild: bool = False, ray_address: str | None = None,
               run_id: str | None = None) -> dict:
    """Build ``<workspace>/corpora/<name>/index``: a trained faiss index (``auto``: Flat
    while exact search is cheap, IVF-PQ above) in partitions that fit ``memory_budget``,
    a vector store for exact re-ranking, and the recall measured against exact search.
    Shards embedded since the last build are added; finished blocks are kept."""
    logger = get_run_logger()
    params = {"name": name, "factory": factory, "memory_budget": str(memory_budget),
              "target_recall": target_recall, "recall_k": recall_k,
              "store_dtype": store_dtype}
    rid = make_run_id("index", params, run_id)
    paths = CorpusPaths(workspace, name)
    with hold(lock_path(workspace, "corpus", name), f"corpus {name!r}"), \
            tracked_run(db_path(workspace), rid, "index", params) as rec:
        summary = build_corpus_index(workspace, name, factory, str(memory_budget),
                                     target_recall, recall_k, train_size, block_vectors,
                                     store_dtype, rebuild, ray_address)
        rec.summary = summary
    import json

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
    return {"run_id": rid, **summary}
