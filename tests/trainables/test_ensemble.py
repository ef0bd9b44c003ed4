"""Ensembles: the mean of their members' probabilities, chosen on cached validation maps, saved as one model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.ensemble_selection import Candidate, choose_ensemble, mean_probabilities
from celltune.search_spaces.postprocess_study import ValidationProbabilities
from celltune.search_spaces.space import Parameter, ParameterSet
from celltune.trainables.architectures import build_model, list_models, validate_model
from celltune.trainables.inference import activation_for, predict_probabilities

MEMBERS = {
    "tertiary": [{"name": "unet", "options": {"width": 8}}, {"name": "xbnet", "options": {"width": 8}}],
    "mask_marker": [{"name": "unet", "options": {"width": 8, "target_kind": "mask_marker"}},
                    {"name": "u_se_resnet", "options": {"width": 8}}],
}


@pytest.mark.parametrize("kind", ["tertiary", "mask_marker"])
def test_an_ensemble_predicts_the_weighted_mean_of_its_members_probabilities(kind):
    torch.manual_seed(0)
    ensemble = build_model("ensemble", members=MEMBERS[kind], weights=[3, 1], target_kind=kind)
    image = np.random.default_rng(1).random((2, 64, 96), dtype=np.float32)
    settings = {"size_multiple": ensemble.spec.size_multiple, "activation": activation_for(kind), "max_tile": None}
    together = predict_probabilities(ensemble, image, **settings)
    first, second = (predict_probabilities(member, image, **settings) for member in ensemble.members)
    np.testing.assert_allclose(together, 0.75 * first + 0.25 * second, atol=2e-6)
    assert ensemble.spec.size_multiple == 32 if kind == "mask_marker" else 16  # the members' common multiple


def test_an_ensemble_is_not_an_architecture_to_train_and_its_options_are_checked():
    assert "ensemble" not in list_models()
    with pytest.raises(UserInputError, match="made from trained models"):
        validate_model("ensemble", members=MEMBERS["tertiary"])
    with pytest.raises(UserInputError, match="predicts mask_marker, the ensemble tertiary"):
        build_model("ensemble", members=MEMBERS["mask_marker"], target_kind="tertiary")
    with pytest.raises(UserInputError, match="one positive number per member"):
        build_model("ensemble", members=MEMBERS["tertiary"], weights=[1])
    with pytest.raises(UserInputError, match="at least one member"):
        build_model("ensemble")


def _cached(scale: float, rng: np.random.Generator) -> ValidationProbabilities:
    """Tertiary maps of two 24x24 frames with one square cell each, blurred by noise of amplitude ``scale``."""
    frames = []
    for _ in range(2):
        labels = np.zeros((24, 24), np.int32)
        labels[6:18, 6:18] = 1
        cell = np.where(labels > 0, 1.0, 0.0) + scale * rng.standard_normal(labels.shape)
        probs = np.stack([1 - cell, np.zeros_like(cell), cell]).clip(0, 1).astype(np.float32)
        frames.append((probs, labels))
    return ValidationProbabilities("tertiary", {"A": frames})


def test_averaging_independent_errors_is_chosen_when_it_scores_better():
    rng = np.random.default_rng(0)
    candidates = [Candidate(f"m{i}", _cached(0.9, rng)) for i in range(3)]
    mean = mean_probabilities([c.plain for c in candidates])
    np.testing.assert_allclose(mean.frames["A"][0][0], np.mean([c.plain.frames["A"][0][0] for c in candidates],
                                                               axis=0))
    parameters = ParameterSet.build({"min_area": Parameter(int=(1, 4))}, "test")
    best, options = choose_ensemble(candidates, parameters, start_params={"min_area": 1, "hole_area": 0},
                                    max_members=3, trials=2)
    assert [(o.members, o.tta) for o in options] == [(1, False), (2, False), (3, False)]  # no TTA maps given
    assert options[2].seg_mean > options[0].seg_mean  # noise averages out
    assert best.members > 1 and best.label.startswith("top-")
    # under a latency bound only the single best fits (the others would double or triple the cost per frame)
    bounded, _ = choose_ensemble(candidates, parameters, start_params={"min_area": 1, "hole_area": 0},
                                 max_members=3, trials=2, costs=[1.0, 1.0, 1.0], max_cost=1.5)
    assert (bounded.members, bounded.tta) == (1, False)


def test_the_demo_space_asks_its_search_to_choose_among_ensembles_and_tta(tmp_path):
    from celltune.search_spaces.space import load_space

    study = load_space("demo", stores_dir=tmp_path).postprocess
    assert (study.ensemble_members, study.tta, study.chooses_model) == (2, True, True)
    assert not load_space("cpu_universal", stores_dir=tmp_path).postprocess.chooses_model  # CI-sized smoke runs
