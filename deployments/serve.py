"""Serve every flow as a Prefect deployment from this process.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve
    prefect deployment run 'select/select' --param name=mini-pile --param queries=...

Needs a Prefect server (``prefect server start``); runs execute in this process.
``--cron`` schedules the nightly demo (e.g. "0 3 * * *"); the workspace comes from
$SIFT_WORKSPACE or ./workspace.
"""

from __future__ import annotations

import argparse
import os


def build_deployments(cron: str | None = None) -> list:
    """The RunnerDeployments served by :func:`main` (one per flow)."""
    from flows.demo import demo_flow
    from flows.embed import embed_flow
    from flows.index import index_flow
    from flows.sample import sample_flow
    from flows.select import select_flow

    ws = os.environ["SIFT_WORKSPACE"]
    return [
        sample_flow.to_deployment(name="sample", tags=["sift-curation"]),
        embed_flow.to_deployment(name="embed", parameters={"workspace": ws},
                                 tags=["sift-curation"]),
        index_flow.to_deployment(name="index", parameters={"workspace": ws},
                                 tags=["sift-curation"]),
        select_flow.to_deployment(name="select", parameters={"workspace": ws},
                                  tags=["sift-curation"]),
        demo_flow.to_deployment(name="demo", cron=cron, parameters={"workspace": ws},
                                tags=["sift-curation"]),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the sift-curation flows as deployments.")
    ap.add_argument("--workspace", default=None, help="workspace folder (default: "
                    "$SIFT_WORKSPACE or ./workspace)")
    ap.add_argument("--cron", default=None, help="cron schedule for the demo deployment")
    ap.add_argument("--limit", type=int, default=1, help="max concurrent flow runs (DuckDB "
                    "has one writer, so 1 is the safe default)")
    args = ap.parse_args(argv)
    from flows.settings import configure

    configure(args.workspace)
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("set PREFECT_API_URL to a running Prefect server "
                         "(prefect server start) before serving deployments")
    from prefect import serve

    serve(*build_deployments(args.cron), limit=args.limit)


if __name__ == "__main__":
    main()
