"""Flow ``select``: test-time data selection (SIFT, Adaptive SIFT, nearest neighbours, NN-F
or random) for a prompt file.

    prompts in blocks -> search actors (K exact candidates each) -> pick N per prompt
      -> test_time_selections rows -> posterior-variance plot and artifact

Tasks: :mod:`tasks.selection.steps`; parameters: :class:`flows.params.SelectParams`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.params import SelectParams
from tasks.runtime.workspace import CorpusPaths, db_path, reports_dir
from tasks.selection.steps import retrieve_and_select, selection_report, write_selections
from tasks.storage.runs import make_run_id, tracked_run

_D = SelectParams.default


@flow(name="select", log_prints=True)
def select_flow(
    name: str,
    queries: str | None = _D("queries"),
    workspace: str | None = None,
    k: int = _D("k"),
    n: int = _D("n"),
    lam: float = _D("lam"),
    strategy: str = _D("strategy"),
    seed: int = _D("seed"),
    min_gain: float | None = _D("min_gain"),
    nprobe: int | None = _D("nprobe"),
    rerank_factor: int | None = _D("rerank_factor"),
    query_embeddings: str | None = _D("query_embeddings"),
    block: int = _D("block"),
    ray_address: str | None = _D("ray_address"),
    run_id: str | None = None,
    dup_threshold: float = _D("dup_threshold"),
    alpha: float = _D("alpha"),
) -> dict:
    """For each prompt in ``queries`` (or each vector in ``query_embeddings``), retrieve
    ``k`` exact candidates from corpus ``name``'s index and choose ``n`` with ``strategy``;
    write them to ``test_time_selections``. ``nprobe``/``rerank_factor`` override the
    settings measured when the index was built. ``dup_threshold`` is NN-F's cosine
    similarity filter, ``alpha`` Adaptive SIFT's compute-performance ratio (a prompt may
    then get fewer than ``n`` rows)."""
    p = SelectParams.of(locals())
    rid = make_run_id("select", p.run_key(), run_id)
    manifest = CorpusPaths(workspace, name).load_manifest()
    rows_dir = str(reports_dir(workspace, rid) / "rows")
    with tracked_run(db_path(workspace), rid, "select", p.run_key()) as rec:
        get_run_logger().info("prompts from %s; corpus %s has %s chunks", p.source, name,
                              manifest.get("n_chunks"))
        summary = retrieve_and_select(workspace, name, rows_dir, rid, p.queries,
                                      p.query_embeddings, p.k, p.n, p.lam, p.strategy,
                                      p.seed, p.min_gain, p.nprobe, p.rerank_factor, p.block,
                                      p.ray_address, p.dup_threshold, p.alpha)
        write_selections(workspace, rid, rows_dir, summary, p.strategy, p.n)
        rec.summary = summary
    plot = selection_report(workspace, rid, name, p.source, summary, p.strategy, p.k, p.n,
                            p.lam)
    return {"run_id": rid, "plot": plot, **summary}
