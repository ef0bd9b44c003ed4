"""A search's disk budget: delete the checkpoints of trials ASHA stopped early, keep the best few, measure the rest.

Every trial keeps at most ``checkpoints_to_keep`` checkpoints while it runs (Tune's and its Train run's
``CheckpointConfig``). A celltune checkpoint holds the latest weights, the best weights so far and the training
state, so the latest one alone serves a resume and the trial's best model. Once a trial has ended, only two
things still read its checkpoint: the registration of the search's best trial (with the next best, when the space
tries ensembles: ``keep_best`` is then at least ``postprocess.ensemble_members``), and ``--resume`` for trials that
did not finish. :class:`CheckpointPruner` therefore deletes the checkpoint folders of a trial that

* ended because the scheduler stopped it (its last result carries ``done``) before it ran its full length
  (fewer evaluations than a full trial, and not out of its ``training.max_minutes`` budget), and
* has at least ``keep_best`` trials strictly better by the objective (so ties and the best so far stay), and,
  when the space bounds the cost of what it registers (``objective.max_gmac``), is not among the ``keep_best``
  best of the trials within that bound either (the registered trial is the best within the bound).

Running, failed (``--resume`` restarts them from their checkpoint), interrupted (Ctrl+C: their last result has
no ``done``) and completed trials keep theirs. A stopped trial kept for being among the best is deleted later,
when ``keep_best`` others have overtaken it. With ``T`` completed trials, the checkpoints left at the end are at
most ``(T + keep_best) x checkpoints_to_keep`` (``T + 2 x keep_best`` trials' under a cost bound); while trials
run, each running trial adds up to ``checkpoints_to_keep + 1`` (Tune writes the new one before it drops the oldest).

Only local storage is pruned; on a remote one (``s3://...``) the pruner logs at debug level and deletes nothing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ray.tune import Callback

from celltune.search_spaces.tuner import TRAIN_RUNS

logger = logging.getLogger(__name__)

CHECKPOINT_GLOB = "checkpoint_*"  # Tune's checkpoint_000003 and Train V2's checkpoint_<timestamp>


def is_remote(path: str) -> bool:
    return "://" in str(path)


def ran_full_length(last_result: Mapping[str, Any], *, full_evaluations: int, budget_s: float | None) -> bool:
    """Whether a trial's last result marks a complete trial: every evaluation made, or its time budget spent."""
    evaluations = int(last_result.get("training_iteration", 0) or 0)
    if evaluations >= full_evaluations:
        return True
    return budget_s is not None and float(last_result.get("time_total_s", 0.0) or 0.0) >= budget_s


def objective_of(metric_best: float | None, last_result: Mapping[str, Any], *, metric: str,
                 mode: Literal["max", "min"]) -> float | None:
    """A trial's objective as the search ranks it (``search_run``'s best trial): ``best/seg_mean`` when that is
    the objective, else the best value the trial reported; None when it has none (or not a finite one)."""
    value = last_result.get("best/seg_mean") if metric == "seg_mean" and mode == "max" else None
    if value is None:
        value = metric_best
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def to_prune(candidates: Iterable[str], objectives: Mapping[str, float | None], *, mode: Literal["max", "min"],
             keep_best: int) -> list[str]:
    """The candidates with at least ``keep_best`` trials strictly better (a trial without an objective is worse
    than any with one), in the order given.

    Args:
        candidates: ids of trials that ended stopped early.
        objectives: every trial's objective so far (running, ended and failed trials alike), by id.
        keep_best: how many of the best trials keep their checkpoints, at least 1.
    """
    if keep_best < 1:
        raise ValueError(f"keep_best: must be at least 1 (the best trial's checkpoint is registered), got {keep_best}")
    scored = [value for value in objectives.values() if value is not None]

    def better(value: float | None) -> int:
        if value is None:
            return len(scored)
        return sum(other > value if mode == "max" else other < value for other in scored)

    return [trial_id for trial_id in candidates if better(objectives.get(trial_id)) >= keep_best]


def checkpoint_folders(trial_dir: Path, train_run_dir: Path | None = None) -> list[Path]:
    """A trial's checkpoint folders: Tune's in its trial folder and, for a multi-worker trial, its Train run's."""
    folders = []
    for parent in (trial_dir, train_run_dir):
        if parent is not None and parent.is_dir():
            folders.extend(path for path in sorted(parent.glob(CHECKPOINT_GLOB)) if path.is_dir())
    return folders


def folder_bytes(path: str | Path) -> int | None:
    """Sum of the sizes of the files under ``path`` (links not followed); None for a remote URI, 0 when absent."""
    if is_remote(str(path)):
        return None
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # deleted while we walked (a checkpoint Tune just replaced)
                continue
    return total


def format_bytes(count: float) -> str:
    """``12.3 MB``: decimal units, one decimal from kB up."""
    if abs(count) < 1000:
        return f"{count:.0f} B"
    units = ["kB", "MB", "GB"]
    count /= 1000
    while abs(count) >= 1000 and len(units) > 1:
        count /= 1000
        units.pop(0)
    return f"{count:.1f} {units[0]}"


def delete_folders(folders: Sequence[Path]) -> int:
    """Delete ``folders``; returns the bytes freed (a folder that vanished meanwhile counts as nothing)."""
    freed = 0
    for folder in folders:
        size = folder_bytes(folder) or 0
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            continue
        except OSError as exc:  # one undeletable checkpoint costs disk, never the search
            logger.warning("could not delete checkpoint %s: %s", folder, exc)
            continue
        freed += size
    return freed


class CheckpointPruner(Callback):
    """Tune callback on the driver: deletes the checkpoints of trials stopped early that are not among the best.

    Stateless across ``--resume`` (Tune pickles its callbacks with the search): which trials ended early and how
    good they were is read from the trials themselves (status, last result, Tune's per-metric best).
    """

    def __init__(self, *, storage_path: str, search_name: str, metric: str, mode: Literal["max", "min"],
                 full_evaluations: int, budget_s: float | None = None, keep_best: int = 1,
                 max_gmac: float | None = None, base_tree: Mapping[str, Any] | None = None) -> None:
        """
        Args:
            storage_path: the search's storage (a folder, or a URI: then nothing is deleted).
            search_name: the search's folder under ``storage_path``.
            metric, mode: the search's objective.
            full_evaluations: reports of a trial that runs all its epochs (ASHA's ``max_t`` in evaluations).
            budget_s: a trial's time budget (``training.max_minutes`` x 60), None without one.
            keep_best: the best trials that keep their checkpoints even when stopped early (at least 1: the
                search registers the best one).
            max_gmac, base_tree: the space's ``objective.max_gmac`` and base config; the best ``keep_best`` trials
                within that cost (GMac per 512x512 frame of a trial's network) keep theirs too.
        """
        if keep_best < 1:
            raise ValueError(f"keep_best: must be at least 1 (the best trial's checkpoint is registered), "
                             f"got {keep_best}")
        self.storage_path = str(storage_path)
        self.search_name = search_name
        self.metric = metric
        self.mode = mode
        self.full_evaluations = full_evaluations
        self.budget_s = budget_s
        self.keep_best = keep_best
        self.max_gmac = max_gmac
        self.base_tree = base_tree
        if max_gmac is not None and base_tree is None:
            raise ValueError("max_gmac: needs the base_tree that prices each trial's network")
        self.freed_bytes = 0
        self._said_remote = False

    # Tune's hooks
    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        # Tune calls this before it marks the trial TERMINATED, so the trial itself counts as ended here.
        self.prune(trials, ended={trial.trial_id})

    def on_experiment_end(self, trials: list, **info) -> None:
        # Again at the end: a multi-worker trial's Train run may have written one more checkpoint after its stop.
        self.prune(trials)

    # the work
    def stopped_early(self, trial, *, ended: bool = False) -> bool:
        """Whether ``trial`` ended because the scheduler stopped it before its full length (not failed, not
        interrupted: a Ctrl+C marks running trials TERMINATED without ``done`` in their last result)."""
        last = trial.last_result or {}
        if not (ended or trial.status == "TERMINATED") or not last.get("done"):
            return False
        return not ran_full_length(last, full_evaluations=self.full_evaluations, budget_s=self.budget_s)

    def objective(self, trial) -> float | None:
        analysis = (getattr(trial, "metric_analysis", None) or {}).get(self.metric) or {}
        return objective_of(analysis.get(self.mode), trial.last_result or {}, metric=self.metric, mode=self.mode)

    def gmac(self, trial) -> float | None:
        """The trial's network's GMac per 512x512 frame; None when it cannot be priced (out of any bound then)."""
        from celltune.search_spaces.cost_bound import trial_gmac

        try:
            return trial_gmac(self.base_tree or {}, trial.config or {})
        except Exception as exc:  # search_run's best trial treats an unpriced trial the same way
            logger.debug("no cost for trial %s: %s", trial.trial_id, exc)
            return None

    def doomed(self, trials: Sequence[Any], candidates: list[str]) -> list[str]:
        """The candidates outside the ``keep_best`` best overall and, under a cost bound, within it."""
        objectives = {t.trial_id: self.objective(t) for t in trials}
        doomed = to_prune(candidates, objectives, mode=self.mode, keep_best=self.keep_best)
        if self.max_gmac is None or not doomed:
            return doomed
        costs = {t.trial_id: self.gmac(t) for t in trials}
        within = {key: value for key, value in objectives.items()
                  if costs[key] is not None and costs[key] <= self.max_gmac}
        spared = set(doomed) & set(within)
        spared -= set(to_prune(sorted(spared), within, mode=self.mode, keep_best=self.keep_best))
        return [trial_id for trial_id in doomed if trial_id not in spared]

    def prune(self, trials: Sequence[Any], ended: Iterable[str] = ()) -> int:
        """Delete the checkpoints of the trials in ``trials`` that :meth:`stopped_early` and are not among the
        ``keep_best`` best; returns the bytes freed."""
        if is_remote(self.storage_path):
            if not self._said_remote:
                logger.debug("checkpoint pruning is off: the storage %s is remote", self.storage_path)
                self._said_remote = True
            return 0
        ended = set(ended)
        candidates = [t.trial_id for t in trials if self.stopped_early(t, ended=t.trial_id in ended)]
        if not candidates:
            return 0
        by_id = {t.trial_id: t for t in trials}
        freed = 0
        for trial_id in self.doomed(trials, candidates):
            folders = checkpoint_folders(*self.trial_folders(by_id[trial_id]))
            if not folders:
                continue
            size = delete_folders(folders)
            freed += size
            logger.info("trial %s was stopped early and is not among the best %d: deleted %d checkpoint(s), %s",
                        trial_id, self.keep_best, len(folders), format_bytes(size))
        self.freed_bytes += freed
        return freed

    def trial_folders(self, trial) -> tuple[Path, Path]:
        """The trial's Tune folder and its Train run's folder (present only for multi-worker trials)."""
        train_run = Path(self.storage_path, self.search_name, TRAIN_RUNS, trial.trial_id)
        return Path(trial.path), train_run
