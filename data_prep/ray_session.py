"""Start or join Ray the same way everywhere: local and private by default, a cluster when asked."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at ``address`` or start a local one bound to 127.0.0.1.

    Reuses an already initialised Ray (tests share one per session). A local instance starts without the
    dashboard so nothing listens beyond loopback unless the user points at a cluster.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
    )
