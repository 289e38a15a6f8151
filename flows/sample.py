"""Flow ``sample``: build the bundled mini-Pile, held-out prompts and instruction pool.

Task: :mod:`tasks.sample.steps`; parameters: :class:`flows.params.SampleParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.params import SampleParams
from tasks.sample.steps import build_bundled_sample

_D = SampleParams.default


@flow(name="sample", log_prints=True)
def sample_flow(out: str, n_docs: int | None = _D("n_docs"), n_queries: int = _D("n_queries"),
                pool_size: int = _D("pool_size"), seed: int = _D("seed"),
                redundancy: float = _D("redundancy")) -> dict:
    """Write the sample (Pile-format .jsonl.zst, queries.jsonl, pool.jsonl, references);
    ``redundancy`` R makes a share R of the corpus documents recur (tasks/sample/bundled.py)."""
    p = SampleParams.of(locals())
    return build_bundled_sample(p.out, p.n_docs, p.n_queries, p.pool_size, p.seed,
                                p.redundancy)
