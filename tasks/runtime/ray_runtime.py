"""Starting or joining Ray: a local instance by default, a cluster with $RAY_ADDRESS.

Resources, as the Ray stages request them (see README "Operations"): read tasks ask for
half a CPU; each encoder / LM actor asks for a fraction of a CPU (never a whole CPU per
actor on small machines: two whole-CPU actors on 2 cores starve the read tasks and hang)
or ``num_gpus`` when a GPU is requested and the cluster has one.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


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
