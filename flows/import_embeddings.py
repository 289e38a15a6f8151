"""Flow ``import-embeddings``: precomputed embeddings (Parquet) registered as a corpus
("bring your own embeddings").

    read + check + shard the vectors -> register the corpus in ``corpora`` -> an artifact

Tasks: :mod:`tasks.corpus.steps`; parameters: :class:`flows.params.ImportEmbeddingsParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.params import ImportEmbeddingsParams
from tasks.corpus.steps import import_artifact, import_vectors, register_corpus
from tasks.storage.runs import corpus_run, make_run_id

_D = ImportEmbeddingsParams.default


@flow(name="import-embeddings", log_prints=True)
def import_embeddings_flow(
    name: str,
    source: str,
    workspace: str | None = None,
    id_column: str = _D("id_column"),
    embedding_column: str = _D("embedding_column"),
    text_column: str | None = _D("text_column"),
    source_column: str | None = _D("source_column"),
    model: str | None = _D("model"),
    shard_rows: int = _D("shard_rows"),
    run_id: str | None = None,
) -> dict:
    """Import precomputed embeddings from ``source`` (a Parquet file, a folder or a glob)
    as corpus ``<workspace>/corpora/<name>``, ready to index like an embedded corpus.

    The corpus appears only when every input row was read and checked; a rerun replaces a
    corpus an earlier import made, never one made by ``embed``. ``model``: the encoder
    folder that made the vectors (for text prompts later), None for "external".
    """
    p = ImportEmbeddingsParams.of(locals())
    rid = make_run_id("import-embeddings", p.run_key(), run_id)
    with corpus_run(workspace, name, rid, "import-embeddings", p.run_key()) as rec:
        summary = import_vectors(p.source, workspace, name, p.id_column, p.embedding_column,
                                 p.text_column, p.source_column, p.model, p.shard_rows)
        manifest = register_corpus(workspace, name)
        rec.summary = {k: v for k, v in summary.items() if k != "source_files"}
    import_artifact(rid, name, p.source, manifest, summary)
    return {"run_id": rid, **summary}
