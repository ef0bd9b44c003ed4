"""Tracking under load (issue 18): many trial processes logging to one MLflow store at once lose nothing.

Each of ``--processes`` processes plays a trial through celltune's own logger (:class:`RunLogger`, what every
trial's observer writes with): its params once, then until ``--seconds`` have passed, batches of per-step
metrics (10 steps x 4 metrics, as training flushes them) and, every fifth batch, an evaluation (6 metrics, a
learning-curve figure, a tag). They start together once all are ready. Then the driver reads every run back and
compares it with what each process says it wrote.

Two stores: the default SQLite file (``sqlite``), and a local ``mlflow server`` on 127.0.0.1 over a SQLite file
of its own (``server``; artifacts proxied by the server). Prints per store: processes, seconds, metric values
written and per second, params, figures, values lost, processes failed, and writes tried again because the
store was busy. Exit 1 when anything was lost or a process failed.

    .venv/bin/python benchmarks/tracking_load.py [--processes 16] [--seconds 120] [--stores sqlite server]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from process_groups import free_port, stop_process_group

STEPS_PER_BATCH, STEP_METRICS, EVAL_METRICS, EVAL_EVERY, PARAMS = 10, 4, 6, 5, 60


@dataclass
class Written:
    """What one process says it wrote."""

    metric_values: int = 0
    params: int = 0
    figures: int = 0
    tags: int = 0
    retries: int = 0
    error: str | None = None
    per_key: dict[str, int] = field(default_factory=dict)


@dataclass
class StoreResult:
    store: str
    processes: int
    seconds: float
    metric_values: int = 0
    params: int = 0
    figures: int = 0
    lost: int = 0
    failed: int = 0
    retries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.metric_values / self.seconds if self.seconds else 0.0


def play_trial(uri: str, run_id: str, seconds: float, ready: Path, go: Path, out: Path) -> None:
    """One trial's logging, in its own process; writes what it wrote to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from celltune.platform import tracking

    written = Written()
    run = tracking.RunLogger(uri, run_id)
    ready.touch()
    while not go.exists():
        time.sleep(0.05)
    try:
        run.log_params({f"param.{i:02d}": str(i) for i in range(PARAMS)})
        written.params = PARAMS
        deadline, step, batch = time.monotonic() + seconds, 0, 0
        while time.monotonic() < deadline:
            records = [(step + i, {f"loss/part{k}": float(step + i + k) for k in range(STEP_METRICS)})
                       for i in range(STEPS_PER_BATCH)]
            run.log_metric_records(records)
            for _, metrics in records:
                for key in metrics:
                    written.per_key[key] = written.per_key.get(key, 0) + 1
            written.metric_values += STEPS_PER_BATCH * STEP_METRICS
            step += STEPS_PER_BATCH
            batch += 1
            if batch % EVAL_EVERY == 0:
                evaluation = {f"seg/dataset{k}": k / 10 for k in range(EVAL_METRICS)}
                run.log_metrics(evaluation, step=step)
                for key in evaluation:
                    written.per_key[key] = written.per_key.get(key, 0) + 1
                written.metric_values += EVAL_METRICS
                figure, axes = plt.subplots(figsize=(3, 2))
                axes.plot(range(step))
                run.log_figure(figure, f"plots/curve_{step:06d}.png")
                plt.close(figure)
                written.figures += 1
                run.set_tags({"celltune.last_step": step})
                written.tags += 1
    except Exception as error:  # the run counts as failed; the driver reports it
        written.error = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    written.retries = tracking.retries_on_busy_store()
    out.write_text(json.dumps(asdict(written)))


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
               f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "server-artifacts")]
    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tracking_load: mlflow server exited: {(folder / 'server.log').read_text()[-500:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"http://127.0.0.1:{port}"
        time.sleep(0.5)
    stop_process_group(server)
    raise SystemExit("tracking_load: mlflow server did not listen within 120 s")


def run_store(store: str, processes: int, seconds: float, folder: Path) -> StoreResult:
    from mlflow import MlflowClient

    from celltune.platform.tracking import experiment_id

    folder.mkdir(parents=True)
    server = None
    if store == "server":
        server, uri = start_server(folder)
    else:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = StoreResult(store, processes, seconds)
    workers: list[tuple[subprocess.Popen, Path]] = []
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = experiment_id(client, "tracking-load", uri)
        parent = client.create_run(experiment, run_name="load").info.run_id
        runs = [client.create_run(experiment, run_name=f"trial-{i:02d}", tags={"mlflow.parentRunId": parent})
                .info.run_id for i in range(processes)]
        go = folder / "go"
        for index, run_id in enumerate(runs):
            ready, out = folder / f"ready-{index}", folder / f"written-{index}.json"
            command = [sys.executable, __file__, "--play", uri, run_id, str(seconds), str(ready), str(go), str(out)]
            with (folder / f"worker-{index}.log").open("w") as log:
                workers.append((subprocess.Popen(command, stderr=log), out))
        deadline = time.monotonic() + 300
        while sum((folder / f"ready-{i}").exists() for i in range(processes)) < processes:
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in workers):
                raise SystemExit(f"tracking_load: {store}: workers did not start (see {folder}/worker-*.log)")
            time.sleep(0.2)
        go.touch()
        for process, _ in workers:
            process.wait(timeout=seconds + 600)
        for (process, out), run_id in zip(workers, runs, strict=True):
            if process.returncode != 0 or not out.is_file():
                result.failed += 1
                result.problems.append(f"{run_id}: process exited {process.returncode}")
                continue
            written = Written(**json.loads(out.read_text()))
            result.retries += written.retries
            if written.error:
                result.failed += 1
                result.problems.append(f"{run_id}: {written.error}")
            result.metric_values += written.metric_values
            result.params += written.params
            result.figures += written.figures
            result.lost += count_lost(client, run_id, written, result.problems)
    finally:
        for process, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        if server is not None:
            stop_process_group(server)
    return result


def count_lost(client, run_id: str, written: Written, problems: list[str]) -> int:
    """Values the store lacks of what the process wrote (history lengths, params, figures)."""
    lost = 0
    run = client.get_run(run_id)
    for key, count in written.per_key.items():
        stored = len(client.get_metric_history(run_id, key))
        if stored < count:
            lost += count - stored
            problems.append(f"{run_id}: {key}: {stored} of {count} values stored")
    stored_params = sum(key.startswith("param.") for key in run.data.params)
    if stored_params < written.params:
        lost += written.params - stored_params
        problems.append(f"{run_id}: {stored_params} of {written.params} params stored")
    figures = len(client.list_artifacts(run_id, "plots"))
    if figures < written.figures:
        lost += written.figures - figures
        problems.append(f"{run_id}: {figures} of {written.figures} figures stored")
    return lost


def table(results: list[StoreResult]) -> str:
    lines = ["| store | processes | seconds | metric values | values/s | params | figures | lost | failed | "
             "busy-store retries |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.store} | {r.processes} | {r.seconds:g} | {r.metric_values:,} | {r.per_second:,.0f} | "
                     f"{r.params:,} | {r.figures:,} | {r.lost} | {r.failed} | {r.retries} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--play"]:
        uri, run_id, seconds, ready, go, out = argv[1:]
        play_trial(uri, run_id, float(seconds), Path(ready), Path(go), Path(out))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "server"], default=["sqlite", "server"])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="celltune-load-") as scratch:
        root = (args.workdir or Path(scratch)).resolve()
        results = []
        for store in args.stores:
            print(f"tracking_load: {store}: {args.processes} processes for {args.seconds:g} s", flush=True)
            results.append(run_store(store, args.processes, args.seconds, root / store))
            for problem in results[-1].problems[:20]:
                print(f"tracking_load: {store}: {problem}", flush=True)
        print(table(results))
        if args.json:
            args.json.write_text(json.dumps([{**asdict(r), "per_second": r.per_second} for r in results], indent=2))
    return 1 if any(r.lost or r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
