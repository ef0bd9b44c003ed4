"""The binary U-Net baseline: frequency-weighted cross entropy, closing + area opening, training on the demo data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import ndimage
from skimage import morphology

from celltune.data_prep.common import UserInputError
from celltune.trainables.compatibility import check_model_and_loss
from celltune.trainables.config import TrainConfig
from celltune.trainables.losses import build_loss, frequency_class_weights, loss_spec
from celltune.trainables.model_card import BEST_WEIGHTS, load_model_folder
from celltune.trainables.postprocess import binary_to_instances
from celltune.trainables.target_kinds import postprocess


def _logits(foreground_probs: list[float]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose softmax gives these foreground probabilities."""
    fg = torch.tensor(foreground_probs)
    return torch.stack([torch.log(1 - fg), torch.log(fg)]).reshape(1, 2, 1, -1)


# --- freq_ce -------------------------------------------------------------------------------------------------------


def test_class_weights_are_inverse_frequencies_by_hand():
    target = torch.tensor([[[0, 0, 0, 1]]])
    # N = 4 pixels, K = 2 classes: w0 = 4 / (2 * 3), w1 = 4 / (2 * 1).
    torch.testing.assert_close(frequency_class_weights(target, 2), torch.tensor([2 / 3, 2.0]))
    # An absent class weighs 0; with 3 classes: w0 = 4 / (3 * 3), w1 = 4 / (3 * 1).
    torch.testing.assert_close(frequency_class_weights(target, 3), torch.tensor([4 / 9, 4 / 3, 0.0]))
    valid = torch.tensor([[[1.0, 1.0, 0.0, 1.0]]])  # only 2 background pixels count: w0 = 3 / (2 * 2)
    torch.testing.assert_close(frequency_class_weights(target, 2, valid), torch.tensor([0.75, 1.5]))


def test_freq_ce_is_the_mean_over_classes_of_each_class_mean_ce():
    # Background pixels predicted correct with 0.8, 0.6, 0.9; the one foreground pixel with 0.5.
    logits = _logits([0.2, 0.4, 0.1, 0.5])
    target = torch.tensor([[[0, 0, 0, 1]]])
    background = (-math.log(0.8) - math.log(0.6) - math.log(0.9)) / 3
    expected = (background - math.log(0.5)) / 2
    out = build_loss("freq_ce")(logits, target)
    assert out.total.item() == pytest.approx(expected, rel=1e-6)
    assert out.terms["ce"].item() == pytest.approx(expected, rel=1e-6)
    plain = (3 * background - math.log(0.5)) / 4  # unweighted CE lets the background dominate
    assert expected > plain


def test_freq_ce_with_one_class_present_is_its_plain_mean():
    logits = _logits([0.2, 0.4, 0.1, 0.5])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    expected = (-math.log(0.8) - math.log(0.6) - math.log(0.9) - math.log(0.5)) / 4
    assert build_loss("freq_ce")(logits, target).total.item() == pytest.approx(expected, rel=1e-6)


def test_freq_ce_valid_mask_and_margin_drop_pixels():
    logits = _logits([0.2, 0.4, 0.1, 0.5])
    target = torch.tensor([[[0, 0, 0, 1]]])
    valid = torch.tensor([[[1, 1, 0, 0]]])  # only the first two background pixels count
    expected = (-math.log(0.8) - math.log(0.6)) / 2
    assert build_loss("freq_ce")(logits, target, valid=valid).total.item() == pytest.approx(expected, rel=1e-6)
    wide = torch.zeros(1, 2, 3, 6)  # margin 1 keeps the 1x4 centre
    wide[..., 1:2, 1:5] = logits
    wide_target = torch.ones(1, 3, 6, dtype=torch.long)
    wide_target[..., 1:2, 1:5] = target
    assert build_loss("freq_ce", margin=1)(wide, wide_target).total.item() == pytest.approx(
        build_loss("freq_ce")(logits, target).total.item(), rel=1e-6
    )


def test_freq_ce_needs_binary_class_ids():
    assert loss_spec("freq_ce").target_kind == "binary" and not loss_spec("freq_ce").needs_weight
    with pytest.raises(UserInputError, match=r"class ids must lie in \[0, 1\]"):
        build_loss("freq_ce")(_logits([0.5, 0.5]), torch.tensor([[[0, 2]]]))
    with pytest.raises(UserInputError, match="takes no weight map"):
        build_loss("freq_ce")(_logits([0.5, 0.5]), torch.tensor([[[0, 1]]]), torch.ones(1, 1, 2))


# --- closing and area opening --------------------------------------------------------------------------------------


def _probs(mask: np.ndarray) -> np.ndarray:
    fg = mask.astype(np.float32) * 0.8 + 0.1
    return np.stack([1 - fg, fg])


def test_closing_bridges_a_one_pixel_gap_and_keeps_edge_cells_whole():
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:15, 5:15] = True
    mask[5:15, 16:26] = True  # a one-pixel gap at column 15
    mask[20:30, 30:40] = True  # a cell cut by the image corner
    apart = binary_to_instances(_probs(mask), min_area=0)
    assert apart.max() == 3
    closed = binary_to_instances(_probs(mask), min_area=0, closing=1)
    assert closed.max() == 2
    assert closed[10, 10] == closed[10, 20] and closed[10, 15] == closed[10, 10]
    corner = closed[20:30, 30:40]
    assert (corner == corner[0, 0]).all() and (closed == corner[0, 0]).sum() == 100  # not eroded at the edge


def test_closing_and_area_opening_match_skimage_on_random_blobs():
    rng = np.random.default_rng(7)
    fg = ndimage.gaussian_filter(rng.random((80, 90)), 2.0)
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    mask = fg > 0.5
    for radius, min_area in ((1, 10), (2, 30), (3, 0)):
        labels = binary_to_instances(probs, threshold=0.5, closing=radius, min_area=min_area)
        closed = morphology.closing(mask, morphology.disk(radius), mode="ignore")
        expected = morphology.area_opening(closed, area_threshold=min_area, connectivity=1) if min_area else closed
        np.testing.assert_array_equal(labels > 0, expected)
        assert labels.max() == ndimage.label(expected)[1]


def test_closing_in_3d_uses_a_ball():
    mask = np.zeros((5, 12, 12), dtype=bool)
    mask[1:4, 2:6, 2:10] = True
    mask[1:4, 7:11, 2:10] = True  # a one-voxel gap at y = 6
    assert binary_to_instances(_probs(mask), min_area=0).max() == 2
    assert binary_to_instances(_probs(mask), min_area=0, closing=1).max() == 1


@pytest.mark.parametrize("closing", [-1, 1.5, True])
def test_closing_must_be_a_non_negative_integer(closing):
    with pytest.raises(UserInputError, match=f"closing={closing!r} must be an integer >= 0"):
        postprocess("binary", _probs(np.ones((4, 4), bool)), closing=closing)


# --- configuration -------------------------------------------------------------------------------------------------


def _config(stores: list[str], **overrides) -> TrainConfig:
    tree = {"data": {"stores": stores, "configuration": "all-st", "crop": 32, "batch_size": 2},
            "model": {"name": "unet", "options": {"width": 8, "target_kind": "binary"}},
            "loss": {"name": "freq_ce"}, "optimizer": {"lr": 3e-3}, "scheduler": {"name": "constant"},
            "training": {"epochs": 1, "steps_per_epoch": 4, "precision": "fp32"},
            "postprocess": {"closing": 1, "min_area": 20}}
    tree.update(overrides)
    return TrainConfig.model_validate(tree)


def test_binary_unet_with_freq_ce_is_a_consistent_config():
    spec = check_model_and_loss(_config(["a/Synth-Round.zarr"]))
    assert (spec.target_kind, spec.out_channels) == ("binary", 2)
    with pytest.raises(UserInputError, match="'freq_ce' trains binary targets but model 'unet' predicts tertiary"):
        check_model_and_loss(_config(["a/Synth-Round.zarr"], model={"name": "unet", "options": {"width": 8}}))
    with pytest.raises(ValidationError, match="freq_ce"):
        _config(["a/Synth-Round.zarr"], loss={"name": "freq-ce"})


@pytest.mark.slow
@pytest.mark.ray  # the demo_stores fixture prepares its stores with Ray
def test_binary_unet_trains_on_the_demo_data(demo_stores: Path, train_in_test):
    config = _config([str(demo_stores / "Synth-Round.zarr"), str(demo_stores / "Synth-Dense.zarr")])
    run = train_in_test(config)
    result, losses, scores, saved = run.result, run.losses, run.scores, run.checkpoint
    assert result.step == 4 and len(losses) == 4
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert {"seg/Synth-Round", "seg/Synth-Dense"} <= scores.keys()
    model, card = load_model_folder(saved, weights_names=(BEST_WEIGHTS,))
    assert model.spec.target_kind == "binary"
    assert card.postprocess == {"threshold": 0.5, "watershed": False, "min_distance": 5, "min_area": 20,
                                           "closing": 1}
