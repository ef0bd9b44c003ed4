"""Sampling search spaces with Optuna (define-by-run) and at random, and applying samples onto the base config."""

from __future__ import annotations

import math
import pickle
import statistics
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.samplers import RandomSampler, TPESampler

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.sampling import (
    DefineByRun,
    apply_sample,
    decode_choice,
    define_by_run,
    encoded_choices,
    postprocess_define_by_run,
    sample_random,
)
from celltune.search_spaces.space import SearchSpace, load_space
from celltune.trainables.config import TrainConfig
from celltune.trainables.yaml_files import set_dotted_keys

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = """\
name: t
base_config:
  data: {stores: [s/A.zarr, s/B.zarr], crop: 64}
  model: {name: unet, options: {width: 8}}
  loss: {name: ce}
"""


def make_space(tmp_path: Path, parameters: str) -> SearchSpace:
    path = tmp_path / "space.yaml"
    path.write_text(BASE + "parameters:\n" + textwrap.indent(textwrap.dedent(parameters), "  "))
    return load_space(path)


@pytest.fixture(scope="module")
def demo() -> SearchSpace:
    return load_space("demo")


def run_study(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n_trials: int = 30
              ) -> tuple[optuna.Study, list[dict]]:
    """A study over the space with a dummy objective (prefers lr near 1e-3 and CE + J); returns the samples."""
    function = define_by_run(space)
    samples: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        sample = function(trial)
        samples.append(sample)
        return -(math.log10(sample["optimizer.lr"]) + 3) ** 2 + (sample["loss.name"] == "ce_j")

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return study, samples


def test_conditional_parameters_only_when_their_condition_holds(demo):
    study, samples = run_study(demo, TPESampler(seed=0))
    for trial, sample in zip(study.trials, samples, strict=True):
        for params in (trial.params, sample):
            assert ("scheduler.t0" in params) == (params["scheduler.name"] == "warm_restarts")
            assert ("loss.options.j_weight" in params) == (params["loss.name"] == "ce_j")
        assert set(sample) == set(trial.params)
        assert sample["data.crop"] in (64, 96) and sample["model.name"] in ("unet", "xbnet")
        assert 1e-4 <= sample["optimizer.lr"] <= 3e-3
        assert sample.get("scheduler.t0", 1) in (1, 2, 3)
        assert 0.01 <= sample.get("loss.options.j_weight", 0.05) <= 0.1
    # both sides of every condition were visited
    assert {s["scheduler.name"] for s in samples} == {"constant", "cosine", "warm_restarts"}
    assert {s["loss.name"] for s in samples} == {"ce", "ce_j"}


def test_seeded_sampling_is_reproducible(demo):
    _, first = run_study(demo, TPESampler(seed=7), n_trials=15)
    _, again = run_study(demo, TPESampler(seed=7), n_trials=15)
    _, other = run_study(demo, TPESampler(seed=8), n_trials=15)
    assert first == again and first != other
    draws = [sample_random(demo, np.random.default_rng(3)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert [sample_random(demo, rng_a) for _ in range(10)] == [sample_random(demo, rng_b) for _ in range(10)]
    rng_c = np.random.default_rng(6)
    assert [sample_random(demo, rng_a) for _ in range(10)] != [sample_random(demo, rng_c) for _ in range(10)]


def test_sampled_dict_applied_to_the_base_gives_a_valid_config_with_values_at_their_paths(demo):
    _, samples = run_study(demo, TPESampler(seed=1), n_trials=10)
    for sample in samples:
        config = apply_sample(demo.base_tree, sample)
        assert config.data.crop == sample["data.crop"] and config.model.name == sample["model.name"]
        assert config.optimizer.lr == sample["optimizer.lr"] and config.scheduler.name == sample["scheduler.name"]
        assert config.loss.name == sample["loss.name"]
        assert config.loss.options["class_weights"] == sample["loss.options.class_weights"]
        assert config.scheduler.t0 == sample.get("scheduler.t0", 100)  # the base (default) value when inactive
        assert config.model.options == {"width": 8} and config.training.epochs == 4  # untouched base values


def test_apply_sample_by_hand(demo):
    base_before = pickle.dumps(demo.base_tree)
    sample = {"loss.options.j_weight": 0.05, "loss.name": "ce_j", "loss.options.class_weights": [1, 5, 5],
              "scheduler.name": "warm_restarts", "scheduler.t0": 7, "data.crop": 96, "postprocess.min_area": 40}
    config = apply_sample(demo.base_tree, sample)
    assert config.loss.name == "ce_j" and config.loss.options == {"j_weight": 0.05, "class_weights": [1, 5, 5]}
    assert (config.scheduler.name, config.scheduler.t0, config.data.crop) == ("warm_restarts", 7, 96)
    assert config.postprocess == {"min_area": 40}
    assert [Path(s).name for s in config.data.stores] == ["Synth-Round.zarr", "Synth-Dense.zarr"]
    assert pickle.dumps(demo.base_tree) == base_before  # the base is not changed
    sample["loss.options.class_weights"].append(9)
    assert config.loss.options["class_weights"] == [1, 5, 5]  # nor shared with the sample
    assert apply_sample(demo.base_config(), {"data.crop": 64}).data.crop == 64  # a TrainConfig as base


def test_apply_values_replaces_sections_before_setting_deeper_keys():
    tree = {"loss": {"name": "ce", "options": {"class_weights": [1, 10, 5]}}}
    out = set_dotted_keys(tree, {"loss.options.class_weights": [1, 1, 1], "loss": {"name": "ce_j", "options": {}}})
    assert out == {"loss": {"name": "ce_j", "options": {"class_weights": [1, 1, 1]}}}
    assert set_dotted_keys({}, {"a.b.c": 1}) == {"a": {"b": {"c": 1}}}
    with pytest.raises(UserInputError, match=r"^x: a is a value \(1\), not a section, so a.b cannot be set$"):
        set_dotted_keys({"a": 1}, {"a.b": 2}, source="x")


def test_apply_sample_rejects_invalid_values_in_one_line(demo):
    with pytest.raises(UserInputError, match=r"^trial 3: scheduler.name: got 'linear'; input should be"):
        apply_sample(demo.base_tree, {"scheduler.name": "linear"}, source="trial 3")
    with pytest.raises(UserInputError, match=r"^sampled config: optimizer.lr: Input should be greater than 0$"):
        apply_sample(demo.base_tree, {"optimizer.lr": -1.0})


def test_list_and_mapping_choices_round_trip_through_optuna(tmp_path):
    space = make_space(tmp_path, """\
        loss: {choice: [{name: ce}, {name: ce_j, options: {j_weight: 0.1}}]}
        loss.options.class_weights: {choice: [[1, 10, 5], [1, 1, 1]]}
        data.crop: {choice: [64, short_side]}
        """)
    weights = space.parameters["loss.options.class_weights"]
    assert encoded_choices(weights) == ["[1, 10, 5]", "[1, 1, 1]"]
    assert encoded_choices(space.parameters["data.crop"]) == [64, "short_side"]  # scalars go to Optuna as they are
    decoded = decode_choice(weights, "[1, 1, 1]")
    decoded.append(2)
    assert weights.choice == [[1, 10, 5], [1, 1, 1]]  # a copy was returned
    study = optuna.create_study(sampler=RandomSampler(seed=0))
    function = define_by_run(space)
    seen = set()
    for _ in range(12):
        trial = study.ask()
        sample = function(trial)
        study.tell(trial, 0.0)
        assert trial.params["loss.options.class_weights"] in ("[1, 10, 5]", "[1, 1, 1]")
        assert sample["loss.options.class_weights"] in ([1, 10, 5], [1, 1, 1])
        assert sample["loss"] in ({"name": "ce"}, {"name": "ce_j", "options": {"j_weight": 0.1}})
        config = apply_sample(space.base_tree, sample)
        assert config.loss.name == sample["loss"]["name"]
        assert config.loss.options == {**sample["loss"].get("options", {}),
                                       "class_weights": sample["loss.options.class_weights"]}
        seen.add((config.loss.name, tuple(config.loss.options["class_weights"]), config.data.crop))
    assert len(seen) >= 6  # of 8 combinations, so every choice was decoded at least once


def test_random_sampler_distributions(tmp_path):
    space = make_space(tmp_path, """\
        training.epochs: {int: [1, 1000], log: true}
        training.eval_every: {int: [1, 3]}
        optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
        optimizer.weight_decay: {uniform: [0.0, 1.0], step: 0.25}
        scheduler.gamma: {uniform: [0.5, 1.0]}
        scheduler.name: {choice: [cosine, step]}
        scheduler.step_size: {int: [10, 40], step: 10, when: {scheduler.name: step}}
        """)
    rng = np.random.default_rng(0)
    draws = [sample_random(space, rng) for _ in range(400)]
    epochs = [d["training.epochs"] for d in draws]
    assert all(type(e) is int and 1 <= e <= 1000 for e in epochs)
    assert 10 < statistics.median(epochs) < 100  # log-uniform: median near sqrt(1000) = 32, not 500
    assert {d["training.eval_every"] for d in draws} == {1, 2, 3}
    lrs = [d["optimizer.lr"] for d in draws]
    assert all(type(x) is float and 1e-4 <= x <= 1e-2 for x in lrs) and 3e-4 < statistics.median(lrs) < 3e-3
    assert {d["optimizer.weight_decay"] for d in draws} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(0.5 <= d["scheduler.gamma"] <= 1.0 for d in draws)
    for d in draws:
        assert ("scheduler.step_size" in d) == (d["scheduler.name"] == "step")
    assert {d["scheduler.step_size"] for d in draws if "scheduler.step_size" in d} == {10, 20, 30, 40}
    for d in draws[:20]:
        apply_sample(space.base_tree, d)


def test_chained_conditions(tmp_path):
    space = make_space(tmp_path, """\
        scheduler.gamma: {uniform: [0.1, 0.9], when: {scheduler.name: step}}
        scheduler.name: {choice: [cosine, step], when: {loss.name: ce_j}}
        loss.name: {choice: [ce, ce_j]}
        """)
    rng = np.random.default_rng(1)
    kinds = set()
    for _ in range(60):
        d = sample_random(space, rng)
        assert ("scheduler.name" in d) == (d["loss.name"] == "ce_j")
        assert ("scheduler.gamma" in d) == (d.get("scheduler.name") == "step")
        kinds.add(tuple(sorted(d)))
    assert len(kinds) == 3


def test_optuna_search_gets_decoded_flat_configs_and_can_be_saved(demo, tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=define_by_run(demo), metric="seg_mean", mode="max", sampler=TPESampler(seed=0))
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        assert set(config) >= {"data.crop", "optimizer.lr", "loss.name"}  # "." keys stay flat
        assert config["loss.options.class_weights"] in ([1, 10, 5], [1, 1, 1])  # decoded, not the JSON string
        apply_sample(demo.base_tree, config)
        searcher.on_trial_complete(f"t{i}", {"seg_mean": 0.1 * i, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert isinstance(restored._space, DefineByRun)
    assert "loss.name" in restored.suggest("t3")


def test_postprocess_study_samples_only_the_target_kinds_parameters():
    space = load_space("architectures")
    for kind, expected in (("tertiary", {"min_area", "hole_area"}),
                           ("mask_marker", {"min_area", "mask_threshold", "marker_threshold"})):
        function = postprocess_define_by_run(space, kind)
        study = optuna.create_study(sampler=TPESampler(seed=0))
        study.optimize(lambda trial, f=function: float(len(f(trial))), n_trials=5)
        assert all(set(t.params) == expected for t in study.trials)
        assert set(sample_random(space.postprocess.for_target_kind(kind), np.random.default_rng(0))) == expected
    with pytest.raises(UserInputError, match="the space trains mask_marker/tertiary models, not 'binary'"):
        postprocess_define_by_run(space, "binary")


def test_postprocess_study_without_parameters_for_a_kind(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(BASE + textwrap.dedent("""\
        parameters:
          model.name: {choice: [unet, u_se_resnet]}
          loss.name: {choice: [edge_bce], when: {model.name: u_se_resnet}}
        postprocess: {parameters: {mask_threshold: {uniform: [0.3, 0.7]}}}
        """))
    space = load_space(path)
    assert postprocess_define_by_run(space, "mask_marker").parameters.keys() == ["mask_threshold"]
    with pytest.raises(UserInputError, match="no postprocess parameter applies to tertiary models"):
        postprocess_define_by_run(space, "tertiary")


def test_space_without_postprocess_study(tmp_path):
    space = make_space(tmp_path, "data.crop: {choice: [64, 96]}\n")
    with pytest.raises(UserInputError, match="the space has no postprocess study"):
        postprocess_define_by_run(space, "tertiary")
    assert isinstance(apply_sample(space.base_tree, sample_random(space, np.random.default_rng(0))), TrainConfig)
