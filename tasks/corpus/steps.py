"""The Prefect tasks of the ``embed`` and ``import-embeddings`` flows, beside the corpus
I/O they wrap (:mod:`tasks.corpus.embed`, :mod:`tasks.corpus.import_embeddings`)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.corpus.embed import EmbedConfig, run_embedding
from tasks.corpus.import_embeddings import discover_embedding_files, import_embeddings
from tasks.reporting import artifacts
from tasks.runtime.progress import progress_bar
from tasks.runtime.retry import TRANSIENT_RETRIES
from tasks.runtime.workspace import CorpusPaths, db_path
from tasks.storage import db


@task(name="embed-shards", persist_result=False, cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def embed_shards(corpus: str, workspace: str | None, name: str, cfg: EmbedConfig) -> dict:
    """Embed the shards not yet done (Ray Data), with a progress bar and the first
    quarantined lines named in the log."""
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    totals = {"chunks": 0, "bad": 0}

    def progress(row: dict) -> None:  # one call per finished shard, while `bar` is open
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

    with progress_bar(f"embed {name}", "shard") as bar:
        summary = run_embedding(corpus, paths, cfg, progress)
    if summary["bad_lines_this_run"]:
        logger.warning(
            "%d bad input lines quarantined this run (%d in the corpus); see %s",
            summary["bad_lines_this_run"], summary["bad_lines_total"], summary["quarantine"],
        )
    return summary


@task(name="register-corpus", persist_result=False, cache_policy=NO_CACHE)
def register_corpus(workspace: str | None, name: str) -> dict:
    """Upsert the corpus' manifest figures into the ``corpora`` table; returns the
    manifest."""
    paths = CorpusPaths(workspace, name)
    manifest = paths.load_manifest()
    db.upsert_corpus(db_path(workspace), name, str(paths.root), manifest["model"],
                     manifest["dim"], manifest["n_chunks"], manifest["created_at"])
    return manifest


@task(name="embed-artifact", persist_result=False, cache_policy=NO_CACHE)
def embed_artifact(rid: str, name: str, manifest: dict, summary: dict,
                   new_shards: list[dict]) -> None:
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


def _total_rows(files: list[Path]) -> int | None:
    """Rows in all input files from their footers (None when one cannot be read: the
    import itself then reports that file)."""
    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception:
        return None


@task(name="import-embeddings", persist_result=False, cache_policy=NO_CACHE,
      **TRANSIENT_RETRIES)
def import_vectors(source: str, workspace: str | None, name: str, id_column: str,
                   embedding_column: str, text_column: str | None,
                   source_column: str | None, model: str | None, shard_rows: int) -> dict:
    """Read, check and shard the precomputed vectors of ``source`` into corpus ``name``."""
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    files = discover_embedding_files(source)
    logger.info("importing %d Parquet file(s) from %s into corpus %r", len(files), source, name)
    with progress_bar(f"import {name}", "row", _total_rows(files), unit_scale=True) as bar:
        summary = import_embeddings(
            paths, source, id_column=id_column, embedding_column=embedding_column,
            text_column=text_column, source_column=source_column, model=model,
            shard_rows=shard_rows, progress=bar.update,
        )
    logger.info("corpus %s: %d of %d rows imported (%d-d) into %d shards in %.1f s; "
                "%d normalised", name, summary["rows_imported"], summary["rows_read"],
                summary["dim"], summary["shards"], summary["seconds"], summary["n_normalised"])
    if summary["n_quarantined"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["quarantine_reasons"].items() if v)
        logger.warning("%d rows quarantined (%s); see %s", summary["n_quarantined"], reasons,
                       summary["quarantine"])
    return summary


@task(name="import-artifact", persist_result=False, cache_policy=NO_CACHE)
def import_artifact(rid: str, name: str, source: str, manifest: dict, summary: dict) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in summary["quarantine_reasons"].items() if v)
    artifacts.markdown(
        f"import-embeddings-{name}",
        f"# Imported corpus `{name}`\n\n"
        f"- source: `{source}` ({summary['files']} file(s))\n"
        f"- model: `{manifest['model']}` ({manifest['dim']}-d, stored L2-normalised)\n"
        f"- rows: {summary['rows_imported']} imported of {summary['rows_read']} read, "
        f"in {summary['shards']} shards\n"
        f"- quarantined: {summary['n_quarantined']}"
        + (f" ({reasons}; see `{summary['quarantine']}`)" if reasons else "") + "\n"
        f"- normalised (norm off by more than 1e-3): {summary['n_normalised']}\n"
        f"- {summary['seconds']:.1f} s\n\n"
        + artifacts.md_table([
            {k: s[k] for k in ("shard", "input_file", "n_lines", "n_rows", "n_bad")}
            for s in manifest["shards"][:50]
        ]),
        description=f"import run {rid}",
    )
