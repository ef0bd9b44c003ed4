"""A local Ray started by celltune listens on loopback only (Linux Ray otherwise binds every interface)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")]

LOOPBACK4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
LOOPBACK6 = ("0000000000000000FFFF00000100007F", "00000000000000000000000001000000")  # ::ffff:127.0.0.1, ::1

SCRIPT = """
import os, sys, time
from celltune.data_prep.ray_session import ensure_ray
import ray
ensure_ray(num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
print("READY", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), flush=True)
time.sleep(60)
"""


def _tree(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {root}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    return tree


def _listening(pids: set[int]) -> list[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                addresses.append(fields[1].split(":")[0])
    return addresses


def test_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env, start_new_session=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("READY"), "local Ray did not start"
        assert line.split()[1] == "None", "the single-node switch leaked into the caller's environment"
        time.sleep(1)
        addresses = _listening(_tree(process.pid))
        assert addresses, "found no listening sockets of the Ray processes"
        public = [a for a in addresses if a != LOOPBACK4 and a not in LOOPBACK6]
        assert not public, f"listening beyond loopback: {public}"
    finally:
        os.killpg(process.pid, 9)
        process.wait()
