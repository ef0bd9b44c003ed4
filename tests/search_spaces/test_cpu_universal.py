"""The shipped ``cpu_universal`` space on the real stores: it loads and validates against them, and a two-trial search
with tiny time budgets runs end to end (trials stop on their budget, thresholds tuned, model registered)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import mlflow
import pytest

from celltune.platform.cli import main
from celltune.search_spaces.space import load_space

pytestmark = [pytest.mark.real_data, pytest.mark.ray]

DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+")


def _cli(*args: str) -> tuple[int, str]:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = main(list(args))
    return code, output.getvalue()


def test_cpu_universal_loads_and_validates_against_the_real_stores(real_out):
    stores, _ = real_out
    space = load_space("cpu_universal", stores_dir=stores)
    config = space.base_config()
    assert [Path(store).name for store in config.data.stores] == [f"{name}.zarr" for name in DATASETS]
    assert config.data.configuration == "all-gt+st" and config.training.max_minutes
    code, output = _cli("search", "--space", "cpu_universal", "--stores", str(stores), "--dry-run")
    assert code == 0, output
    plan = json.loads(output[output.index("{"):])
    assert plan["minutes_per_trial"] == config.training.max_minutes
    assert plan["asha"]["time_attr"] == "time_total_s"  # trials compared at equal minutes


@pytest.mark.slow
def test_two_trial_cpu_universal_search_runs_on_the_real_data_within_its_budgets(real_out, tmp_path):
    stores, _ = real_out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    os.environ.pop("RAY_ADDRESS", None)
    # A tiny budget: 0.2 minutes of training per trial, two trials of the threshold study per dataset.
    code, output = _cli("search", "--space", "cpu_universal", "--stores", str(stores), "--trials", "2",
                        "--storage", str(tmp_path / "searches"), "--tracking-uri", uri, "--name", "smoke",
                        "--set", "training.max_minutes=0.2", "--threshold-trials", "2",
                        "--register-as", "cpu-universal-smoke")
    assert code == 0, output[-5000:]
    assert "registered models:/cpu-universal-smoke/1" in output
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("celltune-search")
    children = client.search_runs([experiment.experiment_id], filter_string="tags.`celltune.kind` = 'trial'")
    assert len(children) == 2
    for child in children:
        metrics = child.data.metrics
        assert all(f"seg/{name}" in metrics or f"seg/{name.replace('+', 'plus')}" in metrics for name in DATASETS)
        # The budget ended the trial long before its 10,000 epochs, with an evaluation there.
        assert metrics["epoch"] < 10_000 and "seg_mean" in metrics
