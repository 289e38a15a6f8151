"""Flow: the whole path on the bundled sample (what `make demo` runs).

sample -> embed (Ray Data) -> index (faiss) -> select with SIFT and with nearest neighbours,
then the SQL a user can paste to compare them in curation.duckdb (:mod:`tasks.reporting.demo`).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.embed import embed_flow
from flows.index import index_flow
from flows.jobs import SAMPLE_CORPUS, SAMPLE_SHARD_DOCS
from flows.params import DemoParams
from flows.sample import sample_flow
from flows.select import select_flow
from tasks.reporting.demo import demo_report
from tasks.runtime.workspace import db_path, workspace_root

DEMO_CORPUS = SAMPLE_CORPUS
_D = DemoParams.default


@flow(name="demo", log_prints=True)
def demo_flow(workspace: str | None = None, k: int = _D("k"), n: int = _D("n"),
              lam: float = _D("lam"), n_docs: int | None = _D("n_docs"),
              n_queries: int = _D("n_queries")) -> dict:
    """Run sample -> embed -> index -> select (sift, nn) on the bundled sample."""
    p = DemoParams.of(locals())
    root = workspace_root(workspace)
    ws = str(root)
    sample = sample_flow(out=str(root / "sample"), n_docs=p.n_docs,
                         n_queries=p.n_queries)
    embedded = embed_flow(corpus=sample["paths"]["pile_dir"], name=DEMO_CORPUS, workspace=ws,
                          shard_docs=SAMPLE_SHARD_DOCS)
    indexed = index_flow(name=DEMO_CORPUS, workspace=ws)
    queries = sample["paths"]["queries"]
    sift = select_flow(name=DEMO_CORPUS, queries=queries, workspace=ws, k=p.k, n=p.n, lam=p.lam,
                       strategy="sift")
    nn = select_flow(name=DEMO_CORPUS, queries=queries, workspace=ws, k=p.k, n=p.n, lam=p.lam,
                     strategy="nn")
    text = demo_report(ws, DEMO_CORPUS, sift, nn, p.n)
    return {
        "db": str(db_path(ws)), "sift": sift, "nn": nn, "embed": embedded, "index": indexed,
        "report": text, "sample": str(Path(sample["out"])),
    }
