"""Flow: register precomputed embeddings (Parquet) as a corpus ("bring your own embeddings")."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from tasks.corpus.import_embeddings import discover_embedding_files, import_embeddings
from tasks.reporting import artifacts
from tasks.runtime.locks import hold
from tasks.runtime.retry import TRANSIENT_RETRIES
from tasks.runtime.workspace import CorpusPaths, db_path, lock_path
from tasks.storage import db
from tasks.storage.runs import make_run_id, tracked_run


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
    logger = get_run_logger()
    paths = CorpusPaths(workspace, name)
    files = discover_embedding_files(source)
    logger.info("importing %d Parquet file(s) from %s into corpus %r", len(files), source, name)
    bar = tqdm(desc=f"import {name}", unit="row", unit_scale=True, total=_total_rows(files),
               file=sys.stderr, dynamic_ncols=True)
    try:
        summary = import_embeddings(
            paths, source, id_column=id_column, embedding_column=embedding_column,
            text_column=text_column, source_column=source_column, model=model,
            shard_rows=shard_rows, progress=bar.update,
        )
    finally:
        bar.close()
    logger.info("corpus %s: %d of %d rows imported (%d-d) into %d shards in %.1f s; "
                "%d normalised", name, summary["rows_imported"], summary["rows_read"],
                summary["dim"], summary["shards"], summary["seconds"], summary["n_normalised"])
    if summary["n_quarantined"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["quarantine_reasons"].items() if v)
        logger.warning("%d rows quarantined (%s); see %s", summary["n_quarantined"], reasons,
                       summary["quarantine"])
    return summary


@flow(name="import-embeddings", log_prints=True)
def import_embeddings_flow(
    name: str,
    source: str,
    workspace: str | None = None,
    id_column: str = "doc_id",
    embedding_column: str = "embedding",
    text_column: str | None = "text",
    source_column: str | None = "source",
    model: str | None = None,
    shard_rows: int = 100_000,
    run_id: str | None = None,
) -> dict:
    """Import precomputed embeddings from ``source`` (a Parquet file, a folder or a glob)
    as corpus ``<workspace>/corpora/<name>``, ready to index like an embedded corpus.

    The corpus appears only when every input row was read and checked; a rerun replaces a
    corpus an earlier import made, never one made by ``embed``. ``model``: the encoder
    folder that made the vectors (for text prompts later), None for "external".
    """
    source = str(Path(source).expanduser().resolve()) if Path(source).exists() else source
    params = {"name": name, "source": source, "id_column": id_column,
              "embedding_column": embedding_column, "text_column": text_column,
              "source_column": source_column, "model": model, "shard_rows": shard_rows}
    rid = make_run_id("import-embeddings", params, run_id)
    dbf = db_path(workspace)
    with hold(lock_path(workspace, "corpus", name), f"corpus {name!r}"), \
            tracked_run(dbf, rid, "import-embeddings", params) as rec:
        summary = import_vectors(source, workspace, name, id_column, embedding_column,
                                 text_column, source_column, model, shard_rows)
        paths = CorpusPaths(workspace, name)
        manifest = paths.load_manifest()
        db.upsert_corpus(dbf, name, str(paths.root), manifest["model"], manifest["dim"],
                         manifest["n_chunks"], manifest["created_at"])
        rec.summary = {k: v for k, v in summary.items() if k != "source_files"}
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
    return {"run_id": rid, **summary}
