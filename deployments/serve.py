"""Serve every flow as a Prefect deployment from this process.

    prefect server start --host 127.0.0.1 --port 4200            # once, elsewhere
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve
    prefect deployment run 'curation-run/nightly' --param corpus=... --param ...

Runs execute in this process, one at a time by default (one DuckDB writer per
workspace). ``curation-run/nightly`` carries the cron schedule (``--cron``, default
03:00 UTC daily; ``--cron ''`` serves it unscheduled). The workspace comes from
``--workspace``, $SIFT_WORKSPACE or ./workspace and is fixed for every deployment.
"""

from __future__ import annotations

import argparse
import os

NIGHTLY_CRON = "0 3 * * *"


def build_deployments(cron: str | None = NIGHTLY_CRON) -> list:
    """The RunnerDeployments served by :func:`main` (one per flow, named as in
    deployments/prefect.yaml)."""
    from flows.curation_run import curation_run_flow
    from flows.demo import demo_flow
    from flows.embed import embed_flow
    from flows.handoff import handoff_flow
    from flows.import_embeddings import import_embeddings_flow
    from flows.index import index_flow
    from flows.rank import rank_flow
    from flows.sample import sample_flow
    from flows.select import select_flow

    ws = {"workspace": os.environ["SIFT_WORKSPACE"]}
    tags = ["sift-curation"]
    return [
        sample_flow.to_deployment(name="sample", tags=tags),
        embed_flow.to_deployment(name="embed", parameters=ws, tags=tags),
        index_flow.to_deployment(name="index", parameters=ws, tags=tags),
        import_embeddings_flow.to_deployment(name="import-embeddings", parameters=ws,
                                             tags=tags),
        select_flow.to_deployment(name="select", parameters=ws, tags=tags),
        rank_flow.to_deployment(name="rank", parameters=ws, tags=tags),
        handoff_flow.to_deployment(name="handoff", parameters=ws, tags=tags),
        curation_run_flow.to_deployment(name="nightly", cron=cron or None, parameters=ws,
                                        tags=tags),
        demo_flow.to_deployment(name="demo", parameters=ws, tags=tags),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the sift-curation flows as deployments.")
    ap.add_argument("--workspace", default=None, help="workspace folder (default: "
                    "$SIFT_WORKSPACE or ./workspace)")
    ap.add_argument("--cron", default=NIGHTLY_CRON, help="cron schedule of curation-run/nightly "
                    f"(default {NIGHTLY_CRON!r}, UTC; '' for none)")
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
