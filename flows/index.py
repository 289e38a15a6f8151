"""Flow ``index``: build (or extend) a corpus' index: one trained faiss model in a few
partitions, a vector store for exact re-ranking, the recall measured at build time.

    build the blocks and partitions not yet done (Ray tasks) -> an artifact with recall

Tasks: :mod:`tasks.index.steps`; parameters: :class:`flows.params.IndexParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.params import IndexParams
from tasks.index.steps import build_corpus_index, index_artifact
from tasks.storage.runs import corpus_run, make_run_id

_D = IndexParams.default


@flow(name="index", log_prints=True)
def index_flow(name: str, workspace: str | None = None, factory: str = _D("factory"),
               memory_budget: str = _D("memory_budget"),
               target_recall: float = _D("target_recall"), recall_k: int = _D("recall_k"),
               train_size: int | None = _D("train_size"),
               block_vectors: int = _D("block_vectors"),
               store_dtype: str = _D("store_dtype"), rebuild: bool = _D("rebuild"),
               ray_address: str | None = _D("ray_address"),
               run_id: str | None = None) -> dict:
    """Build ``<workspace>/corpora/<name>/index``: a trained faiss index (``auto``: Flat
    while exact search is cheap, IVF-PQ above) in partitions that fit ``memory_budget``,
    a vector store for exact re-ranking, and the recall measured against exact search.
    Shards embedded since the last build are added; finished blocks are kept."""
    p = IndexParams.of(locals())
    rid = make_run_id("index", p.run_key(), run_id)
    with corpus_run(workspace, name, rid, "index", p.run_key()) as rec:
        rec.summary = build_corpus_index(workspace, name, p.factory, p.memory_budget,
                                         p.target_recall, p.recall_k, p.train_size,
                                         p.block_vectors, p.store_dtype, p.rebuild,
                                         p.ray_address)
    index_artifact(rid, workspace, name, rec.summary, p.target_recall)
    return {"run_id": rid, **rec.summary}
