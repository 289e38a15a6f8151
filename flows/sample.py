"""Flow: build the bundled mini-Pile, held-out prompts and instruction pool."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.reporting import artifacts
from tasks.sample.bundled import build_sample


@flow(name="sample", log_prints=True)
def sample_flow(out: str, n_docs: int | None = None, n_queries: int = 64,
                pool_size: int = 1200, seed: int = 0, redundancy: float = 0.0) -> dict:
    """Write the sample (Pile-format .jsonl.zst, queries.jsonl, pool.jsonl, references);
    ``redundancy`` R makes a share R of the corpus documents recur (tasks/sample/bundled.py)."""
    summary = build_sample(out, n_docs=n_docs, n_queries=n_queries, pool_size=pool_size,
                           seed=seed, redundancy=redundancy)
    get_run_logger().info("sample written to %s in %.1fs", summary["out"],
                          summary.get("build_seconds", 0.0))
    artifacts.markdown("sample", "# Bundled sample\n\n```json\n"
                       + __import__("json").dumps(summary, indent=2, default=str) + "\n```")
    return summary
