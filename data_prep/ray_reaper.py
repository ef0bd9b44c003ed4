"""Stops what a local Ray instance leaves behind when its driver dies without shutting it down (SIGKILL, the
OOM killer): Ray 2.60's GCS and raylet go with their driver, but its dashboard and runtime-env agents live on.

:func:`celltune.data_prep.ray_session.ensure_ray` starts the local instance with a marker in its environment
(every Ray process inherits it, agents and workers included) and this watcher in a session of its own, so a
signal to the driver's process group does not reach it. It waits for the driver to end, then SIGKILLs every
process that carries the marker, and exits. Linux only (it reads /proc).

    python -m celltune.data_prep.ray_reaper DRIVER_PID MARKER PID,PID,...   (the instance's processes so far)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

OWNER_ENV = "CELLTUNE_RAY_OWNER"
POLL_S = 0.5
CHECK_INSTANCE_EVERY = 20  # polls: whether the instance still runs, every 10 s (reading /proc costs more)


def running(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def marked(marker: str, env: str = OWNER_ENV) -> list[int]:
    """The running processes (other than this one) whose environment holds ``env=marker``."""
    return _with_environ([f"{env}={marker}\0".encode()])


def _with_environ(needles: list[bytes]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if any(needle in environ for needle in needles) and running(int(entry)):
            found.append(int(entry))
    return found


def reap(marker: str, known: set[int]) -> int:
    """SIGKILL every marked process, and the agents of the raylets among ``known`` (Ray starts its agents with an
    environment of their own, which names their raylet but not the marker); returns how many were signalled."""
    agents = _with_environ([f"RAY_RAYLET_PID={pid}\0".encode() for pid in known]) if known else []
    count = 0
    for pid in {*marked(marker), *agents}:
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except ProcessLookupError:
            pass
    return count


def watch(driver: int, marker: str, started: set[int]) -> None:
    """Until the driver ends (then reap) or its instance has gone on its own (`ray.shutdown()`: nothing to do).
    ``started``: the instance's processes as the driver saw them (its raylet among them: a driver killed at once
    takes the raylet along before this process could see it)."""
    known = started | set(marked(marker))
    checks = 0
    while running(driver):
        time.sleep(POLL_S)
        checks += 1
        if checks % CHECK_INSTANCE_EVERY == 0:
            now = marked(marker)
            if not now:
                return
            known |= set(now)
    reap(marker, known)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the driver, which shuts Ray down itself
    watch(int(sys.argv[1]), sys.argv[2], {int(pid) for pid in sys.argv[3].split(",") if pid})
