"""``training.max_minutes``: a run ends at the first epoch past its wall-time budget, with one evaluation and
checkpoint there, and its one-cycle schedule has annealed by then."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tqdm import tqdm

from celltune.trainables.config import TrainConfig
from celltune.trainables.train_loop import STATE_FILE, WorkerContext, train


@pytest.mark.ray  # the demo_stores fixture prepares its stores with Ray
def test_a_run_stops_at_the_first_epoch_past_its_budget_with_one_evaluation(demo_stores: Path):
    config = TrainConfig.model_validate({
        "data": {"stores": [str(demo_stores / "Synth-Round.zarr")], "configuration": "all-st", "crop": 32,
                 "batch_size": 2},
        "model": {"name": "unet", "options": {"width": 8}},
        "optimizer": {"lr": 1e-3},
        "scheduler": {"name": "one_cycle", "warmup_fraction": 0.2, "eta_min": 1e-6},
        "training": {"epochs": 100_000, "steps_per_epoch": 1, "eval_every": 100_000, "max_minutes": 0.03,
                     "precision": "fp32"},
    })
    reports: list[tuple[float, dict, bool]] = []
    started = time.monotonic()

    def report(metrics, checkpoint):
        import torch

        spent = torch.load(Path(checkpoint) / STATE_FILE, weights_only=True)["spent_s"] if checkpoint else None
        reports.append((time.monotonic() - started, dict(metrics), spent))

    result = train(config, WorkerContext(report=report, progress_bar=lambda total, initial, desc: tqdm(disable=True)))
    assert 1 <= result.epoch < 100_000
    # One report, the evaluation at the end of the budget (eval_every alone would never have evaluated).
    assert len(reports) == 1
    _, metrics, spent = reports[0]
    assert "seg_mean" in metrics and metrics["epoch"] == result.epoch
    assert 0.0 < metrics["data_wait_share"] < 1.0  # the share of the epoch spent waiting for batches
    assert spent >= 0.03 * 60  # the checkpoint carries the time spent, for a resume to count it
    assert metrics["lr"] == pytest.approx(1e-6, rel=1e-3)  # annealed to eta_min by the budget's end
