"""Flow: build one faiss index per embedding shard."""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from sift_ops.index import DEFAULT_FACTORY
from tasks import artifacts
from tasks.index import build_indices
from tasks.locks import hold
from tasks.retry import TRANSIENT_RETRIES
from tasks.runs import make_run_id, tracked_run
from tasks.workspace import CorpusPaths, db_path, lock_path


@task(name="build-shard-indices", persist_result=False, cache_policy=NO_CACHE,
      **TRANSIENT_RETRIES)
def build_shard_indices(workspace: str | None, name: str, factory: str, train_size: int,
                        rebuild: bool, ray_address: str | None = None) -> dict:
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    bar = tqdm(desc=f"index {name}", unit="shard", file=sys.stderr, dynamic_ncols=True)

    def progress(row: dict) -> None:
        bar.update(1)
        logger.info("indexed %s: %d vectors in %.2fs", row["index"], row["ntotal"],
                    row["seconds"])

    try:
        return build_indices(paths, factory, train_size=train_size, rebuild=rebuild,
                             progress=progress, ray_address=ray_address)
    finally:
        bar.close()


@flow(name="index", log_prints=True)
def index_flow(name: str, workspace: str | None = None, factory: str = DEFAULT_FACTORY,
               train_size: int = 50_000, rebuild: bool = False,
               ray_address: str | None = None, run_id: str | None = None) -> dict:
    """Build ``<workspace>/corpora/<name>/index`` from the corpus' embedding shards
    (one embed or index run per corpus at a time)."""
    params = {"name": name, "factory": factory, "train_size": train_size}
    rid = make_run_id("index", params, run_id)
    with hold(lock_path(workspace, "corpus", name), f"corpus {name!r}"), \
            tracked_run(db_path(workspace), rid, "index", params) as rec:
        summary = build_shard_indices(workspace, name, factory, train_size, rebuild,
                                      ray_address)
        rec.summary = summary
    artifacts.markdown(
        f"index-{name}",
        f"# faiss index for `{name}`\n\n" + artifacts.md_table([summary]),
        description=f"index run {rid}",
    )
    return {"run_id": rid, **summary}
