"""Fine-tuning's building blocks: which tensor does not fit, frozen or slowed encoders, and a run that starts
exactly from the parent's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from celltune.trainables.architectures import build_model
from celltune.trainables.config import InitConfig, TrainConfig
from celltune.trainables.init_weights import first_mismatch, is_encoder_parameter, parameter_groups
from celltune.trainables.model_card import CHECKPOINT_WEIGHTS, read_weights


def _weights(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_first_mismatch_names_the_tensor_that_does_not_fit():
    narrow, wide = build_model("unet", width=8).state_dict(), build_model("unet", width=16).state_dict()
    assert first_mismatch(narrow, build_model("unet", width=8).state_dict()) is None
    message = first_mismatch(narrow, wide)
    first = next(iter(narrow))
    assert f"tensor {first!r} has shape {tuple(wide[first].shape)} in the parent" in message
    missing = dict(narrow)
    del missing[first]
    assert first_mismatch(narrow, missing) == (f"tensor {first!r} {tuple(narrow[first].shape)} is missing from "
                                               "the parent's weights")
    assert "which this model lacks" in first_mismatch(narrow, {**narrow, "extra.weight": torch.zeros(1)})


def test_frozen_encoder_is_left_out_of_the_optimizer_and_gets_no_gradient():
    model = build_model("unet", width=8)
    groups = parameter_groups(model, InitConfig(model="parent", freeze_encoder=True), lr=1e-3)
    trained = {id(p) for group in groups for p in group["params"]}
    encoder = [(name, p) for name, p in model.named_parameters() if is_encoder_parameter(name)]
    assert encoder and all(not p.requires_grad and id(p) not in trained for _, p in encoder)
    assert len(trained) == sum(1 for name, _ in model.named_parameters() if not is_encoder_parameter(name))


def test_encoder_learning_rate_gets_its_own_group():
    model = build_model("xbnet", width=8)
    rest, encoder = parameter_groups(model, InitConfig(model="parent", encoder_lr=1e-5), lr=1e-3)
    assert (rest["lr"], encoder["lr"]) == (1e-3, 1e-5)
    assert len(rest["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    (only,) = parameter_groups(model, None, lr=1e-3)
    assert len(only["params"]) == len(list(model.parameters()))


def test_frozen_encoder_and_its_learning_rate_do_not_go_together():
    with pytest.raises(ValueError, match="encoder_lr has no effect"):
        InitConfig(model="parent", freeze_encoder=True, encoder_lr=1e-4)


def test_training_starts_from_the_parent_weights_and_keeps_a_frozen_encoder(demo_stores, train_in_test, tmp_path,
                                                                            monkeypatch):
    import celltune.trainables.train_loop as train_loop

    torch.manual_seed(123)  # a parent unlike the run's own seeded initialisation
    parent = build_model("unet", width=8, norm="group")
    weights = _weights(parent, tmp_path / "parent.safetensors")
    config = TrainConfig.model_validate({
        "data": {"stores": [str(demo_stores / "Synth-Round.zarr")], "configuration": "all-st", "crop": 64,
                 "batch_size": 2},
        "model": {"name": "unet", "options": {"width": 8, "norm": "group"}},
        "optimizer": {"lr": 1e-2},
        "training": {"epochs": 2, "steps_per_epoch": 2, "eval_every": 2},
        "init": {"model": "models:/parent@champion", "weights": str(weights), "freeze_encoder": True},
    })
    at_first_step: dict[str, torch.Tensor] = {}
    real_parameter_groups = train_loop.parameter_groups

    def snapshot(model, init, lr):  # the optimizer is built from these groups right before the first step
        at_first_step.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_parameter_groups(model, init, lr)

    monkeypatch.setattr(train_loop, "parameter_groups", snapshot)
    run = train_in_test(config)

    parent_state = parent.state_dict()
    assert at_first_step.keys() == parent_state.keys()
    assert all(torch.equal(at_first_step[k], parent_state[k]) for k in parent_state)
    trained = read_weights(run.checkpoint / CHECKPOINT_WEIGHTS)
    encoder = [k for k, _ in parent.named_parameters() if is_encoder_parameter(k)]
    decoder = [k for k, _ in parent.named_parameters() if not is_encoder_parameter(k)]
    assert all(torch.equal(trained[k], parent_state[k]) for k in encoder)
    assert any(not torch.equal(trained[k], parent_state[k]) for k in decoder)


def test_weights_that_do_not_fit_stop_the_worker_with_the_tensor_named(tmp_path):
    from celltune.trainables.init_weights import load_init_weights

    weights = _weights(build_model("unet", width=16), tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match=r"init.model 'x': tensor .* has shape"):
        load_init_weights(build_model("unet", width=8), InitConfig(model="x", weights=weights))
