"""The original valid-convolution U-Net: its geometry, overlap-tile inference, and training with cropped targets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import build_model, model_spec, validate_model
from celltune.trainables.config import TrainConfig
from celltune.trainables.inference import predict_probabilities
from celltune.trainables.losses import center_crop
from celltune.trainables.model_card import BEST_WEIGHTS, load_model_folder
from celltune.trainables.tiling import _valid_axis_plan
from celltune.trainables.train_loop import WorkerContext, crop_to_output, loss_margin, train


def _valid_unet(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", padding="valid", width=8, **options).eval()


# --- geometry ----------------------------------------------------------------------------------------------------


def test_the_papers_572_pixel_tile_gives_388_pixels():
    # Ronneberger et al. 2015, Fig. 1: 572x572 input, 388x388 output map.
    model = _valid_unet()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 572, 572)).shape == (1, 3, 388, 388)
        assert model(torch.rand(1, 1, 188, 204)).shape == (1, 3, 4, 20)
    spec = model.spec
    assert (spec.output_crop, spec.min_input_size, spec.size_multiple) == (92, 188, 16)
    # 6 stages: bottleneck 4 px <- 16 <- 40 <- 88 <- 184 <- 380 input; output 4 px.
    six = model_spec("unet", padding="valid", stages=6)
    assert (six.output_crop, six.min_input_size, six.size_multiple) == (188, 380, 32)


def test_spec_size_arithmetic():
    valid, same = model_spec("unet", padding="valid"), model_spec("unet")
    assert (same.output_crop, same.min_input_size) == (0, 16)
    assert valid.is_valid_input(572) and valid.is_valid_input(188) and not valid.is_valid_input(570)
    assert not valid.is_valid_input(172)  # 188 - 16: below the smallest input
    assert valid.valid_input_size(189) == 204 and valid.valid_input_size(10) == 188
    assert valid.input_size_for(75) == 268  # 75 + 2 * 92 = 259 -> 188 + 5 * 16
    assert same.input_size_for(75) == 80 and same.is_valid_input(64) and not same.is_valid_input(72)


def test_inputs_off_the_grid_are_rejected_with_the_rule():
    with pytest.raises(UserInputError, match=r"190x188 pixels does not fit; each side must be 188 \+ k \* 16"):
        _valid_unet()(torch.rand(1, 1, 190, 188))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"padding": "valid", "aspp": True}, "aspp=True"),
        ({"padding": "valid", "down": "convstride"}, "down='convstride'"),
        ({"padding": "valid", "entry_flow": True}, "entry_flow=True"),
        ({"padding": "full"}, "padding='full' is not supported"),
    ],
)
def test_valid_padding_takes_only_the_original_options(options, message):
    with pytest.raises(UserInputError, match=message):
        validate_model("unet", **options)
    with pytest.raises(UserInputError, match=message):
        model_spec("unet", **options)


# --- overlap-tile inference --------------------------------------------------------------------------------------


def _one_pass_over_the_mirror_padded_frame(model: torch.nn.Module, frame: np.ndarray) -> np.ndarray:
    """The reference: mirror-pad evenly to the smallest valid input, one forward pass, crop the centre."""
    height, width = frame.shape
    spec = model.spec
    pad_y, pad_x = spec.input_size_for(height) - height, spec.input_size_for(width) - width
    padded = np.pad(frame, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)), mode="symmetric")
    with torch.no_grad():
        probs = model(torch.from_numpy(padded)[None, None]).softmax(dim=1)[0].numpy()
    top, left = (probs.shape[1] - height) // 2, (probs.shape[2] - width) // 2
    return probs[:, top : top + height, left : left + width]


@pytest.mark.parametrize("shape", [(2, 45, 83), (1, 5, 7), (1, 130, 21)])
@pytest.mark.parametrize("max_tile", [None, 220])
def test_overlap_tile_equals_one_pass_over_the_mirror_padded_frame(shape, max_tile):
    model = _valid_unet()
    inputs: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda module, args: inputs.append(tuple(args[0].shape)))
    frames = np.random.default_rng(3).random(shape, dtype=np.float32)

    probs = predict_probabilities(model, frames, size_multiple=16, activation="softmax", max_tile=max_tile,
                                  batch_size=3)
    hook.remove()  # count the forward passes of the prediction, not of the reference below

    expected = np.stack([_one_pass_over_the_mirror_padded_frame(model, frame) for frame in frames])
    assert probs.shape == (shape[0], 3, *shape[1:])
    np.testing.assert_allclose(probs, expected, atol=2e-6)
    sides = {side for batch in inputs for side in batch[2:]}
    assert all(model.spec.is_valid_input(side) for side in sides)
    tiles = sum(batch[0] for batch in inputs)
    if max_tile is None:
        assert tiles == shape[0]
    else:  # 220 px tiles (188 + 2 * 16) advance 32 px: 45 x 83 needs 2 x 3 of them per frame
        assert max(sides) <= max_tile
        expected_tiles = {(45, 83): 6, (5, 7): 1, (130, 21): 4}[shape[1:]]
        assert tiles == shape[0] * expected_tiles


@pytest.mark.parametrize("largest", [16, 48, None])
def test_tile_outputs_cover_every_output_pixel_exactly_once(largest):
    for length in range(1, 300, 7):
        plan = _valid_axis_plan(length, 16, 188, 92, largest)
        coverage = np.zeros(plan.canvas)
        for start, window in zip(plan.starts, plan.windows, strict=True):
            assert start % 16 == 0 and start + plan.tile <= plan.canvas + 2 * 92
            assert set(np.unique(window)) <= {0.0, 1.0}
            coverage[start : start + window.size] += window
        assert (coverage == 1).all()
        assert sum(plan.pad) + length == plan.canvas + 2 * 92 == model_spec("unet", padding="valid").input_size_for(
            length
        )
        assert plan.crop.stop - plan.crop.start == length


def test_a_tile_limit_below_the_smallest_tile_is_a_clear_error():
    with pytest.raises(UserInputError, match="max_tile=200: tiles of this valid-convolution model need at least 204"):
        predict_probabilities(_valid_unet(), np.zeros((30, 30), np.float32), size_multiple=16,
                              activation="softmax", max_tile=200)


# --- training geometry -------------------------------------------------------------------------------------------


def test_training_windows_give_outputs_that_cover_the_crop():
    spec = model_spec("unet", padding="valid")
    assert loss_margin(None, spec) == 2  # 2 * (92 + 2) = 188: a 16k crop plus context is 188 + 16k
    assert loss_margin(5, spec) == 10  # at least data.pad, and on the grid
    assert loss_margin(None, model_spec("unet")) == 8 and loss_margin(4, model_spec("unet")) == 4
    assert loss_margin(None, model_spec("unet", stages=6)) == 16
    window = 64 + 2 * (spec.output_crop + loss_margin(None, spec))
    assert window == 252
    with torch.no_grad():
        logits = _valid_unet()(torch.rand(1, 1, window, window))
    assert logits.shape[-2:] == (68, 68) and center_crop(logits, 2).shape[-2:] == (64, 64)
    batch = {"image": torch.rand(2, 1, 252, 252), "target": torch.arange(252).repeat(2, 252, 1),
             "weight": torch.ones(2, 252, 252)}
    cropped = crop_to_output(batch, 92)
    assert cropped["image"] is batch["image"]
    assert cropped["target"].shape == cropped["weight"].shape == (2, 68, 68)
    assert cropped["target"][0, 0, 0] == 92  # output pixel 0 sits over input pixel 92
    assert crop_to_output(batch, 0) is batch


# --- training on the demo data -----------------------------------------------------------------------------------


class _Losses:
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.scores: dict[str, float] = {}

    def on_start(self, config, model_config) -> None: ...

    def on_steps(self, records) -> None:
        self.losses += [values["loss/total"] for _, values in records if "loss/total" in values]

    def on_evaluation(self, step, epoch, metrics, examples) -> None:
        self.scores = dict(metrics)

    def on_end(self, best) -> None: ...


@pytest.mark.slow
@pytest.mark.ray  # the demo_stores fixture prepares its stores with Ray
def test_valid_unet_trains_on_the_demo_data_and_predicts_whole_frames(demo_stores: Path, tmp_path: Path):
    config = TrainConfig.model_validate({
        "data": {"stores": [str(demo_stores / "Synth-Round.zarr"), str(demo_stores / "Synth-Dense.zarr")],
                 "configuration": "all-st", "crop": 32, "batch_size": 2},
        "model": {"name": "unet", "options": {"width": 8, "padding": "valid"}},
        "optimizer": {"lr": 3e-3},
        "scheduler": {"name": "constant"},
        "training": {"epochs": 1, "steps_per_epoch": 4, "precision": "fp32"},
    })
    saved = tmp_path / "checkpoint"

    def keep(metrics, checkpoint):
        if checkpoint is not None:
            shutil.copytree(checkpoint, saved)

    observer = _Losses()
    result = train(config, WorkerContext(report=keep, progress_bar=_no_bar), observer)

    assert result.step == 4 and len(observer.losses) == 4
    assert all(np.isfinite(observer.losses)) and observer.losses[-1] < observer.losses[0]
    assert {"seg/Synth-Round", "seg/Synth-Dense", "seg_mean"} <= observer.scores.keys()
    model, card = load_model_folder(saved, weights_names=(BEST_WEIGHTS,))
    assert card.model.options["padding"] == "valid" and model.spec.output_crop == 92
    probs = predict_probabilities(model, np.random.default_rng(0).random((97, 130), dtype=np.float32),
                                  size_multiple=16, activation="softmax")
    assert probs.shape == (1, 3, 97, 130)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _no_bar(total, initial, desc):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=True)
