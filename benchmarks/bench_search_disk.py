"""Disk used by a demo-sized search under the disk budget of issue 18, against the bound it should stay within.

Runs one TPE + ASHA search of the shipped ``demo`` space on the demo stores (tiny budgets: a few epochs of a few
steps), with ``checkpoints_to_keep`` per trial and the checkpoint pruner of
:mod:`celltune.search_spaces.checkpoint_pruning`, while a thread samples the search folder twice a second. It
prints, at the end of the search and at the peak while trials ran: the trials, how many checkpoint folders are
left, their bytes, the whole folder's bytes, and the bound with the ratio checkpoint bytes / bound.

The bound, with ``C`` completed trials (never pruned), ``k`` = ``checkpoints_to_keep``, ``b`` = the best trials kept
(``keep_best``, or the space's ``postprocess.ensemble_members`` when larger: 2 in the demo space),
``m`` = trials at once and ``S`` the largest checkpoint seen:

* at the end: ``(C + b) x k x S`` (stopped trials keep theirs only while among the ``b`` best);
* while running: ``((C + b) x k + m x (k + 1)) x S`` (a running trial writes its new checkpoint before Tune drops
  the oldest).

The folder's other files (Tune's results, states and logs, kilobytes per trial) are shown beside it. The last line
says what the same trials would have left before issue 18 (2 checkpoints per trial, none deleted), at most.

    .venv/bin/python benchmarks/bench_search_disk.py [--trials 50] [--epochs 4] [--steps 2] [--max-concurrent 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DiskSample:
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    total_bytes: int = 0
    largest_checkpoint: int = 0


def sample_disk(experiment: Path) -> DiskSample:
    """The checkpoint folders under a search folder (Tune's trial folders and Train runs) and all its bytes."""
    from celltune.search_spaces.checkpoint_pruning import CHECKPOINT_GLOB, folder_bytes
    from celltune.search_spaces.tuner import TRAIN_RUNS

    folders = [p for p in experiment.glob(f"*/{CHECKPOINT_GLOB}") if p.is_dir()]
    folders += [p for p in experiment.glob(f"{TRAIN_RUNS}/*/{CHECKPOINT_GLOB}") if p.is_dir()]
    sizes = [folder_bytes(folder) or 0 for folder in folders]
    return DiskSample(len(folders), sum(sizes), folder_bytes(experiment) or 0, max(sizes, default=0))


class DiskWatch:
    """Samples ``experiment`` every ``interval_s`` on a thread; keeps the peaks."""

    def __init__(self, experiment: Path, interval_s: float = 0.5) -> None:
        self.experiment = experiment
        self.interval_s = interval_s
        self.peak = DiskSample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _take(self) -> None:
        if not self.experiment.is_dir():
            return
        now = sample_disk(self.experiment)
        self.peak = DiskSample(*(max(a, b) for a, b in zip(dataclasses.astuple(self.peak), dataclasses.astuple(now),
                                                           strict=True)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()


def bounds(completed: int, keep_best: int, keep: int, concurrent: int, checkpoint_bytes: int) -> tuple[int, int]:
    """Checkpoint bytes a search may hold at its end and while its trials run (see the module's docstring)."""
    end = (completed + keep_best) * keep * checkpoint_bytes
    return end, end + concurrent * (keep + 1) * checkpoint_bytes


def format_report(*, trials: int, completed: int, stopped: int, failed: int, end: DiskSample, peak: DiskSample,
                  keep: int, keep_best: int, concurrent: int, unpruned_checkpoints: int, wall_s: float) -> list[str]:
    from celltune.search_spaces.checkpoint_pruning import format_bytes

    size = max(end.largest_checkpoint, peak.largest_checkpoint)
    end_bound, run_bound = bounds(completed, keep_best, keep, concurrent, size)
    header = ["when", "trials", "completed", "stopped", "failed", "checkpoints", "checkpoint bytes", "disk used",
              "bound", "ratio"]
    rows = [
        ["end of search", trials, completed, stopped, failed, end.checkpoints, format_bytes(end.checkpoint_bytes),
         format_bytes(end.total_bytes), format_bytes(end_bound),
         f"{end.checkpoint_bytes / end_bound:.2f}" if end_bound else "-"],
        ["peak, running", trials, completed, stopped, failed, peak.checkpoints, format_bytes(peak.checkpoint_bytes),
         format_bytes(peak.total_bytes), format_bytes(run_bound),
         f"{peak.checkpoint_bytes / run_bound:.2f}" if run_bound else "-"],
    ]
    cells = [header, *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"search disk benchmark: {trials} demo trials, {concurrent} at once, {keep} checkpoint(s) per trial, "
             f"keep_best {keep_best}, largest checkpoint {format_bytes(size)}, {wall_s / 60:.1f} min",
             "bound at the end: (completed + keep_best) x checkpoints_to_keep x checkpoint; while running: plus "
             "concurrent x (checkpoints_to_keep + 1) x checkpoint"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    lines.append(f"before issue 18 (2 checkpoints per trial, none deleted): {unpruned_checkpoints} checkpoints, "
                 f"up to {format_bytes(unpruned_checkpoints * size)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="trials of the search (default 50)")
    parser.add_argument("--epochs", type=int, default=4, help="training.epochs of a full trial (ASHA's max_t)")
    parser.add_argument("--steps", type=int, default=2, help="training.steps_per_epoch")
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials at once (1 CPU each)")
    parser.add_argument("--keep-checkpoints", type=int, default=1, help="checkpoints kept per trial")
    parser.add_argument("--keep-best", type=int, default=1,
                        help="stopped trials kept when among the best (at least the space's ensemble_members)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="demo data and Tune storage (default: temp)")
    args = parser.parse_args()

    # Tune warns about frequent experiment snapshots when short trials checkpoint every epoch; expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # whose verbose=0 is silent, like `celltune search`
    from celltune.data_prep.ray_session import ensure_ray
    from celltune.platform.demo import run_demo
    from celltune.platform.search_run import resolve_stores
    from celltune.search_spaces.checkpoint_pruning import ran_full_length
    from celltune.search_spaces.space import load_space
    from celltune.search_spaces.tuner import (
        SearchSettings,
        build_tuner,
        evaluations_per_trial,
        experiment_path,
        keep_best_for,
    )

    work = args.workdir or Path(tempfile.mkdtemp(prefix="celltune-bench-disk-"))
    stores = run_demo(work, show_progress=False).stores
    overrides = {"training.epochs": args.epochs, "training.steps_per_epoch": args.steps, "training.eval_every": 1}
    space = resolve_stores(load_space("demo", overrides=overrides, stores_dir=stores))
    ensure_ray(None)
    settings = SearchSettings(storage_path=str(work / "tune"), name=time.strftime("disk-%Y%m%d-%H%M%S"),
                              trials=args.trials, seed=args.seed, max_concurrent=args.max_concurrent,
                              checkpoints_to_keep=args.keep_checkpoints, keep_best=args.keep_best, verbose=0)
    experiment = Path(experiment_path(settings))
    started = time.perf_counter()
    with DiskWatch(experiment) as watch:
        grid = build_tuner(space, settings).fit()
    wall_s = time.perf_counter() - started

    full = evaluations_per_trial(space.base_config())
    results = list(grid)
    failed = sum(result.error is not None for result in results)
    completed = sum(result.error is None and ran_full_length(result.metrics or {}, full_evaluations=full,
                                                             budget_s=None) for result in results)
    evaluations = [int((result.metrics or {}).get("training_iteration", 0) or 0) for result in results]
    report = format_report(trials=len(results), completed=completed, stopped=len(results) - completed - failed,
                           failed=failed, end=sample_disk(experiment), peak=watch.peak, keep=args.keep_checkpoints,
                           keep_best=keep_best_for(space, settings), concurrent=args.max_concurrent,
                           unpruned_checkpoints=sum(min(2, n) for n in evaluations), wall_s=wall_s)
    import ray

    ray.shutdown()  # Ray's tqdm redraws its trial bars around every print while it runs
    print("\n".join(report))
    print(f"search folder: {experiment}")


if __name__ == "__main__":
    main()
