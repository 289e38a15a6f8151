"""Starting or joining Ray: a local instance by default, a cluster with $RAY_ADDRESS."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None) -> dict:
    """Connect to $RAY_ADDRESS if set, else start a local Ray; idempotent.

    Returns the cluster's resources (``{"CPU": 2.0, ...}``).
    """
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
