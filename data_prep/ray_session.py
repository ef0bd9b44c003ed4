"""Start or join Ray the same way everywhere: local and private by default, a cluster when asked."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
WORKER_LOGS_ENV = "CELLTUNE_WORKER_LOGS"  # "1": Ray forwards every worker's output to this console (`-v`)


def worker_logs_to_console() -> bool:
    """Whether Ray should forward workers' stdout/stderr here. Off by default: a training worker's bar and
    warnings reach the driver through celltune's own channel, and the rest (Ray's per-process prefixes, its
    controller's state messages) stays in Ray's session logs (:func:`worker_log_folder`)."""
    return os.environ.get(WORKER_LOGS_ENV, "").strip().lower() in ("1", "true", "yes")


def worker_log_folder() -> str | None:
    """Where this Ray session keeps its processes' logs, or None without a Ray session."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray._private.worker import global_worker

        return global_worker.node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - a client connection has no local node; nothing to point at
        return None


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
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=worker_logs_to_console())
        return
    # On Linux Ray replaces 127.0.0.1 by the machine's address and listens on every interface; its single-node
    # mode (the Windows/macOS default) keeps every listener on loopback. Set for the processes ray.init starts
    # only, so a later `ray start` of the user's (or a test's) cluster is not affected.
    from ray._private import ray_constants

    previous_env = os.environ.get(LOCAL_ONLY_ENV)
    previous_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    # Ray 2.60 turns token authentication on for a new local instance (as celltune wants) and says so with a
    # warning that would come before every one-line error of ours; keep the setting, drop the notice.
    notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
    previous_level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=worker_logs_to_console(),
        )
    finally:
        notice.setLevel(previous_level)
        ray_constants.ENABLE_RAY_CLUSTER = previous_flag
        if previous_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = previous_env


def task_events(running: dict, describe) -> Iterator[tuple[Any, Any, str, Any]]:
    """``(generator, key, event, payload)`` from streaming Ray tasks as they come, until ``running`` is empty.

    ``running`` maps each task's ObjectRefGenerator to its key; the tasks yield ``(event, payload)`` pairs. A
    finished generator leaves ``running`` here; callers may remove one earlier (on their "done" event). A task's
    UserInputError stays one (a user error wherever it showed); any other failure becomes a RuntimeError saying
    ``describe(key)``.
    """
    import ray

    from celltune.data_prep.common import UserInputError

    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for gen in ready:
            if gen not in running:
                continue
            key = running[gen]
            try:
                ref = next(gen)
            except StopIteration:
                del running[gen]
                continue
            try:
                event, payload = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, UserInputError):
                    raise UserInputError(str(cause)) from None
                raise RuntimeError(f"{describe(key)} failed: {type(cause).__name__ if cause else 'error'}: "
                                   f"{cause}") from exc
            yield gen, key, event, payload
