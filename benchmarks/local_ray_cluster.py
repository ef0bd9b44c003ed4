"""A Ray cluster of separate `ray start --block` nodes on this machine, each of which can be stopped, killed and
started again on its own: what the chaos search (`chaos_search.py`, and its short version in the tests) runs on.

Every node runs with token authentication (the cluster's own token), its own temp dir and no dashboard. Each
node's processes carry a marker in their environment, so one node can be stopped alone and nothing outlives
the cluster: `ray stop` is never used, since it stops every Ray instance on the machine (other users' too).

Ray 2.60 on Linux replaces ``--node-ip-address 127.0.0.1`` with the machine's own address and then listens on
all interfaces; its only loopback-only mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) refuses a second node.
The token is what keeps this short-lived cluster private. Linux only (processes are found through /proc).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from process_groups import free_port

RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "CELLTUNE_TEST_RAY_NODE"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def processes_marked(value: str) -> list[int]:
    """The running processes of the node whose marker is ``value`` (in their environment)."""
    needle = f"{MARKER}={value}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ and alive(int(entry)):
            found.append(int(entry))
    return found


@dataclass
class RayNode:
    name: str
    marker: str
    temp_dir: Path
    process: subprocess.Popen
    resources: dict[str, float]
    num_cpus: float


@dataclass
class LocalCluster:
    """A Ray cluster of `ray start --block` nodes on 127.0.0.1; the first node started is the head."""

    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(6))
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[RayNode] = field(default_factory=list)
    _retired: list[RayNode] = field(default_factory=list)  # killed nodes, for their temp dirs

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, marker: str | None = None) -> dict[str, str]:
        """Token authentication with this cluster's own token, and no inherited RAY_ADDRESS to connect elsewhere."""
        dropped = ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
        env = {key: value for key, value in os.environ.items() if key not in dropped}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        if marker:
            env[MARKER] = marker
        return env

    def start_node(self, name: str, resources: dict[str, float], num_cpus: float = 1) -> RayNode:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"ct{name[0]}", dir="/tmp"))  # short: Ray's socket paths
        marker = f"{self.tag}-{name}"
        head = not self.nodes
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if head else [
            "--address", self.address]
        if head and importlib.util.find_spec("grpc"):  # Ray starts its client server, on 10001 unless told
            where += ["--ray-client-server-port", str(free_port())]
        command = [RAY, "start", "--block", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", f"{num_cpus:g}",
                   "--resources", json.dumps(resources), "--temp-dir", str(temp_dir), "--disable-usage-stats",
                   "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port",
                   str(free_port()), "--runtime-env-agent-port", str(free_port()),
                   "--metrics-export-port", str(free_port())]
        with (self.root / f"ray-{name}.log").open("a") as log:
            process = subprocess.Popen(command, env=self.env(marker), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        node = RayNode(name, marker, temp_dir, process, dict(resources), num_cpus)
        self.nodes.append(node)
        return node

    def wait_for_head(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nodes[0].process.poll() is not None:
                raise RuntimeError(f"the Ray head exited\n{self.logs()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the Ray head did not listen on port {self.port} within {timeout} s\n{self.logs()}")

    def node_ids(self, expected: int, timeout: float = 90) -> dict[str, str]:
        """Custom resource of each node (``*_node``) -> its Ray node id, once ``expected`` nodes are up."""
        script = textwrap.dedent(f"""
            import json, logging, time, ray
            ray.init(address={self.address!r}, logging_level=logging.WARNING)
            deadline = time.monotonic() + {timeout}
            while True:
                alive = [n for n in ray.nodes() if n["Alive"]]
                if len(alive) >= {expected} or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            print(json.dumps({{key: n["NodeID"] for n in alive for key in n["Resources"] if key.endswith("_node")}}))
        """)
        done = subprocess.run([sys.executable, "-c", script], env=self.env(), capture_output=True, text=True,
                              timeout=timeout + 60)
        if done.returncode != 0:
            raise RuntimeError(f"cannot reach the cluster: {done.stderr[-3000:]}\n{self.logs()}")
        ids = json.loads(done.stdout.strip().splitlines()[-1])
        if len(ids) != expected:
            raise RuntimeError(f"{len(ids)} of {expected} Ray nodes came up: {ids}\n{self.logs()}")
        return ids

    def stop(self, node: RayNode, grace: float = 10) -> None:
        """What `ray stop` does (SIGTERM, then SIGKILL after ``grace``), for this node's processes only."""
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            self._signal(node, signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.running(node):
                time.sleep(0.2)
            if not self.running(node):
                return

    def kill(self, node: RayNode) -> None:
        """SIGKILL every process of the node at once, as when its machine is lost; it leaves the cluster."""
        self._signal(node, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.running(node):
            time.sleep(0.1)
        self.nodes.remove(node)
        self._retired.append(node)

    def restart(self, node: RayNode) -> RayNode:
        """A killed node's replacement: the same name and resources, a new Ray node id."""
        return self.start_node(node.name, node.resources, node.num_cpus)

    def running(self, node: RayNode) -> bool:
        return node.process.poll() is None or bool(processes_marked(node.marker))

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            self.stop(node)
        leftovers = {node.name: processes_marked(node.marker) for node in self.nodes + self._retired}
        if any(leftovers.values()):
            raise RuntimeError(f"Ray processes of the cluster still running: {leftovers}")
        for node in self.nodes + self._retired:
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.root.glob("ray-*.log")))

    def _signal(self, node: RayNode, signum: int) -> None:
        for pid in [node.process.pid, *processes_marked(node.marker)]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
