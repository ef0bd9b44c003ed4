"""`celltune search --address` on a real two-node Ray cluster on this machine, and the loss of a node mid-search.

The test starts its own Ray head and a second node with `ray start --block` (token authentication with the
test's own token, own temp dirs, no dashboard) and drives `celltune search` in a subprocess against it. Each
node's processes carry a marker in their environment, so one node can be stopped alone and nothing of the test
outlives it: `ray stop` is never used, since it stops every Ray instance on the machine (the test session's and
other users').

Ray 2.60 on Linux replaces ``--node-ip-address 127.0.0.1`` with the machine's own address and then listens on
all interfaces; its only loopback-only mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) refuses a second node.
The token is what keeps this short-lived cluster private.
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

import pytest
import yaml

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the test's Ray processes through /proc"),
]

RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "CELLTUNE_TEST_RAY_NODE"
EPOCHS = 3
TRIALS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _processes_marked(value: str) -> list[int]:
    needle = f"{MARKER}={value}\0".encode()
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and needle in _environ_of(pid) and _alive(pid)]


@dataclass
class RayNode:
    name: str
    marker: str
    temp_dir: Path
    process: subprocess.Popen


@dataclass
class LocalCluster:
    """A Ray cluster of `ray start --block` nodes on 127.0.0.1, each stoppable on its own."""

    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(6))
    port: int = field(default_factory=_free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[RayNode] = field(default_factory=list)

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

    def start_node(self, name: str, resources: dict[str, float]) -> RayNode:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"ct{name[0]}", dir="/tmp"))  # short: Ray's socket paths
        marker = f"{self.tag}-{name}"
        head = not self.nodes
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if head else [
            "--address", self.address]
        if head and importlib.util.find_spec("grpc"):  # Ray starts its client server, on 10001 unless told
            where += ["--ray-client-server-port", str(_free_port())]
        command = [RAY, "start", "--block", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                   "--resources", json.dumps(resources), "--temp-dir", str(temp_dir), "--disable-usage-stats",
                   "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port",
                   str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
                   "--metrics-export-port", str(_free_port())]
        with (self.root / f"ray-{name}.log").open("w") as log:
            process = subprocess.Popen(command, env=self.env(marker), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        node = RayNode(name, marker, temp_dir, process)
        self.nodes.append(node)
        return node

    def wait_for_head(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.nodes[0].process.poll() is None, f"the Ray head exited\n{self.logs()}"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise AssertionError(f"the Ray head did not listen on port {self.port} within {timeout} s\n{self.logs()}")

    def node_ids(self, expected: int, timeout: float = 90) -> dict[str, str]:
        """Custom resource of each node (head_node, second_node) -> its Ray node id, once ``expected`` are up."""
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
        assert done.returncode == 0, f"cannot reach the test cluster: {done.stderr[-3000:]}\n{self.logs()}"
        ids = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(ids) == expected, f"{len(ids)} of {expected} Ray nodes came up: {ids}\n{self.logs()}"
        return ids

    def stop(self, node: RayNode, grace: float = 10) -> None:
        """What `ray stop` does (SIGTERM, then SIGKILL after ``grace``), for this node's processes only."""
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            for pid in [node.process.pid, *_processes_marked(node.marker)]:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (node.process.poll() is None or _processes_marked(node.marker)):
                time.sleep(0.2)
            if node.process.poll() is not None and not _processes_marked(node.marker):
                return

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            self.stop(node)
        leftovers = {node.name: _processes_marked(node.marker) for node in self.nodes}
        assert not any(leftovers.values()), f"Ray processes of the test cluster still running: {leftovers}"
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.root.glob("ray-*.log")))


def _results(trial_folder: Path) -> list[dict]:
    path = trial_folder / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trial_folders(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("run_trial_*") if p.is_dir())


def _space_without_early_stopping(tmp_path: Path) -> Path:
    """The shipped demo space with every trial running all its epochs (ASHA could stop the trial to lose)."""
    from celltune.search_spaces.space import resolve_space_path

    spec = yaml.safe_load(resolve_space_path("demo").read_text())
    spec.update(name="demo-cluster", early_stopping=None)
    spec["base_config"]["training"]["epochs"] = EPOCHS
    spec["postprocess"]["trials"] = 2
    path = tmp_path / "demo-cluster.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_search_spreads_trials_over_two_nodes_and_survives_losing_one(tmp_path, demo_stores):
    cluster = LocalCluster(tmp_path)
    storage = tmp_path / "searches"
    search = None
    try:
        head = cluster.start_node("head", {"head_node": 1})
        cluster.wait_for_head()
        second = cluster.start_node("second", {"second_node": 1})
        ids = cluster.node_ids(expected=2)
        head_id, second_id = ids["head_node"], ids["second_node"]

        # Trials of one CPU each on two one-CPU nodes: two at a time only with both nodes in use.
        command = [sys.executable, "-m", "celltune.platform", "search", "--space",
                   str(_space_without_early_stopping(tmp_path)), "--stores", str(demo_stores), "--address",
                   cluster.address, "--trials", str(TRIALS), "--storage", str(storage), "--name", "cluster",
                   "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--register-as", "cluster-model"]
        log = tmp_path / "search.log"
        with log.open("w") as handle:
            search = subprocess.Popen(command, env=cluster.env(), cwd=tmp_path, stdout=handle,
                                      stderr=subprocess.STDOUT, start_new_session=True)

        lost: str | None = None  # the folder of the trial running on the second node when it went away
        deadline = time.monotonic() + 150
        while lost is None and time.monotonic() < deadline and search.poll() is None:
            for folder in _trial_folders(storage / "cluster"):
                try:
                    results = _results(folder)
                except ValueError:  # a line being written
                    continue
                if results and results[-1]["node_id"] == second_id and int(results[-1]["epoch"]) < EPOCHS:
                    cluster.stop(second, grace=5)  # a node lost mid-trial
                    lost = folder.name
                    break
            time.sleep(0.1)
        assert lost is not None, f"no trial ran on the second node before the search ended\n{log.read_text()}"
        assert second.process.poll() is not None and not _processes_marked(second.marker)

        code = search.wait(timeout=240)
        out = log.read_text()
        assert code == 0, out[-5000:]
        assert f"search cluster: {TRIALS} trials ({TRIALS} completed, 0 stopped early by ASHA, 0 failed)" in out, \
            out[-5000:]
        assert "registered models:/cluster-model/1" in out

        folders = _trial_folders(storage / "cluster")
        assert len(folders) == TRIALS
        runs = {folder.name: _results(folder) for folder in folders}
        for name, results in runs.items():
            assert [int(r["epoch"]) for r in results] == list(range(1, EPOCHS + 1)), name
        nodes_used = {r["node_id"] for results in runs.values() for r in results}
        assert nodes_used == {head_id, second_id}

        # Two trials ran at the same time, one on each node.
        spans = {name: (results[0]["timestamp"] - results[0]["time_this_iter_s"], results[-1]["timestamp"])
                 for name, results in runs.items()}
        on_second = [name for name, results in runs.items() if results[0]["node_id"] == second_id]
        on_head = [name for name, results in runs.items() if results[0]["node_id"] == head_id]
        assert any(spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1] for a in on_second for b in on_head)

        # The trial that lost its node went on from its checkpoint on the head: no epoch twice, none skipped.
        nodes = [r["node_id"] for r in runs[lost]]
        on_second_node = nodes.count(second_id)
        assert 0 < on_second_node < EPOCHS and nodes == [second_id] * on_second_node + [head_id] * (
            EPOCHS - on_second_node), nodes
        assert len({int(r["pid"]) for r in runs[lost]}) == 2
        assert head.process.poll() is None  # the head ran to the end
    finally:
        if search is not None and search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
        cluster.stop_all()
