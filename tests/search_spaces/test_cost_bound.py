"""Cost beside quality: the Pareto front of a search and the best trial within a latency bound."""

from __future__ import annotations

import pytest

from celltune.search_spaces.cost_bound import best_within, pareto_front, trial_gmac
from celltune.search_spaces.space import load_space

POINTS = [("small", 0.60, 2.0), ("medium", 0.70, 5.0), ("worse-and-dearer", 0.65, 6.0), ("large", 0.75, 20.0),
          ("tied-dearer", 0.70, 7.0)]


def test_the_front_keeps_what_no_other_trial_beats_on_both_cheapest_first():
    assert pareto_front(POINTS, "max") == ["small", "medium", "large"]
    assert pareto_front([(k, -o, c) for k, o, c in POINTS], "min") == ["small", "medium", "large"]  # a loss
    assert pareto_front([], "max") == []


@pytest.mark.parametrize(("bound", "chosen"), [(None, "large"), (10.0, "medium"), (5.0, "medium"), (2.0, "small"),
                                               (1.0, None)])
def test_the_registered_trial_is_the_best_within_the_bound(bound, chosen):
    assert best_within(POINTS, "max", bound) == chosen


def test_a_trials_cost_follows_its_sampled_architecture(tmp_path):
    space = load_space("demo", stores_dir=tmp_path)
    small = trial_gmac(space.base_tree, {"model.name": "unet", "model.options.width": 8})
    large = trial_gmac(space.base_tree, {"model.name": "unet", "model.options.width": 16})
    assert 0 < small < large == pytest.approx(4 * small, rel=0.05)  # convolution MACs grow with width squared


def test_a_latency_bound_is_checked_where_the_space_is_read(tmp_path):
    from celltune.data_prep.common import UserInputError

    space = tmp_path / "bounded.yaml"
    space.write_text("base: demo\nobjective: {metric: seg_mean, mode: max, max_gmac: 0}\n"
                     "parameters:\n  optimizer.lr: {loguniform: [0.0001, 0.01]}\n")
    with pytest.raises(UserInputError, match="max_gmac"):
        load_space(str(space), stores_dir=tmp_path)
