"""Starting or joining Ray: a local instance by default, a cluster with $RAY_ADDRESS.

Resources, as the Ray stages request them (see README "Operations"): read tasks ask for
half a CPU; each encoder / LM actor asks for a fraction of a CPU (never a whole CPU per
actor on small machines: two whole-CPU actors on 2 cores starve the read tasks and hang)
or ``num_gpus`` when a GPU is requested and the cluster has one.
"""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> dict:
    """Connect to ``address`` (else $RAY_ADDRESS) if given, else start a local Ray.

    Idempotent: an already initialised Ray in this process is reused. Returns the
    cluster's resources (``{"CPU": 2.0, ...}``).
    """
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
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        ray.init(address=address, **kwargs)
        log.info("ray: %s", "cluster at " + address if address else "local instance")
    return ray.cluster_resources()


def ray_info() -> dict:
    """Where the running Ray lives: its GCS address and whether it was started here."""
    ctx = ray.get_runtime_context()
    return {"gcs_address": ctx.gcs_address, "nodes": len(ray.nodes()),
            "address_env": os.environ.get("RAY_ADDRESS") or None}
