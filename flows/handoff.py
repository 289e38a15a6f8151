"""Flow ``handoff``: write a rank run's selection as files annotation tools import."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from tasks import artifacts
from tasks.handoff import (
    FORMATS,
    fetch_selection,
    record_handoff,
    run_strategies,
    write_handoff,
)
from tasks.workspace import db_path, workspace_root


@flow(name="handoff", log_prints=True)
def handoff_flow(
    run: str,
    format: str = "labelstudio",
    out: str | None = None,
    strategy: str | None = None,
    force: bool = False,
    workspace: str | None = None,
) -> dict:
    """Export the items rank run ``run`` selected (one strategy) to
    ``<out>/<run>/<strategy>/batch-NNNN.<ext>`` + ``manifest.json``; record ``handoffs``."""
    logger = get_run_logger()
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose {', '.join(FORMATS)}")
    dbf = db_path(workspace)
    available = run_strategies(dbf, run)
    if not available:
        raise ValueError(f"run {run!r} has no selections in {dbf} (is it a rank run id?)")
    if strategy is None:
        if len(available) > 1:
            raise ValueError(f"run {run!r} ranked with several strategies "
                             f"({', '.join(available)}); choose one with --strategy")
        strategy = available[0]
    if strategy not in available:
        raise ValueError(f"run {run!r} has no strategy {strategy!r}; it has "
                         f"{', '.join(available)}")
    root = Path(out).expanduser().resolve() if out else workspace_root(workspace) / "handoff"
    folder = root / run / strategy
    rows = fetch_selection(dbf, run, strategy)
    manifest = write_handoff(rows, format, folder, run, strategy, force=force)
    record_handoff(dbf, manifest, folder)
    logger.info("handoff of %s/%s: %d items in %d %s file(s) under %s", run, strategy,
                manifest["n_items"], manifest["n_batches"], format, folder)
    artifacts.markdown(
        f"handoff-{run}-{strategy}",
        f"# Handoff `{run}` / `{strategy}` ({format})\n\n"
        f"{manifest['n_items']} items in {manifest['n_batches']} batch file(s) in "
        f"`{folder}`.\n\n" + artifacts.md_table(
            [{k: f[k] for k in ("file", "n_items", "sha256")} for f in manifest["files"]]),
        description=f"handoff of {run}",
    )
    return {"run_id": run, "strategy": strategy, "format": format, "folder": str(folder),
            "manifest": str(folder / "manifest.json"), "n_items": manifest["n_items"],
            "n_batches": manifest["n_batches"]}
