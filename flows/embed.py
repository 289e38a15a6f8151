"""Flow ``embed``: a Pile-format corpus into Parquet embedding shards with Ray Data.

    embed the shards not yet done (read + tokenise in Ray read tasks, encoder actors)
      -> register the corpus in ``corpora`` -> a Markdown artifact

Tasks: :mod:`tasks.corpus.steps`; parameters: :class:`flows.params.EmbedParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.params import EmbedParams
from tasks.corpus.embed import EmbedConfig
from tasks.corpus.steps import embed_artifact, embed_shards, register_corpus
from tasks.storage.runs import corpus_run, make_run_id

_D = EmbedParams.default


@flow(name="embed", log_prints=True)
def embed_flow(
    corpus: str,
    name: str,
    workspace: str | None = None,
    model: str | None = _D("model"),
    batch_size: int | None = _D("batch_size"),
    max_tokens: int | None = _D("max_tokens"),
    shard_docs: int = _D("shard_docs"),
    actors: int = _D("actors"),
    gpus_per_actor: float = _D("gpus_per_actor"),
    ray_address: str | None = _D("ray_address"),
    trust_remote_code: bool = _D("trust_remote_code"),
    run_id: str | None = None,
    token_budget: int | None = _D("token_budget"),
    dtype: str | None = _D("dtype"),
) -> dict:
    """Embed ``corpus`` (Pile JSONL[.gz|.zst] or Parquet files, a folder or a glob) into
    ``<workspace>/corpora/<name>``; finished shards are skipped on rerun.

    One embed or index run per corpus at a time: a second one fails fast with
    "workspace busy". ``ray_address`` (or $RAY_ADDRESS) runs the Ray stages on a cluster.
    Batches hold ``token_budget`` padded tokens (default: from free GPU memory, 8192 on
    CPU), at most ``batch_size`` chunks when given; ``dtype`` None/"auto" is float32 on
    CPU and bf16/fp16 on CUDA (kept only if it matches float32 at cosine >= 0.999).
    """
    p = EmbedParams.of(locals())
    cfg = EmbedConfig(**p.model_dump(exclude={"corpus", "name"}))
    rid = make_run_id("embed", p.run_key(), run_id)
    with corpus_run(workspace, name, rid, "embed", p.run_key()) as rec:
        summary = embed_shards(p.corpus, workspace, name, cfg)
        manifest = register_corpus(workspace, name)
        new_shards = summary.pop("new_shards")
        rec.summary = summary
    embed_artifact(rid, name, manifest, summary, new_shards)
    return {"run_id": rid, **summary}
