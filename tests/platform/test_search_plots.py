"""Search pictures and tables: a study rebuilt from Tune-like results, Optuna's plots, degenerate studies."""

from __future__ import annotations

import logging

import matplotlib
import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from celltune.data_prep.common import UserInputError
from celltune.platform.search_plots import search_figures, study_from_trials, trials_table
from celltune.search_spaces.space import Parameter, ParameterSet

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOTS = {"plots/optimization_history.png", "plots/param_importances.png", "plots/parallel_coordinates.png"}


@pytest.fixture(scope="module")
def parameters() -> ParameterSet:
    return ParameterSet.build({
        "model.name": Parameter(choice=["unet", "xbnet"]),
        "optimizer.lr": Parameter(loguniform=(1e-4, 3e-3)),
        "scheduler.name": Parameter(choice=["constant", "warm_restarts"]),
        "scheduler.t0": Parameter(int=(1, 3), when={"scheduler.name": "warm_restarts"}),
        "loss.options.class_weights": Parameter(choice=[[1, 10, 5], [1, 1, 1]]),
    }, "test")


def _sample(model: str, lr: float, scheduler: str, weights: list[int], t0: int | None = None) -> dict:
    sample = {"model.name": model, "optimizer.lr": lr, "scheduler.name": scheduler,
              "loss.options.class_weights": weights}
    if t0 is not None:
        sample["scheduler.t0"] = t0
    return sample


TRIALS = [
    (_sample("unet", 1e-4, "constant", [1, 10, 5]), 0.41),
    (_sample("xbnet", 1e-3, "warm_restarts", [1, 1, 1], t0=2), 0.63),
    (_sample("unet", 3e-3, "warm_restarts", [1, 10, 5], t0=3), None, True),  # raised: FAIL
    (_sample("xbnet", 5e-4, "constant", [1, 1, 1]), None),  # stopped before reporting: PRUNED
    (_sample("xbnet", 2e-3, "warm_restarts", [1, 10, 5], t0=1), 0.55, False),
    (_sample("unet", 2e-4, "constant", [1, 1, 1]), float("nan")),  # FAIL
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_rebuilt_study_has_the_trials_params_distributions_and_states(parameters):
    study = study_from_trials(parameters, TRIALS, metric="seg_mean")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.metric_names == ["seg_mean"]
    trials = study.trials
    assert [t.number for t in trials] == list(range(6))
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    assert [t.value for t in trials] == [0.41, 0.63, None, None, 0.55, None]
    assert study.best_trial.number == 1
    # The conditional warm-restart period exists exactly where warm restarts were chosen.
    assert ["scheduler.t0" in t.params for t in trials] == [False, True, True, False, True, False]
    assert trials[1].params == {"model.name": "xbnet", "optimizer.lr": 1e-3, "scheduler.name": "warm_restarts",
                                "scheduler.t0": 2, "loss.options.class_weights": "[1, 1, 1]"}
    distributions = trials[1].distributions
    assert distributions["optimizer.lr"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert distributions["scheduler.t0"] == IntDistribution(1, 3)
    assert distributions["loss.options.class_weights"] == CategoricalDistribution(["[1, 10, 5]", "[1, 1, 1]"])
    assert distributions["model.name"] == CategoricalDistribution(["unet", "xbnet"])


def test_direction_minimize_and_empty_trials(parameters):
    study = study_from_trials(parameters, [], direction="minimize")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.trials == []
    with pytest.raises(UserInputError, match="direction='max'"):
        study_from_trials(parameters, [], direction="max")


@pytest.mark.parametrize(("entry", "message"), [
    ((_sample("unet", 1e-4, "constant", [1, 1, 1]) | {"data.crop": 64}, 0.5), "'data.crop' is not a parameter"),
    ((_sample("unet", 1e-4, "warm_restarts", [1, 1, 1]), 0.5), r"scheduler.t0 is missing \(sampled when "
                                                               r"scheduler.name in \['warm_restarts'\]\)"),
    ((_sample("unet", 1e-4, "constant", [1, 1, 1], t0=2), 0.5), "scheduler.t0 is set but its condition"),
    ((_sample("unet", 1e-4, "constant", [2, 2, 2]), 0.5),
     r"loss.options.class_weights: \[2, 2, 2\] is not one of the choices"),
    ((_sample("unet", 1e-2, "constant", [1, 1, 1]), 0.5), "optimizer.lr: 0.01 lies outside"),
    ((_sample("unet", 1e-4, "warm_restarts", [1, 1, 1], t0=1.5), 0.5), "scheduler.t0: 1.5 is not a whole number"),
    ((_sample("unet", 1e-4, "constant", [1, 1, 1]), "0.5"), "objective '0.5' must be a number"),
    ((_sample("unet", 1e-4, "constant", [1, 1, 1]),), "expected \\(sample, objective\\)"),
])
def test_samples_that_do_not_fit_the_space_are_rejected(parameters, entry, message):
    with pytest.raises(UserInputError, match="trial 1: " + message):
        study_from_trials(parameters, [TRIALS[0], entry])


def test_figures_are_drawn_and_saved_as_png(parameters, tmp_path):
    figures = search_figures(study_from_trials(parameters, TRIALS, metric="seg_mean"))
    assert set(figures) == PLOTS
    history = figures["plots/optimization_history.png"].axes[0]
    # One point per complete trial, at its objective; the best-so-far line ends at the best value.
    points = np.concatenate([c.get_offsets() for c in history.collections])
    assert sorted(points[:, 1].tolist()) == [0.41, 0.55, 0.63]
    assert history.get_ylabel() == "seg_mean"
    # Parallel coordinates: the objective axis, then one per parameter; one polyline per complete trial.
    parallel = figures["plots/parallel_coordinates.png"].axes[0]
    labels = [t.get_text() for t in parallel.get_xticklabels()]
    assert labels[0] == "seg_mean" and len(labels) == 1 + 5 and "scheduler.t0" in labels
    assert sum(len(c.get_segments()) for c in parallel.collections) == 3
    importances = figures["plots/param_importances.png"].axes[0]
    assert {t.get_text() for t in importances.get_yticklabels()} == set(parameters.keys())
    for path, figure in figures.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 5000


def test_one_complete_trial_gives_history_and_parallel_coordinates_only(parameters, caplog):
    study = study_from_trials(parameters, TRIALS[:1])
    with caplog.at_level(logging.INFO, logger="celltune.platform.search_plots"):
        figures = search_figures(study)
    assert set(figures) == {"plots/optimization_history.png", "plots/parallel_coordinates.png"}
    assert "param_importances.png left out: 1 complete trial(s); importances need 2" in caplog.text


def test_importances_need_trials_that_differ(parameters, caplog):
    same_value = [(TRIALS[0][0], 0.5), (TRIALS[1][0], 0.5)]
    same_params = [(TRIALS[0][0], 0.4), (TRIALS[0][0], 0.6)]
    with caplog.at_level(logging.INFO, logger="celltune.platform.search_plots"):
        assert "plots/param_importances.png" not in search_figures(study_from_trials(parameters, same_value))
        assert "plots/param_importances.png" not in search_figures(study_from_trials(parameters, same_params))
        assert "plots/param_importances.png" in search_figures(study_from_trials(parameters, TRIALS[:2]))
    assert "every complete trial has the same objective" in caplog.text
    assert "no parameter varies among the complete trials" in caplog.text


def test_all_failed_or_no_trials_give_no_figures_without_raising(parameters, caplog):
    failed = [(sample, None, True) for sample, *_ in TRIALS[:3]]
    with caplog.at_level(logging.INFO, logger="celltune.platform.search_plots"):
        assert search_figures(study_from_trials(parameters, failed)) == {}
        assert search_figures(study_from_trials(parameters, [])) == {}
    assert "optimization_history.png left out: no complete trial" in caplog.text
    assert not plt.get_fignums()  # nothing half-drawn left open


def test_multi_objective_studies_add_the_pareto_front():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("macs", 1, 9) * 1.0), n_trials=6)
    figures = search_figures(study)
    assert set(figures) == PLOTS | {"plots/pareto_front.png"}


def test_trials_table_is_fixed_width_with_leading_columns_first():
    rows = [
        {"objective": 0.63219, "trial": "t_00001", "optimizer.lr": 0.001, "status": "TERMINATED", "epochs": 4,
         "loss.options.class_weights": [1, 1, 1], "augment": True},
        {"trial": "t_00002", "status": "ERROR", "epochs": 1, "objective": None, "optimizer.lr": 2.5e-4,
         "scheduler.t0": 3},
    ]
    assert trials_table(rows) == "\n".join([
        "trial    status      epochs  objective  optimizer.lr  loss.options.class_weights  augment  scheduler.t0",
        "-------  ----------  ------  ---------  ------------  --------------------------  -------  ------------",
        "t_00001  TERMINATED       4     0.6322         0.001  [1, 1, 1]                   true                -",
        "t_00002  ERROR            1          -       0.00025  -                           -                   3",
    ])
    assert trials_table([]) == "(no trials)"
    long = trials_table([{"trial": 0, "loss": {"name": "ce_j", "options": {"j_weight": 0.05, "lambda": 0.5}}}])
    assert long.splitlines()[2] == '    0  {"name": "ce_j", "options": {"j_weigh...'  # cut at 40 characters
