"""Starting or joining Ray: a local instance by default, a cluster with $RAY_ADDRESS.

Resources, as the Ray stages request them (docs/architecture.md, "Resources (Ray)"): read
tasks ask for half a CPU; each encoder / LM actor asks for a fraction of a CPU
(:func:`actor_resources`) or ``num_gpus`` when a GPU is requested and the cluster has one.
Stages change Ray Data's settings only inside :func:`data_context`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

READ_TASK_CPUS = 0.5  # what a Ray Data read task asks for; actors leave at least this free


def actor_resources(resources: dict, actors: int, gpus_per_actor: float = 0.0,
                    threads: int | None = None) -> tuple[float, float | None, int]:
    """How to size each actor of a pool of ``actors``: ``(num_cpus, num_gpus, threads)``.

    ``resources`` is the cluster's (:func:`ensure_ray`).  With a GPU requested
    (``gpus_per_actor > 0``) and present, an actor asks for 1 CPU and ``gpus_per_actor``
    GPUs.  Otherwise it asks for ``(CPUs - 0.5) / actors`` CPUs clipped to [0.5, 1]: on a
    small machine whole-CPU actors would take every CPU and starve the read tasks, and the
    stage would hang.  ``threads`` (torch threads per actor) is kept when given, else
    ``CPUs // actors`` (at least 1).
    """
    n_cpus = float(resources.get("CPU", 1))
    actors = max(actors, 1)
    use_gpu = gpus_per_actor > 0 and resources.get("GPU", 0) > 0
    cpus = 1.0 if use_gpu else max(READ_TASK_CPUS, min(1.0, (n_cpus - READ_TASK_CPUS) / actors))
    if threads is None:
        threads = max(1, int(n_cpus // actors))
    return cpus, (gpus_per_actor if use_gpu else None), threads


@contextlib.contextmanager
def data_context(**settings: Any) -> Iterator[Any]:
    """Set attributes of the current Ray Data ``DataContext`` (``target_max_block_size=1``,
    ...) for the ``with`` block and restore the previous values after it, also on error.

    Build the datasets inside the block: a dataset takes its settings when it is created.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = {key: getattr(ctx, key) for key in settings}
    try:
        for key, value in settings.items():
            setattr(ctx, key, value)
        yield ctx
    finally:
        for key, value in saved.items():
            setattr(ctx, key, value)


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> dict:
    """Connect to ``address`` (else $RAY_ADDRESS) if given, else start a local Ray.

    Idempotent: an already initialised Ray in this process is reused. Returns the
    cluster's resources (``{"CPU": 2.0, ...}``).
    """
    if "ray" not in sys.modules:
        use_cluster_token()  # must precede `import ray`: Ray reads the auth mode on import
    elif not os.environ.get("RAY_AUTH_MODE") and (address or os.environ.get("RAY_ADDRESS")):
        log.warning("ray was imported before RAY_AUTH_MODE was set; a cluster with token "
                    "authentication will refuse this driver (set RAY_AUTH_MODE=token)")
    import ray

    if address:
        # every later Ray call in this process (and its Ray Data stages) targets it
        os.environ["RAY_ADDRESS"] = address
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        kwargs: dict = {
            "include_dashboard": False,
            "ignore_reinit_error": True,
            "log_to_driver": True,
            "logging_level": logging.WARNING,
        }
        if address is None:
            # "local": always a fresh instance. Without it ray.init joins any cluster a
            # `ray start` left registered on this machine, silently.
            address = "local"
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        ray.init(address=address, **kwargs)
        log.info("ray: %s", "local instance" if address == "local" else "cluster at " + address)
    return ray.cluster_resources()


def use_cluster_token() -> None:
    """`ray start --head` turns token authentication on (token in ~/.ray/auth_token), but a
    driver only sends the token with RAY_AUTH_MODE=token, read when ray is imported;
    without it the connection fails after a GCS time-out. Choose token mode whenever a
    token is available and nothing was chosen (a local Ray then uses it too)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        os.environ["RAY_AUTH_MODE"] = "token"


def ray_info() -> dict:
    """Where the running Ray lives: its GCS address and whether it was started here."""
    import ray

    ctx = ray.get_runtime_context()
    return {"gcs_address": ctx.gcs_address, "nodes": len(ray.nodes()),
            "address_env": os.environ.get("RAY_ADDRESS") or None}
