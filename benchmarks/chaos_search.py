"""Chaos search (issue 18): a search must finish whole while its worker nodes are killed under it and its driver
is killed once, as Ray's own release test demands of Tune.

A Ray cluster of separate `ray start` processes on this machine (``local_ray_cluster.py``): a head without CPUs
(it hosts the driver's job, never a trial) and ``--workers`` nodes of one CPU each. `celltune search` runs a
demo-sized space there in a subprocess: a checkpoint at every evaluation, no early stopping (every trial must
reach its final epoch) and ``--max-failures -1``. A killer SIGKILLs every process of a worker node about every
``--kill-every`` seconds (one running a trial when there is one, else any) and starts it again
``--restart-after`` seconds later. Once ``--driver-kill-after``
trials have finished, the search's driver is SIGKILLed too, and `celltune search --resume` continues it.

It passes when the search exits 0 with every trial completed; every trial's results reach the final epoch; no
trial that had finished before the driver kill reports again; every trial has exactly one MLflow child run and
none is left RUNNING; and the registered version is the best trial's. It prints the kills survived (and how many
hit a node running a trial), the restarts of trials that had reported, the trials completed, epochs reported
twice, and the wall time against the same search
without kills (run first, on a fresh cluster of the same shape, unless ``--no-baseline``). Exit 1 on any
failed check. Linux only.

    .venv/bin/python benchmarks/chaos_search.py [--trials 8] [--epochs 4] [--kill-every 20] [--json chaos.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from local_ray_cluster import LocalCluster, processes_marked

SEARCH_NAME = "chaos"
MODEL_NAME = "chaos-model"


@dataclass
class ArmResult:
    """One search on one fresh cluster: what happened to it and what it left."""

    arm: str
    exit_code: int | None = None
    wall_s: float = 0.0
    node_kills: int = 0
    trial_kills: int = 0  # kills of a node that was running a trial (starting, training or evaluating)
    driver_kills: int = 0
    trials: int = 0
    completed: int = 0
    trial_restarts: int = 0
    replaced: int = 0  # trials started in the instant before the driver kill, before Tune saved them: run again
    repeated_epochs: int = 0
    nodes_used: int = 0  # Ray node ids trials reported from (a restarted node comes back with a new id)
    concurrent_on_two_nodes: bool = False  # two trials trained at the same time, each on its own node
    failures: list[str] = field(default_factory=list)


def write_space(folder: Path, epochs: int, steps: int) -> Path:
    """The shipped demo space with every trial running all its epochs and the model chosen as the best trial."""
    from celltune.search_spaces.space import resolve_space_path

    spec = yaml.safe_load(resolve_space_path("demo").read_text())
    spec.update(name="chaos", early_stopping=None)
    training = spec["base_config"]["training"]
    training.update(epochs=epochs, steps_per_epoch=steps, eval_every=1)
    spec["postprocess"] = {"trials": 2, "parameters": spec["postprocess"]["parameters"]}
    path = folder / "chaos-space.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def demo_stores(folder: Path) -> Path:
    """The demo's synthetic stores, made in a subprocess (its local Ray must not meet the test cluster)."""
    script = ("import sys; from pathlib import Path; from celltune.platform.demo import run_demo; "
              "print(run_demo(Path(sys.argv[1]), show_progress=False).stores)")
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise SystemExit(f"chaos: could not make the demo stores: {last}")
    return Path(done.stdout.strip().splitlines()[-1])


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """Each trial folder's reported results (a line being written is left for the next look)."""
    results = {}
    for folder in sorted(experiment.glob("run_trial_*")):
        lines = []
        path = folder / "result.json"
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    break
        results[folder.name] = lines
    return results


def finished(results: list[dict], epochs: int) -> bool:
    return bool(results) and int(results[-1]["epoch"]) >= epochs


def ran_side_by_side(trials: list[list[dict]]) -> bool:
    """Whether two trials reported from different nodes at overlapping times (the search used both workers)."""
    spans = [(r["timestamp"] - r["time_this_iter_s"], r["timestamp"], r["node_id"], index)
             for index, lines in enumerate(trials) for r in lines]
    return any(a[3] != b[3] and a[2] != b[2] and a[0] < b[1] and b[0] < a[1] for a in spans for b in spans)


def is_trial(pid: int) -> bool:
    """A Tune trial's actor process (Ray names it after the function trainable's class)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc")
    except OSError:
        return False


class NodeKiller:
    """SIGKILLs a worker node about every ``every`` seconds (0.5-1.5x, seeded) of a whole cluster and restarts it
    ``restart_after`` seconds later: one that hosts a trial's process when there is one (the harm a node loss can
    do), else any."""

    def __init__(self, cluster: LocalCluster, workers: list[str], every: float, restart_after: float,
                 seed: int) -> None:
        self.cluster, self.workers = cluster, workers
        self.every, self.restart_after = every, restart_after
        self.random = random.Random(seed)
        self.kills: list[tuple[float, str]] = []
        self.trial_kills = 0  # kills of a node that ran a trial's process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NodeKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.every * self.random.uniform(0.5, 1.5)):
            candidates = [node for node in self.cluster.nodes if node.name in self.workers]
            if not candidates:
                continue
            busy = [node for node in candidates if any(is_trial(pid) for pid in processes_marked(node.marker))]
            node = self.random.choice(busy or candidates)
            self.trial_kills += bool(busy)
            self.cluster.kill(node)
            self.kills.append((round(time.monotonic() - start, 1), node.name))
            print(f"chaos: killed node {node.name}{' (running a trial)' if busy else ''} at {self.kills[-1][0]} s "
                  f"({len(self.kills)} kills)", flush=True)
            if self._stop.wait(self.restart_after):
                return  # the search is over; the cluster is about to be stopped
            self.cluster.restart(node)
            # the next interval counts from a whole cluster again: on a slow machine a node takes seconds to
            # join, and kills timed from the restart would keep a node down most of the time
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.cluster.node_ids(expected=len(self.cluster.nodes), timeout=60)


def start_cluster(root: Path, workers: int) -> tuple[LocalCluster, list[str]]:
    cluster = LocalCluster(root)
    cluster.start_node("head", {"head_node": 1}, num_cpus=0)
    cluster.wait_for_head()
    names = [f"worker{i}" for i in range(workers)]
    for name in names:
        cluster.start_node(name, {f"{name}_node": 1}, num_cpus=1)
    cluster.node_ids(expected=workers + 1)
    return cluster, names


def search_command(args: argparse.Namespace, space: Path, stores: Path, cluster: LocalCluster, storage: Path,
                   tracking_uri: str, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "celltune.platform", "search", "--space", str(space), "--stores", str(stores),
               "--address", cluster.address, "--storage", str(storage), "--name", SEARCH_NAME,
               "--tracking-uri", tracking_uri, "--register-as", MODEL_NAME]
    if resume:
        return [*command, "--resume"]
    return [*command, "--trials", str(args.trials), "--max-failures", "-1", "--seed", str(args.seed)]


def run_arm(args: argparse.Namespace, arm: str, space: Path, stores: Path, root: Path) -> ArmResult:
    """One search on a fresh cluster; with ``arm == "chaos"`` under the node killer and one driver kill."""
    folder = root / arm
    folder.mkdir(parents=True)
    storage, tracking_uri = folder / "searches", f"sqlite:///{folder / 'mlflow.db'}"
    result = ArmResult(arm)
    cluster, workers = start_cluster(folder, args.workers)
    experiment = storage / SEARCH_NAME
    log = folder / "search.log"

    def start_search(resume: bool) -> subprocess.Popen:
        with log.open("a") as handle:
            return subprocess.Popen(search_command(args, space, stores, cluster, storage, tracking_uri, resume),
                                    env=cluster.env(), cwd=folder, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    search = None
    done_before_kill: dict[str, int] = {}
    killer = NodeKiller(cluster, workers, args.kill_every, args.restart_after, args.seed) if arm == "chaos" \
        else None
    try:
        start = time.monotonic()
        deadline = start + args.timeout
        search = start_search(resume=False)
        with killer or contextlib.nullcontext():
            while killer and search.poll() is None and time.monotonic() < deadline:
                results = trial_results(experiment)
                done = {name: len(lines) for name, lines in results.items() if finished(lines, args.epochs)}
                if len(done) >= args.driver_kill_after:  # the driver dies mid-search, then `--resume`
                    os.killpg(search.pid, signal.SIGKILL)
                    search.wait()
                    result.driver_kills, done_before_kill = 1, done
                    print(f"chaos: killed the search's driver at {time.monotonic() - start:.0f} s with "
                          f"{len(done)} trials finished; resuming", flush=True)
                    with log.open("a") as handle:
                        handle.write("\n--- driver killed; celltune search --resume ---\n")
                    search = start_search(resume=True)
                    break
                time.sleep(0.5)
            while search.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
        if search.poll() is None:
            result.failures.append(f"the search did not end within {args.timeout} s")
        result.exit_code = search.poll()
        result.wall_s = time.monotonic() - start
    finally:
        if search is not None and search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
            search.wait()
        cluster.stop_all()
    result.node_kills = len(killer.kills) if killer else 0
    result.trial_kills = killer.trial_kills if killer else 0
    check(result, args, experiment, log, tracking_uri, done_before_kill)
    return result


def check(result: ArmResult, args: argparse.Namespace, experiment: Path, log: Path, tracking_uri: str,
          done_before_kill: dict[str, int]) -> None:
    """The pass conditions; each failure is one line in ``result.failures``."""
    from mlflow import MlflowClient

    out = log.read_text()
    fail = result.failures.append
    if result.exit_code != 0:
        fail(f"the search exited {result.exit_code}: {out.strip().splitlines()[-1] if out.strip() else ''}")
    if f"{args.trials} trials ({args.trials} completed, 0 stopped early by ASHA, 0 failed)" not in out:
        fail("the summary does not say every trial completed")
    results = trial_results(experiment)
    # A trial Tune started just before its driver died, but had not yet saved in its state, never reports: the
    # resumed search starts it again under a new id (the searcher replays the same sample) and marks its child run.
    unsaved = {name for name, lines in results.items() if not lines}
    results = {name: lines for name, lines in results.items() if lines}
    result.trials = len(results)
    result.replaced = len(unsaved)
    if result.trials != args.trials:
        fail(f"{result.trials} trials reported results, {args.trials} were asked for")
    result.completed = sum(finished(lines, args.epochs) for lines in results.values())
    result.nodes_used = len({r["node_id"] for lines in results.values() for r in lines})
    result.concurrent_on_two_nodes = ran_side_by_side(list(results.values()))
    for name, lines in results.items():
        epochs = [int(r["epoch"]) for r in lines]
        if not finished(lines, args.epochs):
            fail(f"{name} stopped at epoch {max(epochs, default=0)} of {args.epochs}")
        elif sorted(set(epochs)) != list(range(1, args.epochs + 1)):
            fail(f"{name} skipped epochs: {epochs}")
        elif len(epochs) != len(set(epochs)):  # a restart went back further than its last checkpoint
            fail(f"{name} reported epochs twice: {epochs}")
        result.repeated_epochs += len(epochs) - len(set(epochs))
        result.trial_restarts += len({int(r["pid"]) for r in lines}) - 1 if lines else 0
    for name, count in done_before_kill.items():
        if len(results.get(name, [])) != count:
            fail(f"{name} had finished before the driver kill and reported again after it")

    client = MlflowClient(tracking_uri=tracking_uri)
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.`celltune.search_name` = '{SEARCH_NAME}' "
                                                "and tags.`celltune.kind` = 'trial'")
    per_trial: dict[str, list] = {}
    for child in children:
        per_trial.setdefault(child.data.tags.get("celltune.trial_id", "?"), []).append(child)
    duplicated = {trial: len(runs) for trial, runs in per_trial.items() if len(runs) > 1}
    if duplicated:
        fail(f"trials with more than one MLflow child run: {duplicated}")
    running = [child.info.run_name for child in children if child.info.status == "RUNNING"]
    if running:
        fail(f"child runs left RUNNING: {running}")
    ran = {lines[-1]["trial_id"] for lines in results.values()}
    if ran - set(per_trial):
        fail(f"trials without a child run: {sorted(ran - set(per_trial))}")
    for trial in set(per_trial) - ran:
        for child in per_trial[trial]:
            if child.data.tags.get("celltune.trial_status") != "lost" or child.info.status != "KILLED":
                fail(f"child run {child.info.run_name} of trial {trial} has no results and is not marked lost")
    if len(set(per_trial) - ran) > len(unsaved):
        fail(f"{len(set(per_trial) - ran)} child runs without results, {len(unsaved)} unsaved trials")

    best_value = max((float(lines[-1].get("best/seg_mean", float("-inf"))) for lines in results.values() if lines),
                     default=None)
    best = {lines[-1]["trial_id"] for lines in results.values()
            if lines and abs(float(lines[-1].get("best/seg_mean", float("-inf"))) - best_value) < 1e-9}
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    if len(versions) != 1:
        fail(f"{len(versions)} registered versions of {MODEL_NAME} (one expected)")
    elif versions[0].tags.get("celltune.trial_id") not in best:
        fail(f"registered trial {versions[0].tags.get('celltune.trial_id')}, best {sorted(best)} "
             f"(best/seg_mean {best_value})")


def table(results: list[ArmResult]) -> str:
    baseline = next((r for r in results if r.arm == "baseline"), None)
    lines = ["| arm | node kills | of a node running a trial | driver kills | trials completed | restarts after a "
             "report | trials started again | epochs reported twice | wall s | wall vs baseline | checks |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r.wall_s / baseline.wall_s:.2f}" if baseline and baseline.wall_s else "-"
        cells = [r.arm, r.node_kills, r.trial_kills, r.driver_kills, f"{r.completed}/{r.trials}",
                 r.trial_restarts, r.replaced, r.repeated_epochs, f"{r.wall_s:.0f}", ratio,
                 "pass" if not r.failures else f"{len(r.failures)} failed"]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial, one evaluation and checkpoint each")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per epoch")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes of one CPU each")
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between node kills (0.5-1.5x)")
    parser.add_argument("--restart-after", type=float, default=5.0, help="seconds a killed node stays down")
    parser.add_argument("--driver-kill-after", type=int, default=3, help="finished trials before the driver kill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per search before it counts as lost")
    parser.add_argument("--stores", type=Path, default=None, help="demo stores (default: generated)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the search without kills")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("chaos: needs Linux (finds each node's processes through /proc)")

    with tempfile.TemporaryDirectory(prefix="celltune-chaos-") as scratch:
        root = (args.workdir or Path(scratch)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        stores = args.stores.resolve() if args.stores else demo_stores(root / "demo")
        space = write_space(root, args.epochs, args.steps)
        arms = ["chaos"] if args.no_baseline else ["baseline", "chaos"]
        results = []
        for arm in arms:
            print(f"chaos: {arm} search of {args.trials} trials x {args.epochs} epochs on a head and "
                  f"{args.workers} worker nodes", flush=True)
            results.append(run_arm(args, arm, space, stores, root))
            for failure in results[-1].failures:
                print(f"chaos: {arm}: FAILED {failure}", flush=True)
        print(table(results))
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
