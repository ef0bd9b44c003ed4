"""How a search sizes its trials: resources per trial, concurrency, ASHA's time unit."""

from __future__ import annotations

import pytest

from celltune.search_spaces.tuner import concurrency_for, evaluations_per_trial, trial_footprint, trial_resources
from celltune.trainables.config import TrainConfig


def _config(**resources) -> TrainConfig:
    return TrainConfig.model_validate({"data": {"stores": ["/s/A.zarr"]}, "resources": resources,
                                       "training": {"epochs": 10, "eval_every": 3}})


def test_single_worker_trials_hold_their_worker_and_multi_worker_trials_a_sliver():
    assert trial_resources(_config(num_workers=1, cpus_per_worker=2)) == {"cpu": 2}
    assert trial_resources(_config(num_workers=1, cpus_per_worker=1, gpus_per_worker=1)) == {"cpu": 1, "gpu": 1}
    assert trial_resources(_config(num_workers=2, cpus_per_worker=1)) == {"cpu": 0.01}
    assert trial_footprint(_config(num_workers=2, cpus_per_worker=1, gpus_per_worker=1)) == pytest.approx(
        {"CPU": 2.01, "GPU": 2.0})


@pytest.mark.parametrize(("footprint", "available", "trials", "expected"), [
    ({"CPU": 1.0, "GPU": 0.0}, {"CPU": 2.0}, 4, 2),
    ({"CPU": 0.99, "GPU": 0.0}, {"CPU": 2.0}, 4, 2),  # 2 workers of 0.49 CPU plus the trial's 0.01
    ({"CPU": 1.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 4.0}, 10, 4),
    ({"CPU": 1.0, "GPU": 1.0}, {"CPU": 16.0}, 10, 1),  # no GPU yet (autoscaling): at least one
    ({"CPU": 1.0, "GPU": 0.0}, {"CPU": 64.0}, 3, 3),  # never more than the trials
])
def test_concurrency_is_what_the_cluster_holds(footprint, available, trials, expected):
    assert concurrency_for(footprint, available, trials) == expected


def test_asha_counts_evaluations_including_an_off_cycle_last_epoch():
    assert evaluations_per_trial(_config()) == 4  # epochs 3, 6, 9 and the last one, 10


def test_time_budgeted_trials_are_compared_at_equal_minutes_not_equal_evaluations():
    from celltune.search_spaces.space import EarlyStopping
    from celltune.search_spaces.tuner import asha_units

    stopping = EarlyStopping(grace_period=2)
    assert asha_units(_config(), stopping) == {"time_attr": "training_iteration", "max_t": 4, "grace_period": 2}
    timed = TrainConfig.model_validate({"data": {"stores": ["/s/A.zarr"]},
                                        "training": {"epochs": 1000, "max_minutes": 8}})
    assert asha_units(timed, stopping) == {"time_attr": "time_total_s", "max_t": 480, "grace_period": 120}
    assert asha_units(timed, EarlyStopping(grace_minutes=3))["grace_period"] == 180
