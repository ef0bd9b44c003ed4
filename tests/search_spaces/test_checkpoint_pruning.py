"""The disk budget of a search (issue 18): which trials lose their checkpoints, on a fake search folder (no Ray
instance) and the settings that bound it. The CLI option and the summary's disk line: tests/platform/
test_search_disk_budget.py; a real search's checkpoints: tests/platform/test_search_e2e.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from celltune.search_spaces.checkpoint_pruning import (
    CheckpointPruner,
    folder_bytes,
    format_bytes,
    ran_full_length,
    to_prune,
)

FULL = 4  # evaluations of a full trial in these fake searches


def _checkpoint(folder: Path, size: int = 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * size)
    (folder / "best_model.safetensors").write_bytes(b"b" * size)
    (folder / "celltune_model.json").write_text("{}")
    return folder


def _trial(root: Path, trial_id: str, *, evaluations: int, best: float | None, status: str = "TERMINATED",
           done: bool = True, time_total_s: float = 10.0, checkpoints: int = 1, train_run: bool = False):
    """A Tune trial as the pruner sees it, with its folder and checkpoints under ``root`` (the search folder)."""
    path = root / f"run_trial_{trial_id}"
    path.mkdir(parents=True)
    (path / "result.json").write_text("{}\n")
    parent = root / "train-runs" / trial_id if train_run else path
    for index in range(checkpoints):
        _checkpoint(parent / (f"checkpoint_2025-01-0{index + 1}_10-00-00.000000" if train_run
                              else f"checkpoint_{evaluations - index - 1:06d}"))
    last = {"training_iteration": evaluations, "time_total_s": time_total_s, "done": done}
    if best is not None:
        last.update({"seg_mean": best, "best/seg_mean": best})
    return SimpleNamespace(trial_id=trial_id, path=str(path), status=status, last_result=last,
                           metric_analysis={"seg_mean": {"max": best, "min": best}} if best is not None else {})


def _pruner(root: Path, **kwargs) -> CheckpointPruner:
    options = {"storage_path": str(root.parent), "search_name": root.name, "metric": "seg_mean", "mode": "max",
               "full_evaluations": FULL, **kwargs}
    return CheckpointPruner(**options)


def _left(root: Path) -> dict[str, int]:
    """Checkpoint folders left per trial (Tune's and Train runs' together)."""
    counts: dict[str, int] = {}
    for folder in root.glob("run_trial_*"):
        counts[folder.name.removeprefix("run_trial_")] = len(list(folder.glob("checkpoint_*")))
    for folder in (root / "train-runs").glob("*"):
        counts[folder.name] = counts.get(folder.name, 0) + len(list(folder.glob("checkpoint_*")))
    return counts


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage" / "search"


def test_a_stopped_trial_that_is_not_the_best_loses_its_checkpoints_and_nothing_else_does(root):
    trials = [
        _trial(root, "done", evaluations=FULL, best=0.5),  # completed: never pruned, even when worse
        _trial(root, "worse", evaluations=FULL, best=0.1),
        _trial(root, "cut", evaluations=1, best=0.3),  # stopped early by ASHA, not the best: pruned
        _trial(root, "running", evaluations=2, best=0.05, status="RUNNING", done=False),
        _trial(root, "failed", evaluations=1, best=0.0, status="ERROR"),  # --resume restarts it: kept
        # Ctrl+C: Tune marks the running trials TERMINATED without "done"; --resume continues them: kept
        _trial(root, "interrupted", evaluations=2, best=0.01, done=False),
        _trial(root, "multi", evaluations=2, best=0.2, train_run=True),  # a Train run's checkpoints, pruned
    ]
    pruner = _pruner(root)
    freed = pruner.prune(trials)
    assert _left(root) == {"done": 1, "worse": 1, "cut": 0, "running": 1, "failed": 1, "interrupted": 1, "multi": 0}
    assert freed == pruner.freed_bytes == 2 * (2 * 1000 + 2)
    assert (root / "run_trial_cut" / "result.json").is_file(), "only checkpoint folders go"
    assert pruner.prune(trials) == 0  # idempotent


def test_the_best_stopped_trial_keeps_its_checkpoint_until_keep_best_others_overtake_it(root):
    first = _trial(root, "first", evaluations=1, best=0.4)
    pruner = _pruner(root)
    # Tune calls on_trial_complete before it marks the trial TERMINATED
    first.status = "RUNNING"
    pruner.on_trial_complete(0, [first], first)
    assert _left(root) == {"first": 1}, "the best so far is kept"
    first.status = "TERMINATED"

    tied = _trial(root, "tied", evaluations=1, best=0.4)
    better = _trial(root, "better", evaluations=2, best=0.6, status="RUNNING", done=False)
    pruner.on_trial_complete(0, [first, tied, better], tied)
    assert _left(root) == {"first": 0, "tied": 0, "better": 1}, "a running trial ahead counts"

    root_two = root.parent / "two"
    trials = [_trial(root_two, "a", evaluations=1, best=0.4), _trial(root_two, "b", evaluations=1, best=0.5),
              _trial(root_two, "c", evaluations=1, best=0.3), _trial(root_two, "d", evaluations=1, best=0.4)]
    _pruner(root_two, keep_best=2).on_experiment_end(trials)
    assert _left(root_two) == {"a": 1, "b": 1, "c": 0, "d": 1}, "ties with the second best stay"


def test_ties_are_kept_and_trials_without_an_objective_rank_last():
    objectives = {"a": 0.5, "b": 0.5, "c": None, "d": 0.1}
    assert to_prune(["a", "b", "c", "d"], objectives, mode="max", keep_best=1) == ["c", "d"]
    assert to_prune(["a", "b", "c", "d"], objectives, mode="min", keep_best=1) == ["a", "b", "c"]
    assert to_prune(["c"], {"c": None}, mode="max", keep_best=1) == [], "nothing is better than nothing"
    with pytest.raises(ValueError, match="keep_best: must be at least 1"):
        to_prune(["a"], objectives, mode="max", keep_best=0)


def test_a_trial_that_spent_its_time_budget_is_complete_not_stopped(root):
    assert ran_full_length({"training_iteration": FULL}, full_evaluations=FULL, budget_s=None)
    assert not ran_full_length({"training_iteration": 2, "time_total_s": 599.0}, full_evaluations=FULL,
                               budget_s=600.0)
    assert ran_full_length({"training_iteration": 2, "time_total_s": 601.0}, full_evaluations=FULL, budget_s=600.0)
    trials = [_trial(root, "best", evaluations=3, best=0.9, time_total_s=100.0),
              _trial(root, "timed", evaluations=2, best=0.2, time_total_s=601.0),
              _trial(root, "cut", evaluations=1, best=0.1, time_total_s=150.0)]
    _pruner(root, budget_s=600.0).prune(trials)
    assert _left(root) == {"best": 1, "timed": 1, "cut": 0}


def test_a_minimized_objective_keeps_the_lowest(root):
    trials = [_trial(root, "low", evaluations=1, best=0.1), _trial(root, "high", evaluations=1, best=0.9)]
    for trial in trials:  # not seg_mean: ranked by Tune's per-metric best
        trial.last_result = {k: v for k, v in trial.last_result.items() if k != "best/seg_mean"}
        trial.last_result["loss"] = trial.metric_analysis["seg_mean"]["max"]
        trial.metric_analysis = {"loss": trial.metric_analysis["seg_mean"]}
    _pruner(root, metric="loss", mode="min").prune(trials)
    assert _left(root) == {"low": 1, "high": 0}


def test_under_a_cost_bound_the_best_affordable_trials_keep_theirs_too(root, monkeypatch):
    """search_run registers the best trial within objective.max_gmac: it may rank below costlier trials."""
    trials = [_trial(root, "big", evaluations=FULL, best=0.9), _trial(root, "big_cut", evaluations=1, best=0.8),
              _trial(root, "small", evaluations=1, best=0.5), _trial(root, "small_worse", evaluations=1, best=0.4),
              _trial(root, "unpriced", evaluations=1, best=0.7)]
    costs = {"big": 50.0, "big_cut": 50.0, "small": 5.0, "small_worse": 5.0, "unpriced": None}
    pruner = _pruner(root, max_gmac=10.0, base_tree={})
    monkeypatch.setattr(pruner, "gmac", lambda trial: costs[trial.trial_id])
    pruner.prune(trials)
    assert _left(root) == {"big": 1, "big_cut": 0, "small": 1, "small_worse": 0, "unpriced": 0}
    with pytest.raises(ValueError, match="max_gmac: needs the base_tree"):
        _pruner(root, max_gmac=10.0)


def test_a_trial_is_priced_from_its_sample(root, tmp_path):
    from celltune.search_spaces.space import load_space

    space = load_space("demo", stores_dir=tmp_path)
    pruner = _pruner(root, max_gmac=10.0, base_tree=space.base_tree)
    unet, xbnet = (SimpleNamespace(trial_id=name, config={"model.name": name}) for name in ("unet", "xbnet"))
    assert 0 < pruner.gmac(unet) != pruner.gmac(xbnet) > 0
    assert pruner.gmac(SimpleNamespace(trial_id="bad", config={"model.name": "nosuch"})) is None


def test_remote_storage_is_left_alone(root, caplog):
    trials = [_trial(root, "best", evaluations=FULL, best=0.9), _trial(root, "cut", evaluations=1, best=0.1)]
    pruner = CheckpointPruner(storage_path="s3://bucket/searches", search_name="search", metric="seg_mean",
                              mode="max", full_evaluations=FULL)
    with caplog.at_level("DEBUG", logger="celltune.search_spaces.checkpoint_pruning"):
        assert pruner.prune(trials) == 0
    assert _left(root) == {"best": 1, "cut": 1}
    assert "remote" in caplog.text


def test_disk_usage_and_its_units(tmp_path):
    _checkpoint(tmp_path / "a" / "checkpoint_000000", size=1500)
    assert folder_bytes(tmp_path) == 2 * 1500 + 2
    assert folder_bytes(tmp_path / "missing") == 0
    assert folder_bytes("s3://bucket/x") is None
    assert [format_bytes(n) for n in (0, 999, 1000, 12_345_678, 5e9, 2e12)] == \
        ["0 B", "999 B", "1.0 kB", "12.3 MB", "5.0 GB", "2000.0 GB"]


def test_settings_refuse_keeping_no_checkpoint():
    from celltune.search_spaces.tuner import SearchSettings

    assert SearchSettings(storage_path="s", name="n", trials=1).checkpoints_to_keep == 1
    for field in ("checkpoints_to_keep", "keep_best"):
        with pytest.raises(ValueError, match=f"{field}: must be at least 1, got 0"):
            SearchSettings(storage_path="s", name="n", trials=1, **{field: 0})
    with pytest.raises(ValueError, match="keep_best: must be at least 1"):
        CheckpointPruner(storage_path="s", search_name="n", metric="seg_mean", mode="max", full_evaluations=1,
                         keep_best=0)


def test_a_deleted_local_checkpoint_is_no_checkpoint(tmp_path):
    from ray.tune import Checkpoint

    from celltune.search_spaces.tuner import checkpoint_of

    kept = _checkpoint(tmp_path / "checkpoint_000001")
    result = SimpleNamespace(checkpoint=Checkpoint(path=str(kept)), metrics={}, filesystem=None)
    assert checkpoint_of(result).path == str(kept)
    result.checkpoint = Checkpoint(path=str(tmp_path / "checkpoint_000000"))  # pruned
    assert checkpoint_of(result) is None
