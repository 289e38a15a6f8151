"""The Prefect task of the ``sample`` flow, beside the sample builder it wraps."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.reporting import artifacts
from tasks.sample.bundled import build_sample


@task(name="build-sample", persist_result=False, cache_policy=NO_CACHE)
def build_bundled_sample(out: str, n_docs: int | None, n_queries: int, pool_size: int,
                         seed: int, redundancy: float) -> dict:
    """Write the sample into ``out`` (see :func:`tasks.sample.bundled.build_sample`); log
    and publish its summary."""
    summary = build_sample(out, n_docs=n_docs, n_queries=n_queries, pool_size=pool_size,
                           seed=seed, redundancy=redundancy)
    get_run_logger().info("sample written to %s in %.1fs", summary["out"],
                          summary.get("build_seconds", 0.0))
    artifacts.markdown("sample", "# Bundled sample\n\n```json\n"
                       + json.dumps(summary, indent=2, default=str) + "\n```")
    return summary
