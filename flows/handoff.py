"""Flow ``handoff``: write a rank run's selection as files annotation tools import, or push
it into a Label Studio project (``to="label-studio"``; token from ``LABEL_STUDIO_API_KEY``,
never a flow parameter, so it is not stored with the flow run).

    the run's strategy -> batch files + manifest (+ handoffs rows), or Label Studio tasks

Tasks: :mod:`tasks.annotation.steps`; parameters: :class:`flows.params.HandoffParams`.
"""

from __future__ import annotations

from prefect import flow

from flows.params import HandoffParams
from tasks.annotation.steps import handoff_files, handoff_label_studio, handoff_strategy
from tasks.runtime.workspace import db_path

_D = HandoffParams.default


@flow(name="handoff", log_prints=True)
def handoff_flow(
    run: str,
    format: str = _D("format"),
    out: str | None = _D("out"),
    strategy: str | None = _D("strategy"),
    force: bool = _D("force"),
    workspace: str | None = None,
    to: str = _D("to"),
    url: str | None = _D("url"),
    project: str | None = _D("project"),
) -> dict:
    """Export the items rank run ``run`` selected (one strategy) to
    ``<out>/<run>/<strategy>/batch-NNNN.<ext>`` + ``manifest.json``; record ``handoffs``.
    With ``to="label-studio"``: import them into project ``project`` (default
    ``sift-curate <pool>``) at ``url``, one import per batch; record the task ids."""
    p = HandoffParams.of(locals())
    chosen = handoff_strategy(workspace, p.run, p.strategy)
    if p.to == "label-studio":
        return handoff_label_studio(db_path(workspace), p.run, chosen, p.url, p.project,
                                    p.force)
    return handoff_files(workspace, p.run, chosen, p.format, p.out, p.force)
