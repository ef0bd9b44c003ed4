"""Tuning post-processing thresholds per dataset on cached probabilities: known answers on synthetic maps.

The maps are tertiary (background / boundary / cell) 64x64 frames with four discs of radius 9 (253 px):

- "specks": the prediction has a 5x5 hole in each disc with a 2x2 speck of cell inside it. The speck is a
  second object next to the hole, so the hole is only filled once ``min_area`` >= 5 removes the speck and
  ``hole_area`` >= 26 admits the 25 px hole: SEG 228/253 before, 1.0 after.
- "rings": the cells really are rings (the 5x5 hole is background in the reference too), so filling it
  (``hole_area`` >= 26) costs SEG 228/253, and ``hole_area`` <= 25 gives 1.0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.postprocess_study import (
    ValidationProbabilities,
    predict_validation,
    seg_score_for,
    tune_postprocess,
)
from celltune.search_spaces.space import Parameter, ParameterSet
from celltune.trainables.config import DataConfig
from celltune.trainables.data import load_validation_frames
from celltune.trainables.model_card import ModelCard
from celltune.trainables.postprocess import one_hot
from celltune.trainables.train_loop import evaluate

CENTRES = ((16, 16), (16, 48), (48, 16), (48, 48))
RING = 228 / 253  # Jaccard of a disc minus its 5x5 centre with the whole disc
START = {"min_area": 1, "hole_area": 40, "grow": 0}


def _frame(kind: str, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (3, 64, 64) float16, reference labels) for one synthetic frame."""
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    classes = np.zeros((64, 64), np.int64)
    for index, (cy, cx) in enumerate(CENTRES, start=1):
        cy, cx = cy + shift, cx
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 81
        hole = (abs(yy - cy) <= 2) & (abs(xx - cx) <= 2)
        labels[disc & ~hole if kind == "rings" else disc] = index
        classes[disc & ~hole] = 2
        if kind == "specks":
            classes[cy:cy + 2, cx:cx + 2] = 2
    probs = 0.1 + 0.7 * one_hot(classes, 3)
    return probs.astype(np.float16), labels


def _probabilities(**datasets: str) -> ValidationProbabilities:
    return ValidationProbabilities("tertiary", {name: [_frame(kind), _frame(kind, shift=1)]
                                                for name, kind in datasets.items()})


def _parameters(**ranges: tuple[int, int]) -> ParameterSet:
    return ParameterSet.build({name: Parameter(int=bounds, log=name == "min_area") for name, bounds in ranges.items()},
                              "test")


BOTH = {"min_area": (1, 64), "hole_area": (0, 64)}


def test_scores_of_the_synthetic_maps_are_the_hand_computed_ones():
    specks, rings = _frame("specks"), _frame("rings")
    assert seg_score_for("tertiary", [specks], START) == pytest.approx(RING)
    assert seg_score_for("tertiary", [specks], {"min_area": 5, "hole_area": 26}) == pytest.approx(1.0)
    assert seg_score_for("tertiary", [specks], {"min_area": 4, "hole_area": 26}) == pytest.approx(RING)
    assert seg_score_for("tertiary", [rings], {"hole_area": 25}) == pytest.approx(1.0)
    assert seg_score_for("tertiary", [rings], {"hole_area": 26}) == pytest.approx(RING)


def test_seg_pools_objects_over_frames_not_frame_means():
    good = _frame("rings")
    one_missed = np.zeros((64, 64), np.int32)
    one_missed[:5, :5] = 1  # a reference object the (empty) prediction misses
    empty = (np.zeros((3, 64, 64), np.float32) + np.array([1.0, 0, 0])[:, None, None], one_missed)
    # 4 perfect objects + 1 missed = 4/5 (the mean of the frames' SEG would be 0.5).
    assert seg_score_for("tertiary", [good, empty], {"hole_area": 0}) == pytest.approx(0.8)


def test_min_area_removes_the_specks_and_tuning_beats_the_start():
    choice = tune_postprocess(_probabilities(A="specks"), _parameters(min_area=(1, 64)), trials=12,
                              start_params=START, seed=0)
    assert choice.scores["seg_untuned/A"] == pytest.approx(RING)
    assert choice.scores["seg/A"] == pytest.approx(1.0)
    assert 5 <= choice.per_dataset["A"]["min_area"] <= 64
    # Untuned parameters keep their starting values; the study's first trial is the start.
    assert choice.per_dataset["A"]["hole_area"] == 40 and choice.per_dataset["A"]["grow"] == 0
    study = choice.studies["A"]
    assert study.trials[0].params == {"min_area": 1} and study.trials[0].value == pytest.approx(RING)
    assert len(study.trials) == 12 and study.metric_names == ["seg/A"]


def test_datasets_that_need_different_thresholds_get_different_ones_and_the_default_serves_most():
    probabilities = _probabilities(A="specks", B="specks", R="rings")
    choice = tune_postprocess(probabilities, _parameters(**BOTH), trials=25, start_params=START, seed=0)
    for name in ("A", "B", "R"):
        assert choice.scores[f"seg/{name}"] == pytest.approx(1.0)
    assert choice.scores["seg_mean"] == pytest.approx(1.0)
    assert choice.scores["seg_untuned_mean"] == pytest.approx(RING)
    for name in ("A", "B"):
        assert choice.per_dataset[name]["min_area"] >= 5 and choice.per_dataset[name]["hole_area"] >= 26
    assert choice.per_dataset["R"]["hole_area"] <= 25
    # A specks winner scores (1 + 1 + RING) / 3 over all datasets, the rings winner at most (1 + 2 RING) / 3.
    assert choice.default in (choice.per_dataset["A"], choice.per_dataset["B"])
    assert choice.scores["seg_default_mean"] == pytest.approx((2 + RING) / 3)


def test_the_same_seed_gives_the_same_study_and_another_seed_samples_differently():
    probabilities = _probabilities(A="specks", R="rings")

    def run(seed: int):
        choice = tune_postprocess(probabilities, _parameters(**BOTH), trials=8, start_params=START, seed=seed)
        return choice, {name: [t.params for t in study.trials] for name, study in choice.studies.items()}

    (first, samples), (again, samples_again), (_, other) = run(3), run(3), run(4)
    assert samples == samples_again
    assert first.per_dataset == again.per_dataset and first.default == again.default
    assert first.scores == again.scores
    assert other != samples


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tuned_is_never_below_untuned(seed):
    # Few trials from a start that is already perfect for specks: the start must survive.
    start = {"min_area": 8, "hole_area": 30}
    choice = tune_postprocess(_probabilities(A="specks", R="rings"), _parameters(**BOTH), trials=3,
                              start_params=start, seed=seed)
    for name in ("A", "R"):
        assert choice.scores[f"seg/{name}"] >= choice.scores[f"seg_untuned/{name}"]
    assert choice.per_dataset["A"] == {**start, "grow": 0}  # ties keep the starting thresholds
    assert choice.scores["seg_default_mean"] >= choice.scores["seg_untuned_mean"]


def test_a_start_outside_the_space_stays_a_candidate():
    # min_area=100 is outside [1, 64]: the first trial samples it, but the start itself still competes.
    start = {"min_area": 100, "hole_area": 10}
    choice = tune_postprocess(_probabilities(R="rings"), _parameters(**BOTH), trials=2, start_params=start, seed=0)
    assert choice.scores["seg_untuned/R"] == pytest.approx(1.0)
    assert choice.per_dataset["R"]["min_area"] == 100
    assert 1 <= choice.studies["R"].trials[0].params["min_area"] <= 64


def test_bad_studies_are_rejected_in_one_line():
    probabilities = _probabilities(A="specks")
    with pytest.raises(UserInputError, match="'threshold' is not a tertiary post-processing parameter"):
        tune_postprocess(probabilities, ParameterSet.build({"threshold": Parameter(uniform=(0.1, 0.9))}, "t"),
                         trials=2, start_params={})
    with pytest.raises(UserInputError, match="'min_size' is not a tertiary"):
        tune_postprocess(probabilities, _parameters(**BOTH), trials=2, start_params={"min_size": 3})
    with pytest.raises(UserInputError, match="trials=0"):
        tune_postprocess(probabilities, _parameters(**BOTH), trials=0, start_params={})
    with pytest.raises(UserInputError, match="no dataset has validation frames"):
        tune_postprocess(ValidationProbabilities("tertiary", {"A": []}), _parameters(**BOTH), trials=2,
                         start_params={})
    with pytest.raises(UserInputError, match=r"A\[0\]: probabilities"):
        ValidationProbabilities("binary", {"A": [_frame("specks")]})


def test_datasets_without_frames_are_skipped():
    probabilities = ValidationProbabilities("tertiary", {"A": [_frame("specks")], "E": []})
    choice = tune_postprocess(probabilities, _parameters(**BOTH), trials=2, start_params=START)
    assert set(choice.per_dataset) == {"A"} and "seg/E" not in choice.scores


def test_save_and_load_round_trip(tmp_path):
    labels16 = _frame("rings")[1].astype(np.uint16)
    probabilities = ValidationProbabilities("tertiary", {
        "Fluo-N2DH-SIM+": [_frame("specks"), (_frame("rings")[0].astype(np.float32), labels16)],
        "empty": [],
        "DIC-C2DH-HeLa": [_frame("rings", shift=1)],
    })
    path = tmp_path / "cache" / "validation_probabilities.npz"
    probabilities.save(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    loaded = ValidationProbabilities.load(path)
    assert loaded.kind == "tertiary" and list(loaded.frames) == list(probabilities.frames)
    for name, frames in probabilities.frames.items():
        assert len(loaded.frames[name]) == len(frames)
        for (probs, labels), (probs_back, labels_back) in zip(frames, loaded.frames[name], strict=True):
            assert probs_back.dtype == probs.dtype and labels_back.dtype == labels.dtype
            np.testing.assert_array_equal(probs_back, probs)
            np.testing.assert_array_equal(labels_back, labels)


def test_loading_something_else_fails_in_one_line(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        ValidationProbabilities.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UserInputError, match="junk.npz: not a cached validation probabilities file"):
        ValidationProbabilities.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(UserInputError, match="other.npz: not a cached"):
        ValidationProbabilities.load(other)


class _BrightIsCell(nn.Module):
    """Logits (background, boundary, cell) from intensity alone: bright pixels are cell."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([8 * (0.3 - image), torch.full_like(image, -2.0), 8 * (image - 0.3)], dim=1)


@pytest.mark.ray  # the demo stores are prepared with Ray
def test_predicted_validation_maps_score_like_the_training_evaluation(demo_stores, tmp_path):
    stores = [demo_stores / "Synth-Round.zarr", demo_stores / "Synth-Dense.zarr"]
    description = ModelCard.from_mapping({
        "model": {"name": "bright_is_cell", "target_kind": "tertiary", "size_multiple": 16},
        "normalization": "percentile", "postprocess": {"min_area": 8, "hole_area": 8, "grow": 0}})
    data = DataConfig(stores=stores, normalization="minmax")  # the model's own normalization must win
    model = _BrightIsCell()
    cached = predict_validation(model, description, data, dtype=np.float32)
    expected = load_validation_frames(DataConfig(stores=stores, normalization="percentile"))
    assert cached.kind == "tertiary" and list(cached.frames) == ["Synth-Round", "Synth-Dense"]
    scores, _ = evaluate(model, expected, kind="tertiary", size_multiple=16,
                         postprocess_params=description.postprocess, device=torch.device("cpu"))
    for name, frames in expected.items():
        assert len(cached.frames[name]) == len(frames) > 0
        for (probs, labels), frame in zip(cached.frames[name], frames, strict=True):
            assert probs.shape == (3, *frame.labels.shape) and probs.dtype == np.float32
            np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
            np.testing.assert_array_equal(labels, frame.labels)
        seg = seg_score_for("tertiary", cached.frames[name], description.postprocess)
        assert seg == pytest.approx(scores[f"seg/{name}"], abs=1e-12) and seg > 0.3
    # The default float16 cache scores the same up to rounding at class ties.
    half = predict_validation(model, description, data)
    assert half.frames["Synth-Round"][0][0].dtype == np.float16
    for name in expected:
        assert seg_score_for("tertiary", half.frames[name], description.postprocess) == \
            pytest.approx(scores[f"seg/{name}"], abs=1e-3)

