"""Sampling a search space: an Optuna define-by-run function, a plain random sampler, and applying a sample.

A sample is a flat dict of dotted keys to plain values, e.g. ``{"loss.name": "ce_j", "loss.options.j_weight":
0.03}``; conditional parameters whose condition does not hold are absent. Wiring into Ray Tune::

    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("demo", stores_dir="celltune-demo/stores")
    searcher = OptunaSearch(space=define_by_run(space), metric=space.objective.metric,
                            mode=space.objective.mode, sampler=TPESampler(seed=0))
    # in the trainable: config = apply_sample(space.base_tree, tune_config)

``OptunaSearch`` returns the define-by-run function's dict (it overrides the raw suggestions it captured, so
list choices arrive decoded) and splits keys only on "/", so the trial's config is the flat sample itself.
:class:`DefineByRun` is a plain picklable object because ``OptunaSearch.save`` pickles its space.

Nothing here computes: no torch import, only values drawn and placed in a tree.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.space import (
    Parameter,
    ParameterSet,
    SearchSpace,
    describe_validation_error,
    is_scalar,
    same_value,
)
from celltune.trainables.config import TrainConfig
from celltune.trainables.yaml_files import set_dotted_keys

if TYPE_CHECKING:
    import optuna


def encoded_choices(param: Parameter) -> list[Any]:
    """Choices as Optuna takes them: as they are when all are scalars, otherwise every one as a JSON string."""
    if param.choice is None:
        raise TypeError(f"not a choice parameter: {param!r}")
    if all(is_scalar(c) for c in param.choice):
        return list(param.choice)
    return [json.dumps(c, sort_keys=True) for c in param.choice]


def decode_choice(param: Parameter, encoded: Any) -> Any:
    """The choice value behind ``encoded`` (a copy, so callers may change it)."""
    for value, code in zip(param.choice or [], encoded_choices(param), strict=True):
        if type(code) is type(encoded) and code == encoded:
            return copy.deepcopy(value)
    raise ValueError(f"{encoded!r} is not one of the encoded choices {encoded_choices(param)}")


def suggest(trial: optuna.Trial, name: str, param: Parameter) -> Any:
    """Draw ``param`` from an Optuna trial under ``name``; returns the decoded value."""
    if param.choice is not None:
        return decode_choice(param, trial.suggest_categorical(name, encoded_choices(param)))
    low, high = param.bounds
    if param.kind == "int":
        return trial.suggest_int(name, int(low), int(high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(name, low, high, step=param.step, log=param.kind == "loguniform")


class DefineByRun:
    """Define-by-run space for Optuna / ``OptunaSearch(space=...)``: samples the active parameters in order.

    Returns the sample (decoded values by dotted key). Picklable, unlike a closure.
    """

    def __init__(self, parameters: ParameterSet) -> None:
        self.parameters = parameters

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, param in self.parameters:
            if self.parameters.is_active(key, values):
                values[key] = suggest(trial, key, param)
        return values

    def __repr__(self) -> str:
        return f"DefineByRun({', '.join(self.parameters.keys())})"


def define_by_run(space: SearchSpace) -> DefineByRun:
    """The training parameters of ``space`` as an Optuna define-by-run function."""
    return DefineByRun(space.parameters)


def postprocess_define_by_run(space: SearchSpace, target_kind: str) -> DefineByRun:
    """The post-processing study of ``space`` for a model of ``target_kind`` (only the parameters it accepts).

    Raises:
        UserInputError: the space has no post-processing study, trains no ``target_kind`` model, or none of its
            parameters fits ``target_kind``.
    """
    return DefineByRun(_postprocess_parameters(space, target_kind))


def _postprocess_parameters(space: SearchSpace, target_kind: str) -> ParameterSet:
    if space.postprocess is None:
        raise UserInputError(f"{space.source or space.name}: the space has no postprocess study")
    if target_kind not in space.target_kinds:
        raise UserInputError(f"{space.source or space.name}: the space trains {'/'.join(space.target_kinds)} models, "
                             f"not {target_kind!r}")
    parameters = space.postprocess.for_target_kind(target_kind)
    if not len(parameters):
        raise UserInputError(f"{space.source or space.name}: no postprocess parameter applies to {target_kind} models")
    return parameters


def sample_random(space: SearchSpace | ParameterSet, rng: np.random.Generator) -> dict[str, Any]:
    """One uniformly random sample (log-uniform for loguniform and log ints): the baseline to TPE.

    Args:
        space: a loaded space (its training parameters) or a ParameterSet, e.g. ``study.for_target_kind(kind)``.
        rng: the generator, e.g. ``np.random.default_rng(seed)``; the same seed gives the same samples.

    Returns:
        Dotted key -> plain Python value, conditional parameters only when their condition holds.
    """
    parameters = space.parameters if isinstance(space, SearchSpace) else space
    values: dict[str, Any] = {}
    for key, param in parameters:
        if parameters.is_active(key, values):
            values[key] = _draw(param, rng)
    return values


def _draw(param: Parameter, rng: np.random.Generator) -> Any:
    if param.choice is not None:
        return copy.deepcopy(param.choice[int(rng.integers(len(param.choice)))])
    low, high = param.bounds
    if param.kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    if param.kind == "int" and param.log:
        # Optuna's convention: uniform in log space over [low - 0.5, high + 0.5], then rounded.
        value = round(math.exp(rng.uniform(math.log(low - 0.5), math.log(high + 0.5))))
        return int(min(max(value, low), high))
    if param.step is not None:
        count = round((high - low) / param.step)
        value = low + param.step * int(rng.integers(count + 1))
        return int(value) if param.kind == "int" else float(min(value, high))
    if param.kind == "int":
        return int(rng.integers(int(low), int(high) + 1))
    return float(rng.uniform(low, high))


def encode_sample(parameters: ParameterSet, sample: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The sample as Optuna stores it (list choices as JSON strings), checked against the space.

    Raises:
        UserInputError: a key that is not a parameter, a missing active or a set inactive parameter, a value
            outside its choices or range (one line, starting with ``where``).
    """
    for key in sample:
        if key not in parameters:
            raise UserInputError(f"{where}: {key!r} is not a parameter of the space "
                                 f"(parameters: {', '.join(parameters.keys())})")
    encoded: dict[str, Any] = {}
    for key, param in parameters:
        active = parameters.is_active(key, sample)
        if active and key not in sample:
            raise UserInputError(f"{where}: {key} is missing (sampled when {_condition(param)})")
        if not active and key in sample:
            raise UserInputError(f"{where}: {key} is set but its condition {_condition(param)} does not hold")
        if active:
            encoded[key] = _encode_value(param, sample[key], f"{where}: {key}")
    return encoded


def _condition(param: Parameter) -> str:
    return ", ".join(f"{k} in {list(v)}" for k, v in param.conditions().items()) or "always"


def _encode_value(param: Parameter, value: Any, where: str) -> Any:
    if param.choice is not None:
        for choice, code in zip(param.choice, encoded_choices(param), strict=True):
            if same_value(choice, value):
                return code
        raise UserInputError(f"{where}: {value!r} is not one of the choices {param.choice}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserInputError(f"{where}: {value!r} is not a finite number")
    low, high = param.bounds
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    if not low - slack <= value <= high + slack:
        raise UserInputError(f"{where}: {value!r} lies outside [{low:g}, {high:g}]")
    if param.kind == "int":
        if value != int(value):
            raise UserInputError(f"{where}: {value!r} is not a whole number")
        return int(value)
    return min(max(float(value), low), high)


def apply_sample(base: Mapping[str, Any] | TrainConfig, sample: Mapping[str, Any], *,
                 source: str = "sampled config") -> TrainConfig:
    """The training config of one trial: ``sample`` (dotted keys) applied onto ``base``, validated.

    Args:
        base: the base training config, as a tree (``space.base_tree``) or a TrainConfig.
        sample: what :class:`DefineByRun` or :func:`sample_random` returned (Tune's trial config).
        source: names the origin in error messages.

    Raises:
        UserInputError: the result is not a valid TrainConfig (one line with the key and the problem).
    """
    tree = base.model_dump(mode="json") if isinstance(base, TrainConfig) else base
    try:
        return TrainConfig.model_validate(set_dotted_keys(tree, sample, source=source))
    except ValidationError as exc:
        raise UserInputError(f"{source}: {describe_validation_error(exc, TrainConfig)}") from None
