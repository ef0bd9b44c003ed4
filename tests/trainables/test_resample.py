"""Per-dataset resampling (``data.scale``): targets that keep touching cells apart, crops that equal the resampled
original window, predictions at the input size, and models that carry their factor to prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from pydantic import ValidationError
from scipy import ndimage

from celltune.data_prep.common import UserInputError
from celltune.data_prep.targets import TERTIARY_BOUNDARY, TERTIARY_CELL, tertiary_target
from celltune.trainables import resample
from celltune.trainables.architectures import build_model
from celltune.trainables.config import AugmentConfig, DataConfig, TrainConfig
from celltune.trainables.data import RandomCrops, dataset_frames
from celltune.trainables.inference import predict_probabilities
from celltune.trainables.metrics import seg_counts, seg_score
from celltune.trainables.model_card import CARD_FILE, ModelCard
from celltune.trainables.postprocess import one_hot
from celltune.trainables.target_kinds import postprocess
from celltune.trainables.train_loop import WorkerContext, train


def _touching_cells() -> np.ndarray:
    labels = np.zeros((60, 90), np.int32)
    labels[10:50, 5:45] = 1
    labels[10:50, 45:85] = 2
    return labels


def test_boundary_between_touching_cells_survives_a_downscale_that_nearest_neighbour_loses():
    target = tertiary_target(_touching_cells())
    shape = (12, 18)  # a fifth of each side
    shared = resample.resize_classes(target, shape, classes=3, thin_class=TERTIARY_BOUNDARY)
    assert ndimage.label(shared == TERTIARY_CELL)[1] == 2
    nearest = resample.resize_labels(target, shape)
    assert ndimage.label(nearest == TERTIARY_CELL)[1] == 1  # why class shares: the thin boundary vanishes


@pytest.mark.real_data
@pytest.mark.parametrize("dataset", ["DIC-C2DH-HeLa", "Fluo-N2DH-SIM+"])
def test_perfect_prediction_at_half_scale_keeps_seg_above_090_on_real_gt(ctc_data_dir, dataset):
    """The ceiling a model trained at scale 0.5 can reach: its GT target, resampled down and its probabilities
    back up, post-processed at the original resolution."""
    frames = sorted((ctc_data_dir / dataset).glob("0?_GT/SEG/man_seg*.tif"))[::6]
    assert frames, f"no GT SEG frames under {ctc_data_dir / dataset}"
    counts = []
    for frame in frames:
        gt = tifffile.imread(frame)
        shape = (resample.scaled_side(gt.shape[0], 0.5), resample.scaled_side(gt.shape[1], 0.5))
        small = resample.resize_classes(tertiary_target(gt), shape, classes=3, thin_class=TERTIARY_BOUNDARY)
        probabilities = resample.resize_probabilities(one_hot(small, 3)[None], gt.shape)[0]
        counts.append(seg_counts(gt, postprocess("tertiary", probabilities, min_area=1)))
    assert seg_score(counts) >= 0.90


def test_prediction_at_a_scale_has_the_input_size_and_equals_predicting_the_resampled_frame():
    torch.manual_seed(0)
    model = build_model("unet", width=8)
    image = np.random.default_rng(0).random((50, 70), dtype=np.float32)
    kwargs = dict(size_multiple=16, activation="softmax")
    probabilities = predict_probabilities(model, image, scale=0.5, **kwargs)
    assert probabilities.shape == (1, 3, 50, 70)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    small = predict_probabilities(model, resample.resize_images(image, (25, 35)), **kwargs)
    np.testing.assert_allclose(probabilities, resample.resize_probabilities(small, (50, 70)), atol=1e-6)
    np.testing.assert_array_equal(predict_probabilities(model, image, scale=1.0, **kwargs),
                                  predict_probabilities(model, image, **kwargs))


def test_scale_is_checked_per_dataset():
    with pytest.raises(ValidationError, match="scale names unknown datasets"):
        DataConfig(stores=["s/A.zarr"], scale={"B": 0.5})
    with pytest.raises(ValidationError, match="scale"):
        DataConfig(stores=["s/A.zarr"], scale=0.01)
    data = DataConfig(stores=["s/A.zarr", "s/B.zarr"], scale={"A": 0.5})
    assert data.scales == {"A": 0.5, "B": 1.0}


def test_prediction_uses_the_factor_of_the_named_dataset_or_asks_for_one():
    def card(scale: dict) -> ModelCard:
        model = {"name": "unet", "target_kind": "tertiary", "size_multiple": 16}
        return ModelCard.from_mapping({"model": model, **({"scale": scale} if scale else {})})

    per_dataset = card({"DIC-C2DH-HeLa": 0.5, "Fluo-N2DH-SIM+": 1.0})
    assert per_dataset.scale_for("DIC-C2DH-HeLa") == 0.5
    assert card({"A": 0.5, "B": 0.5}).scale_for() == 0.5
    assert card({}).scale_for() == 1.0  # models saved before data.scale existed
    with pytest.raises(UserInputError, match=r"DIC-C2DH-HeLa: 0.5, Fluo-N2DH-SIM\+: 1\).*--dataset NAME or --scale"):
        per_dataset.scale_for("Other")


@pytest.mark.ray  # the demo_stores fixture prepares its stores with Ray
def test_a_crop_at_half_scale_is_the_resampled_original_window(demo_stores: Path, monkeypatch):
    store = demo_stores / "Synth-Round.zarr"
    frames = dataset_frames(store, "all-st", "train")
    crops = RandomCrops(frames[:1], crop=24, margin=4, target_kind="tertiary", weights=False,
                        normalization="minmax", augment=AugmentConfig(flips_and_rotations=False), seed=0, scale=0.5)
    monkeypatch.setattr(RandomCrops, "_crop_origin", lambda self, rng, frame, reader: (20, 12))
    sample = crops.sample(np.random.default_rng(0))
    assert sample["image"].shape == (1, 32, 32) and sample["target"].shape == (32, 32)
    reader = crops._reader(frames[0])
    window = crops._images(reader, frames[0], (20 - 8, 12 - 8, 64))  # 4 px of margin = 8 original px
    np.testing.assert_allclose(sample["image"].numpy(), resample.resize_images(window, (32, 32)), atol=1e-6)
    assert set(np.unique(sample["target"].numpy())) <= {0, 1, 2}


@pytest.mark.ray
def test_training_at_a_scale_scores_at_the_original_resolution_and_records_the_factor(demo_stores, train_in_test):
    stores = [str(demo_stores / "Synth-Round.zarr"), str(demo_stores / "Synth-Dense.zarr")]
    config = TrainConfig.model_validate({
        "data": {"stores": stores, "configuration": "all-st", "crop": 32, "batch_size": 2,
                 "scale": {"Synth-Round": 0.5}},
        "model": {"name": "unet", "options": {"width": 8}},
        "training": {"epochs": 1, "steps_per_epoch": 2, "precision": "fp32"},
    })
    run = train_in_test(config)
    assert {"seg/Synth-Round", "seg/Synth-Dense"} <= set(run.result.best)
    # predicted labels at the size of the reference labels
    assert len(run.examples) == 2
    assert all(predicted.shape == labels.shape for _, labels, predicted in run.examples.values())
    assert json.loads((run.checkpoint / CARD_FILE).read_text())["scale"] == {"Synth-Round": 0.5, "Synth-Dense": 1.0}

    mixed = config.model_copy(update={"training": config.training.model_copy(update={"scheme": "mix"})})
    from tqdm import tqdm

    with pytest.raises(UserInputError, match="scheme mix .* one data.scale"):
        train(mixed, WorkerContext(progress_bar=lambda total, initial, desc: tqdm(disable=True)))
