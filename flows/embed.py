"""Flow: embed a Pile-format corpus into Parquet shards with Ray Data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from tasks.corpus.embed import EmbedConfig, run_embedding
from tasks.reporting import artifacts
from tasks.runtime.locks import hold
from tasks.runtime.retry import TRANSIENT_RETRIES
from tasks.runtime.workspace import CorpusPaths, db_path, lock_path
from tasks.storage import db
from tasks.storage.runs import make_run_id, tracked_run


@task(name="embed-shards", persist_result=False, cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def embed_shards(corpus: str, workspace: str | None, name: str, cfg: EmbedConfig) -> dict:
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    bar = tqdm(desc=f"embed {name}", unit="shard", file=sys.stderr, dynamic_ncols=True)
    totals = {"chunks": 0, "bad": 0}

    def progress(row: dict) -> None:
        totals["chunks"] += row["n_chunks"]
        totals["bad"] += row["n_bad"]
        bar.update(1)
        bar.set_postfix(chunks=totals["chunks"], quarantined=totals["bad"])
        logger.info(
            "shard %s: %d docs -> %d chunks in %.1fs (%s lines %d-%d, %d quarantined)",
            row["shard"], row["n_docs"], row["n_chunks"], row["seconds"], row["file"],
            row["line_start"], row["line_end"], row["n_bad"],
        )
        if row["n_bad"] and totals["bad"] - row["n_bad"] < 20:  # name the first few
            quarantine = paths.quarantine / f"{row['shard']}.jsonl"
            for line in quarantine.read_text(encoding="utf-8").splitlines()[:5]:
                bad = json.loads(line)
                logger.warning("quarantined %s:%d: %s", bad["file"], bad["line"],
                               bad["reason"])

    try:
        summary = run_embedding(corpus, paths, cfg, progress)
    finally:
        bar.close()
    if summary["bad_lines_this_run"]:
        logger.warning(
            "%d bad input lines quarantined this run (%d in the corpus); see %s",
            summary["bad_lines_this_run"], summary["bad_lines_total"], summary["quarantine"],
        )
    return summary


@flow(name="embed", log_prints=True)
def embed_flow(
    corpus: str,
    name: str,
    workspace: str | None = None,
    model: str | None = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    shard_docs: int = 2000,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    ray_address: str | None = None,
    trust_remote_code: bool = False,
    run_id: str | None = None,
    token_budget: int | None = None,
    dtype: str | None = None,
) -> dict:
    """Embed ``corpus`` (Pile JSONL[.gz|.zst] or Parquet files, a folder or a glob) into
    ``<workspace>/corpora/<name>``; finished shards are skipped on rerun.

    One embed or index run per corpus at a time: a second one fails fast with
    "workspace busy". ``ray_address`` (or $RAY_ADDRESS) runs the Ray stages on a cluster.
    Batches hold ``token_budget`` padded tokens (default: from free GPU memory, 8192 on
    CPU), at most ``batch_size`` chunks when given; ``dtype`` None/"auto" is float32 on
    CPU and bf16/fp16 on CUDA (kept only if it matches float32 at cosine >= 0.999).
    """
    cfg = EmbedConfig(model=model, batch_size=batch_size, token_budget=token_budget,
                      dtype=dtype, max_tokens=max_tokens,
                      shard_docs=shard_docs, actors=actors, gpus_per_actor=gpus_per_actor,
                      ray_address=ray_address, trust_remote_code=trust_remote_code)
    corpus = str(Path(corpus).expanduser().resolve()) if Path(corpus).exists() else corpus
    params = {"corpus": corpus, "name": name, "model": model, "max_tokens": max_tokens,
              "shard_docs": shard_docs}
    rid = make_run_id("embed", params, run_id)
    dbf = db_path(workspace)
    with hold(lock_path(workspace, "corpus", name), f"corpus {name!r}"), \
            tracked_run(dbf, rid, "embed", params) as rec:
        summary = embed_shards(corpus, workspace, name, cfg)
        paths = CorpusPaths(workspace, name)
        manifest = paths.load_manifest()
        db.upsert_corpus(dbf, name, str(paths.root), manifest["model"], manifest["dim"],
                         manifest["n_chunks"], manifest["created_at"])
        new_shards = summary.pop("new_shards")
        rec.summary = summary
    artifacts.markdown(
        f"embed-{name}",
        f"# Embedded corpus `{name}`\n\n"
        f"- model: `{manifest['model']}` ({manifest['dim']}-d, mean pooling, L2-normalised, "
        f"max {manifest['max_tokens']} tokens per chunk)\n"
        f"- shards: {summary['shards_total']} ({summary['shards_written']} written, "
        f"{summary['shards_skipped']} already done)\n"
        f"- documents: {summary['docs_total']}, chunks: {summary['chunks_total']}\n"
        f"- quarantined lines: {summary['bad_lines_total']} (see `{summary['quarantine']}`)\n"
        f"- this run: {summary['chunks_written']} chunks in {summary['seconds']:.1f} s "
        f"({summary['chunks_per_s']:.1f} chunks/s)\n\n"
        + artifacts.md_table([
            {k: s[k] for k in ("shard", "n_docs", "n_chunks", "n_bad", "seconds")}
            for s in new_shards[:50]
        ]),
        description=f"embedding run {rid}",
    )
    return {"run_id": rid, **summary}
