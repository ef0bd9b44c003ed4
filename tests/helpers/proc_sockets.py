"""Which TCP sockets processes listen on, read from /proc: no psutil, no `ss` on a bare CI machine."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def listening_addresses(pid: int | str = "self") -> list[str]:
    """Local host addresses of the listening TCP sockets of process ``pid`` (IPv4-mapped IPv6 as IPv4)."""
    return [address for _, address in listening_sockets([pid])]


def listening_sockets(pids: list[int | str]) -> list[tuple[int | str, str]]:
    """``(pid, host address)`` of every listening TCP socket of ``pids``; the socket tables are read once (they
    list the whole network namespace, so reading them per process would cost as much as the scan itself)."""
    owners: dict[str, int | str] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[target[8:-1]] = pid
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN
                found.append((owners[fields[9]], _host(bytes.fromhex(fields[1].split(":")[0]))))
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _host(raw: bytes) -> str:
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    address = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(address.ipv4_mapped or address)
