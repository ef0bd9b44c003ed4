"""How a search names the way each trial ended, in its summary, trials table and child runs."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from celltune.platform.search_run import _trial_rows
from celltune.search_spaces.space import load_space


def _result(name: str, evaluations: int, seconds: float, best: float) -> SimpleNamespace:
    metrics = {"training_iteration": evaluations, "time_total_s": seconds, "best/seg_mean": best, "trial_id": name}
    return SimpleNamespace(metrics=metrics, metrics_dataframe=pd.DataFrame([{"seg_mean": best}]), error=None,
                           path=f"/searches/s/{name}", config={}, checkpoint=None, filesystem=None)


def test_a_time_budgeted_trial_that_spent_its_minutes_is_complete_not_stopped_early(tmp_path):
    space = load_space("cpu_universal", stores_dir=tmp_path)
    budget_s = space.base_config().training.max_minutes * 60
    rows = {row.trial_id: row.status for row in _trial_rows(
        [_result("spent", 30, budget_s + 12, 0.7), _result("cut", 6, budget_s / 4, 0.3)], space)}
    assert rows == {"spent": "completed", "cut": "stopped early"}


def test_an_epoch_budgeted_trial_is_complete_after_its_last_evaluation(tmp_path):
    space = load_space("demo", stores_dir=tmp_path)
    rows = {row.trial_id: row.status for row in _trial_rows(
        [_result("full", 4, 30.0, 0.5), _result("cut", 1, 10.0, 0.1)], space)}
    assert rows == {"full": "completed", "cut": "stopped early"}
