"""Serve every flow as a Prefect deployment from this process.

    prefect server start --host 127.0.0.1 --port 4200            # once, elsewhere
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve [--config jobs.yaml]
    prefect deployment run 'curation-run/nightly' --watch        # no parameters needed

Without ``--config`` there is one curation job, ``curation-run/nightly``, with every
default: it curates the bundled sample (built into the workspace on its first run) at
03:00 UTC daily (``--cron``; ``--cron ''`` serves it unscheduled). With ``--config`` each
job of the YAML file (see :mod:`flows.jobs`) becomes a ``curation-run/<job>`` deployment
with the job's parameters and schedule. A scheduled deployment whose flow has required
parameters that the deployment does not set is refused before anything is served: its
every run would fail. ``--prefect-yaml OUT`` writes the same deployments as a
prefect.yaml for ``prefect deploy --all`` (work pools and workers) instead of serving.

Runs execute in this process, one at a time by default (one DuckDB writer per
workspace). The workspace comes from ``--workspace``, $SIFT_WORKSPACE or ./workspace and
is fixed for every deployment.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from flows.jobs import NIGHTLY_CRON, ConfigError, JobSpec, default_jobs, load_jobs

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")


def load_job_specs(config: str | None, cron: str | None = NIGHTLY_CRON) -> list[JobSpec]:
    """The curation jobs to deploy: the jobs file's, or the default ``nightly``."""
    return load_jobs(config) if config else default_jobs(cron)


def build_deployments(cron: str | None = NIGHTLY_CRON, jobs: list[JobSpec] | None = None
                      ) -> list:
    """The RunnerDeployments served by :func:`main`: one ``curation-run`` per job, and one
    deployment per other flow (named as in deployments/prefect.yaml)."""
    from prefect.schedules import Cron

    from flows.collect import collect_flow
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
    curation = [
        curation_run_flow.to_deployment(
            name=spec.name, parameters={**spec.job.parameters(), **ws}, tags=tags,
            schedule=(Cron(spec.schedule.cron, timezone=spec.schedule.timezone)
                      if spec.schedule else None),
            description=f"curation job {spec.name!r}")
        for spec in (jobs if jobs is not None else default_jobs(cron))
    ]
    return [
        sample_flow.to_deployment(name="sample", tags=tags),
        embed_flow.to_deployment(name="embed", parameters=ws, tags=tags),
        index_flow.to_deployment(name="index", parameters=ws, tags=tags),
        import_embeddings_flow.to_deployment(name="import-embeddings", parameters=ws,
                                             tags=tags),
        select_flow.to_deployment(name="select", parameters=ws, tags=tags),
        rank_flow.to_deployment(name="rank", parameters=ws, tags=tags),
        handoff_flow.to_deployment(name="handoff", parameters=ws, tags=tags),
        collect_flow.to_deployment(name="collect", parameters=ws, tags=tags),
        *curation,
        demo_flow.to_deployment(name="demo", parameters=ws, tags=tags),
    ]


def missing_required(deployment: Any) -> list[str]:
    """Required flow parameters a deployment does not set (its schema's ``required``)."""
    schema = deployment._parameter_openapi_schema
    required = getattr(schema, "required", None) or []
    return [p for p in required if p not in (deployment.parameters or {})]


def check_schedulable(deployments: list) -> None:
    """Refuse (ConfigError) any scheduled deployment whose runs would fail validation."""
    bad = []
    for d in deployments:
        if d.schedules and (missing := missing_required(d)):
            bad.append(f"{d.flow_name}/{d.name}: scheduled, but the required parameter(s) "
                       f"{', '.join(missing)} are not set (every scheduled run would fail)")
    if bad:
        raise ConfigError("refusing to serve:\n  " + "\n  ".join(bad))


def render_prefect_yaml(jobs: list[JobSpec], workspace: str | None = None) -> str:
    """deployments/prefect.yaml with its ``nightly`` entry replaced by one curation-run
    deployment per job (parameters and schedule), for ``prefect deploy --all``."""
    import yaml

    doc = yaml.safe_load(PREFECT_YAML.read_text())
    template = next(d for d in doc["deployments"] if d["name"] == "nightly")
    others = [d for d in doc["deployments"] if d["name"] != "nightly"]
    entries = []
    for spec in jobs:
        entry = {k: v for k, v in template.items() if k not in ("schedules", "description")}
        entry["name"] = spec.name
        entry["description"] = f"curation job {spec.name!r} (from a jobs file)"
        params = spec.job.parameters()
        if workspace:
            params["workspace"] = workspace
        if params:
            entry["parameters"] = params
        if spec.schedule:
            entry["schedules"] = [{"cron": spec.schedule.cron,
                                   "timezone": spec.schedule.timezone}]
        entries.append(entry)
    doc["deployments"] = entries + others
    head = ("# Generated by `python -m deployments.serve --prefect-yaml` from a jobs file;\n"
            "# deploy with: prefect deploy --all --prefect-file THIS_FILE\n")
    return head + yaml.safe_dump(doc, sort_keys=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the sift-curation flows as deployments.")
    ap.add_argument("--workspace", default=None, help="workspace folder (default: "
                    "$SIFT_WORKSPACE or ./workspace)")
    ap.add_argument("--config", default=None, help="YAML jobs file: one curation-run "
                    "deployment per job, with its parameters and schedule (see flows/jobs.py)"
                    "; default: one job 'nightly' curating the bundled sample")
    ap.add_argument("--cron", default=NIGHTLY_CRON, help="cron schedule of the default "
                    f"curation-run/nightly (default {NIGHTLY_CRON!r}, UTC; '' for none); "
                    "with --config each job's own schedule applies")
    ap.add_argument("--limit", type=int, default=1, help="max concurrent flow runs (DuckDB "
                    "has one writer, so 1 is the safe default)")
    ap.add_argument("--prefect-yaml", default=None, metavar="OUT",
                    help="write the deployments as a prefect.yaml to OUT ('-' for stdout) "
                    "and exit, instead of serving")
    args = ap.parse_args(argv)
    try:
        jobs = load_job_specs(args.config, args.cron or None)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if args.prefect_yaml:
        text = render_prefect_yaml(jobs, args.workspace)
        if args.prefect_yaml == "-":
            print(text, end="")
        else:
            Path(args.prefect_yaml).write_text(text)
        return
    from flows.settings import configure

    configure(args.workspace)
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("set PREFECT_API_URL to a running Prefect server "
                         "(prefect server start) before serving deployments")
    deployments = build_deployments(jobs=jobs)
    try:
        check_schedulable(deployments)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    from prefect import serve

    print("serving: " + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments), flush=True)
    serve(*deployments, limit=args.limit)


if __name__ == "__main__":
    main()
