"""Optimizer choice: AdamW, Adam and SGD with momentum, checked on updates worked out by hand."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from celltune.trainables.config import OptimizerConfig, TrainConfig
from celltune.trainables.optimizers import build_optimizer
from celltune.trainables.train_loop import STATE_FILE


def _steps(config: OptimizerConfig, steps: int, loss=lambda x: 0.5 * x**2) -> list[float]:
    """Positions of one parameter starting at 1.0 after each step on `loss`."""
    x = torch.nn.Parameter(torch.tensor(1.0))
    optimizer = build_optimizer(config, [x])
    positions = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss(x).backward()
        optimizer.step()
        positions.append(x.item())
    return positions


def test_each_name_builds_its_torch_optimizer_with_the_settings():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(OptimizerConfig(name="sgd", lr=0.1, momentum=0.99, nesterov=True, weight_decay=0.0), params)
    assert type(sgd) is torch.optim.SGD
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.99, True, 0.0)
    adam = build_optimizer(OptimizerConfig(name="adam", betas=(0.8, 0.9), amsgrad=False), params)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.9)
    assert type(build_optimizer(OptimizerConfig(), params)) is torch.optim.AdamW  # the default


def test_sgd_momentum_by_hand():
    # loss x^2 / 2 has gradient x; lr 0.1, momentum 0.9.
    # Heavy ball: v1 = 1, x1 = 0.9; v2 = 0.9 * 1 + 0.9 = 1.8, x2 = 0.9 - 0.18 = 0.72.
    plain = _steps(OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0), 2)
    assert plain == pytest.approx([0.9, 0.72])
    # Nesterov steps along g + m * v: x1 = 1 - 0.1 * 1.9 = 0.81; v2 = 0.9 + 0.81 = 1.71,
    # x2 = 0.81 - 0.1 * (0.81 + 0.9 * 1.71) = 0.5751.
    nesterov = _steps(OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0), 2)
    assert nesterov == pytest.approx([0.81, 0.5751])
    # Weight decay adds wd * x to the gradient: g1 = 1 + 0.5 = 1.5, x1 = 1 - 0.15 = 0.85.
    assert _steps(OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.5), 1) == pytest.approx([0.85])


def test_adam_decays_through_the_gradient_adamw_the_weights():
    # A flat loss: the only force is weight decay 0.01 at lr 0.1.
    flat = lambda x: 0.0 * x  # noqa: E731
    # AdamW shrinks the weight directly: x = 1 - 0.1 * 0.01 * 1 (the Adam step of a zero gradient is 0).
    assert _steps(OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.01), 1, flat) == pytest.approx([0.999])
    # Adam adds 0.01 * x to the gradient, and its first step has size lr whatever the gradient's scale.
    assert _steps(OptimizerConfig(name="adam", lr=0.1, weight_decay=0.01), 1, flat) == pytest.approx([0.9], abs=1e-6)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "sgd", "nesterov": True, "momentum": 0.0}, "nesterov=true needs momentum > 0"),
        ({"name": "rmsprop"}, "'adamw', 'adam' or 'sgd'"),
        ({"name": "sgd", "momentum": 1.0}, "less than 1"),
    ],
)
def test_bad_optimizer_settings_are_rejected(fields, message):
    with pytest.raises(ValidationError, match=message):
        OptimizerConfig(**fields)


def test_settings_the_chosen_optimizer_ignores_are_warned_about(caplog):
    params = [torch.nn.Parameter(torch.zeros(1))]
    with caplog.at_level(logging.WARNING, logger="celltune.trainables.optimizers"):
        build_optimizer(OptimizerConfig(name="sgd", momentum=0.9), params)
        build_optimizer(OptimizerConfig(name="adamw", betas=(0.9, 0.99)), params)
        # what every Ray worker builds from: a config dumped and validated again, every field "set"
        build_optimizer(OptimizerConfig.model_validate(OptimizerConfig(name="adamw").model_dump()), params)
        assert not caplog.records
        build_optimizer(OptimizerConfig(name="sgd", betas=(0.5, 0.9), amsgrad=False), params)
        build_optimizer(OptimizerConfig(name="adam", nesterov=True), params)
    assert [r.getMessage() for r in caplog.records] == [
        "optimizer sgd ignores optimizer.amsgrad, optimizer.betas",
        "optimizer adam ignores optimizer.nesterov",
    ]


@pytest.mark.ray  # the demo_stores fixture prepares its stores with Ray
def test_sgd_trains_on_the_demo_data(demo_stores: Path, train_in_test):
    config = TrainConfig.model_validate({
        "data": {"stores": [str(demo_stores / "Synth-Round.zarr"), str(demo_stores / "Synth-Dense.zarr")],
                 "configuration": "all-st", "crop": 32, "batch_size": 2},
        "model": {"name": "unet", "options": {"width": 8}},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scheduler": {"name": "constant"},
        "training": {"epochs": 1, "steps_per_epoch": 4, "precision": "fp32"},
    })
    run = train_in_test(config)
    result, losses, saved = run.result, run.losses, run.checkpoint
    assert result.step == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    state = torch.load(saved / STATE_FILE, weights_only=True)["optimizer"]
    assert state["param_groups"][0]["momentum"] == 0.9
    assert all("momentum_buffer" in per_param for per_param in state["state"].values())  # SGD's state was saved
