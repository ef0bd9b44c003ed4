"""Search-space files: typed YAML over the training config, loaded and checked before any trial starts.

A space file names the training settings to tune as dotted key paths into
:class:`~celltune.trainables.config.TrainConfig` and says how to sample each one::

    name: demo                        # default: the file name without .yaml
    description: what the study asks
    base: demo_train.yaml             # a base training config file (path relative to this file), or
    base_config: {data: {...}, ...}   # the base training config inline (not both; the caller may pass one)
    objective: {metric: seg_mean, mode: max}
    trials: 4                         # Tune samples
    early_stopping: {grace_period: 1, reduction_factor: 2}   # ASHA, in evaluations (null: no early stopping);
                                      # grace_minutes instead when trials have training.max_minutes
    parameters:
      data.crop: {choice: [64, 96]}
      optimizer.lr: {loguniform: [1.0e-4, 1.0e-3]}
      optimizer.weight_decay: {uniform: [0.0, 0.05], step: 0.01}
      scheduler.name: {choice: [constant, cosine, warm_restarts]}
      scheduler.t0: {int: [5, 20], when: {scheduler.name: warm_restarts}}
      scheduler.eta_min: {loguniform: [1.0e-7, 1.0e-5], when: {scheduler.name: [cosine, warm_restarts]}}
      loss.name: {choice: [ce, ce_j]}
      loss.options.j_weight: {loguniform: [0.01, 0.1], when: {loss.name: ce_j}}
      loss.options.class_weights: {choice: [[1, 10, 5], [1, 5, 5], [1, 1, 1]]}
    postprocess:                      # optional second study on cached probabilities, per trained model
      trials: 30
      parameters: {min_area: {int: [4, 400], log: true}, hole_area: {int: [0, 200]}}

Parameter kinds (exactly one per parameter):

- ``choice: [v1, v2, ...]``: any YAML values, including lists and mappings (class weights, a whole section);
  non-scalar choices reach Optuna as JSON strings and are decoded after sampling.
- ``uniform: [low, high]`` floats, optional ``step``; ``loguniform: [low, high]`` with ``low > 0``.
- ``int: [low, high]`` inclusive, optional ``step`` or ``log: true`` (``low >= 1``).

``when: {key: value}`` or ``{key: [v1, v2]}`` (any of) makes a parameter conditional: it is sampled only when
every named parameter was sampled with one of the listed values, otherwise the base config's value stays. A
``when`` may only name choice parameters with scalar values; chains are allowed, cycles are not.

A key may point into a section (``loss.options.j_weight``) or at a whole section (``loss`` with mapping choices,
which replaces the section); shallower keys are applied first. Under the free dict fields (``model.options``,
``loss.options``, ``postprocess``) the names are checked against the registered options of every model and loss
the parameter can be sampled with. Post-processing parameters (``postprocess.<name>`` or the ``postprocess``
study) must belong to the target kind of such a model; in the study, a parameter is sampled only for models
whose target kind has it.

The shipped spaces' base configs list their stores as ``<stores>/<dataset>.zarr``: pass ``stores_dir`` (or
``overrides={"data.stores": [...]}``) to :func:`load_space` to point them at real stores.

Checks at load, each failing with one line naming the file and the key (:class:`UserInputError`): the file's
own structure, unknown key paths, bad ranges (``low >= high``, ``loguniform`` or ``log`` with ``low <= 0``, a
step that does not divide the range), empty or repeated choices, a ``when`` naming a parameter not in the space
or a value it cannot take, cycles and conditions that can never hold, and finally every choice value and
every range end applied onto the base config (with the values of its conditions, for every model and loss it
can meet) must validate as a TrainConfig whose model and loss accept their options (built on the meta device)
and agree on the target kind. Sizes that must fit the model (crop multiples) are the trainer's check.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from celltune.data_prep.common import UserInputError, did_you_mean
from celltune.trainables.config import TrainConfig
from celltune.trainables.yaml_files import describe_validation_error, read_yaml, set_dotted_keys

logger = logging.getLogger(__name__)

SPACES_DIR = Path(__file__).resolve().parent
STORES_PLACEHOLDER = "<stores>"
# Keys whose values decide which model and loss are built, so every combination of them is checked.
STRUCTURAL_KEYS = frozenset({"model", "model.name", "model.options", "model.options.target_kind", "loss", "loss.name"})
MAX_SCENARIOS = 256


def is_scalar(value: Any) -> bool:
    """True for the values Optuna takes as categorical choices as they are (None, bool, int, float, str)."""
    return value is None or isinstance(value, str | int | float | bool)


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (YAML ``true`` is not ``1``)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


# ---------------------------------------------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Parameter(_Strict):
    """One tuned value: a choice, a (log-)uniform float range or an integer range, optionally conditional."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = Field(None, alias="int")
    log: bool = False
    step: float | None = Field(None, gt=0)
    when: dict[str, Any] = Field(default_factory=dict)

    @property
    def kind(self) -> Literal["choice", "uniform", "loguniform", "int"]:
        if self.choice is not None:
            return "choice"
        if self.uniform is not None:
            return "uniform"
        if self.loguniform is not None:
            return "loguniform"
        return "int"

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a range parameter."""
        value = self.uniform or self.loguniform or self.int_range
        if value is None:
            raise TypeError("a choice parameter has no bounds")
        return value

    def test_values(self) -> list[Any]:
        """The values checked against the base config at load: every choice, or both ends of a range."""
        return list(self.choice) if self.choice is not None else list(self.bounds)

    def conditions(self) -> dict[str, tuple[Any, ...]]:
        """``when`` with every value as a tuple of allowed values."""
        return {key: tuple(value) if isinstance(value, list) else (value,) for key, value in self.when.items()}

    @model_validator(mode="after")
    def _check(self) -> Parameter:
        kinds = (("choice", self.choice), ("uniform", self.uniform), ("loguniform", self.loguniform),
                 ("int", self.int_range))
        given = [name for name, value in kinds if value is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, uniform, loguniform, int (got {', '.join(given) or 'none'})")
        if self.log and self.kind != "int":
            raise ValueError("log: true only applies to int ranges (use loguniform for floats)")
        if self.step is not None and self.kind not in ("uniform", "int"):
            raise ValueError(f"step only applies to uniform and int ranges, not {self.kind}")
        if self.choice is not None:
            _check_choices(self.choice)
        else:
            _check_range(self)
        for key, value in self.when.items():
            if isinstance(value, list) and not value:
                raise ValueError(f"when: {key} lists no values")
        return self


def _check_choices(choices: list[Any]) -> None:
    if not choices:
        raise ValueError("choice is empty")
    for a, b in itertools.combinations(choices, 2):
        if a == b:
            raise ValueError(f"choice lists {a!r} twice" if same_value(a, b) else f"choice values {a!r} and {b!r} "
                             "are equal; keep one")


def _check_range(param: Parameter) -> None:
    low, high = param.bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{param.kind}: bounds must be finite, got [{low}, {high}]")
    if low >= high:
        raise ValueError(f"{param.kind}: low {low} must be below high {high}")
    if param.kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform: low {low} must be > 0")
    if param.kind == "int" and param.log and low < 1:
        raise ValueError(f"int with log: true: low {low} must be >= 1")
    if param.step is None:
        return
    if param.kind == "int":
        if param.step != int(param.step):
            raise ValueError(f"int: step {param.step:g} must be a whole number")
        if param.log and param.step != 1:
            raise ValueError("int: step and log: true cannot be combined")
    intervals = (high - low) / param.step
    if abs(intervals - round(intervals)) > 1e-9 * max(1.0, abs(intervals)):
        raise ValueError(f"{param.kind}: step {param.step:g} does not divide [{low}, {high}]")


def _check_objective(source: str, objective: Objective, dataset_names: list[str]) -> None:
    """The objective must be a score the trials report, or Tune fails only after the first trial has trained."""
    from celltune.trainables.train_loop import reported_scores

    known = reported_scores(dataset_names)
    if objective.metric not in known:
        hint = f"{suggestion} " if (suggestion := did_you_mean(objective.metric, known)) else ""
        raise UserInputError(f"{source}: objective.metric {objective.metric!r} is not a score the trials report; "
                             f"{hint}choose seg_mean, iou_mean or <score>/<dataset> with score one of seg, iou, "
                             f"precision@0.5, recall@0.5, are (best/... for the best so far)")


class Objective(_Strict):
    """What Tune optimizes: a metric the trainable reports, maximized or minimized, and optionally a latency
    bound on what may be registered (:mod:`celltune.search_spaces.cost_bound`)."""

    metric: str = "seg_mean"
    mode: Literal["max", "min"] = "max"
    max_gmac: float | None = Field(None, gt=0, description="register the best trial whose network costs at most "
                                                           "this many convolution GMac per 512x512 frame")


class EarlyStopping(_Strict):
    """ASHA settings counted in evaluations (one reported result per ``training.eval_every`` epochs), or in
    minutes of training when the base config gives trials a wall-time budget (``training.max_minutes``): trials
    are then compared at equal time, not at equal evaluation counts that slower trials reach later."""

    grace_period: PositiveInt = 1
    grace_minutes: float | None = Field(
        None, gt=0.0, description="for time-budgeted trials: minutes before the first cut (default: a quarter of "
                                  "the budget)")
    reduction_factor: float = Field(2.0, gt=1.0)


class PostprocessStudyFile(_Strict):
    trials: PositiveInt = 30
    parameters: dict[str, Parameter] = Field(min_length=1)
    ensemble_members: PositiveInt = Field(1, description="the largest ensemble of the best trials to try; 1: the "
                                                         "single best model")
    tta: bool = Field(False, description="also try test-time augmentation (8x the inference time)")


class SpaceFile(_Strict):
    """A search-space file as written; :func:`load_space` turns it into a checked :class:`SearchSpace`."""

    name: str | None = None
    description: str = ""
    base: str | None = None
    base_config: dict[str, Any] | None = None
    objective: Objective = Objective()
    trials: PositiveInt = 20
    early_stopping: EarlyStopping | None = EarlyStopping()
    parameters: dict[str, Parameter] = Field(min_length=1)
    points: list[dict[str, Any]] = Field(default_factory=list,
                                         description="samples the search evaluates first, e.g. one per architecture")
    postprocess: PostprocessStudyFile | None = None

    @model_validator(mode="after")
    def _one_base(self) -> SpaceFile:
        if self.base is not None and self.base_config is not None:
            raise ValueError("give base or base_config, not both")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Checked spaces
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterSet:
    """Parameters in sampling order: every parameter comes after the ones its ``when`` names."""

    entries: tuple[tuple[str, Parameter], ...]

    def __iter__(self) -> Iterator[tuple[str, Parameter]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return any(key == k for k, _ in self.entries)

    def __getitem__(self, key: str) -> Parameter:
        for k, param in self.entries:
            if k == key:
                return param
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [k for k, _ in self.entries]

    def is_active(self, key: str, values: Mapping[str, Any]) -> bool:
        """Whether ``key`` is sampled given the values sampled so far (its conditions' keys come first)."""
        return all(k in values and any(same_value(values[k], v) for v in allowed)
                   for k, allowed in self[key].conditions().items())

    def ancestors(self, key: str) -> set[str]:
        """Every parameter ``key``'s conditions depend on, directly or through other conditions."""
        found: set[str] = set()
        todo = list(self[key].when)
        while todo:
            k = todo.pop()
            if k not in found:
                found.add(k)
                todo.extend(self[k].when)
        return found

    def subset(self, keys: set[str]) -> ParameterSet:
        """Only ``keys``; a parameter whose condition names a dropped key is never active."""
        return ParameterSet(tuple((k, p) for k, p in self.entries if k in keys))

    @classmethod
    def build(cls, parameters: Mapping[str, Parameter], where: str) -> ParameterSet:
        """Check every ``when`` and order the parameters; ``where`` prefixes error messages."""
        params = dict(parameters)
        for key, param in params.items():
            canonical: dict[str, Any] = {}
            for cond_key, allowed in param.conditions().items():
                target = params.get(cond_key)
                if target is None:
                    suggestion = did_you_mean(cond_key, [k for k in params if k != key])
                    hint = f"; {suggestion}" if suggestion else ""
                    raise UserInputError(f"{where}.{key}: when names {cond_key!r}, which is not a parameter of the "
                                         f"space{hint}")
                if target.choice is None or not all(is_scalar(c) for c in target.choice):
                    raise UserInputError(f"{where}.{key}: when names {cond_key!r}, which is not a choice of plain "
                                         "values (str, number, bool)")
                picked = []
                for value in allowed:
                    match = [c for c in target.choice if same_value(c, value)]
                    if not match:
                        raise UserInputError(f"{where}.{key}: when {cond_key}={value!r} can never hold; "
                                             f"{cond_key} is one of {target.choice}")
                    picked.append(match[0])
                canonical[cond_key] = picked
            params[key] = param.model_copy(update={"when": canonical})
        return cls(_ordered(params, where))


def _ordered(params: dict[str, Parameter], where: str) -> tuple[tuple[str, Parameter], ...]:
    """Stable topological order (file order wherever the conditions allow)."""
    placed: list[str] = []
    remaining = list(params)
    while remaining:
        ready = next((k for k in remaining if all(dep in placed for dep in params[k].when)), None)
        if ready is None:
            raise UserInputError(f"{where}: the when conditions of {', '.join(remaining)} form a cycle")
        placed.append(ready)
        remaining.remove(ready)
    return tuple((k, params[k]) for k in placed)


@dataclass(frozen=True)
class PostprocessStudy:
    """The post-processing study run on each trained model's cached probabilities."""

    trials: int
    parameters: ParameterSet
    ensemble_members: int = 1  # the largest ensemble of the best trials tried (1: the best model alone)
    tta: bool = False  # test-time augmentation as another choice

    @property
    def chooses_model(self) -> bool:
        """Whether the study also chooses between the single best model, ensembles and TTA."""
        return self.ensemble_members > 1 or self.tta

    def for_target_kind(self, target_kind: str) -> ParameterSet:
        """The parameters that the post-processing of ``target_kind`` models accepts."""
        from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS

        accepted = set(DEFAULT_POSTPROCESS_PARAMS.get(target_kind, {}))
        return self.parameters.subset({k for k in self.parameters.keys() if k in accepted})


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, checked search space over the training config ``base_tree``.

    Attributes:
        name: the space's name.
        description: free text.
        source: the file it was read from.
        base_tree: the base training config as a plain tree (what sampled values are applied onto).
        objective: metric and mode for Tune.
        trials: number of Tune samples.
        early_stopping: ASHA settings in evaluations, or None for none.
        parameters: the tuned training parameters in sampling order.
        postprocess: the post-processing study, or None.
        target_kinds: the target kinds of the models the space can train.
        points: samples (dotted key -> value) evaluated before the sampler's own, checked against the space.
    """

    name: str
    description: str
    source: Path | None
    base_tree: dict[str, Any]
    objective: Objective
    trials: int
    early_stopping: EarlyStopping | None
    parameters: ParameterSet
    postprocess: PostprocessStudy | None
    target_kinds: tuple[str, ...]
    points: tuple[dict[str, Any], ...] = ()

    def with_threshold_trials(self, trials: int) -> SearchSpace:
        """The space with ``trials`` per dataset in its post-processing study (unchanged without a study)."""
        if self.postprocess is None:
            return self
        return replace(self, postprocess=replace(self.postprocess, trials=trials))

    def base_config(self) -> TrainConfig:
        """The base training config, validated."""
        return TrainConfig.model_validate(copy.deepcopy(self.base_tree))


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def shipped_spaces() -> dict[str, Path]:
    """Name -> path of the spaces shipped with celltune (``celltune.search_spaces/*.yaml``)."""
    return {path.stem: path for path in sorted(SPACES_DIR.glob("*.yaml"))}


def resolve_space_path(path_or_name: str | Path) -> Path:
    """An existing file, or the shipped space of that name.

    Raises:
        UserInputError: neither (with a suggestion among the shipped names).
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = shipped_spaces()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise UserInputError(f"{path}: search-space file not found")
    hint = f"; {suggestion}" if (suggestion := did_you_mean(path_or_name, shipped)) else ""
    raise UserInputError(f"unknown search space {str(path_or_name)!r}{hint} (shipped: {', '.join(shipped)}; "
                         "or give the path of a .yaml file)")


def load_space(
    path_or_name: str | Path,
    *,
    base: Mapping[str, Any] | TrainConfig | str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    stores_dir: str | Path | None = None,
) -> SearchSpace:
    """Read and check a search-space file (or a shipped space by name, see :func:`shipped_spaces`).

    Args:
        path_or_name: a space file, or the name of a shipped space such as ``"demo"``.
        base: a base training config (tree, TrainConfig or YAML file) used instead of the file's own.
        overrides: dotted keys set on the base config before the checks, e.g. ``{"data.stores": [...]}``.
        stores_dir: replaces the ``<stores>`` placeholder at the start of each ``data.stores`` entry.

    Raises:
        UserInputError: one line naming the file and the key for everything listed in the module docstring.
    """
    path = resolve_space_path(path_or_name)
    source = str(path)
    try:
        spec = SpaceFile.model_validate(read_yaml(path, "search space"))
    except ValidationError as exc:
        raise UserInputError(f"{source}: {describe_validation_error(exc, SpaceFile)}") from None

    for key in spec.parameters:
        check_key_path(key, f"{source}: parameters.{key}")
    parameters = ParameterSet.build(spec.parameters, f"{source}: parameters")
    post = None
    if spec.postprocess is not None:
        post = PostprocessStudy(spec.postprocess.trials,
                                ParameterSet.build(spec.postprocess.parameters, f"{source}: postprocess.parameters"),
                                ensemble_members=spec.postprocess.ensemble_members, tta=spec.postprocess.tta)


    tree = _base_tree(spec, path, base)
    if overrides:
        tree = set_dotted_keys(tree, overrides, source=f"{source}: overrides")
    if stores_dir is not None:
        tree = _fill_stores(tree, Path(stores_dir))
    try:
        base_config = TrainConfig.model_validate(copy.deepcopy(tree))
    except ValidationError as exc:
        problem = describe_validation_error(exc, TrainConfig)
        if spec.base_config is not None:  # in the user's words: the keys under base_config
            where = "base_config" if problem.startswith("file: ") else "base_config."
            raise UserInputError(f"{source}: {where}{problem.removeprefix('file')}") from None
        raise UserInputError(f"{source}: base config: {problem}") from None
    _check_objective(source, spec.objective, base_config.data.dataset_names)

    kinds = _SpaceChecker(source, tree, parameters).run()
    from celltune.search_spaces.sampling import apply_sample, encode_sample

    for index, point in enumerate(spec.points):
        encode_sample(parameters, point, f"{source}: points[{index}]")
        apply_sample(tree, point, source=f"{source}: points[{index}]")
    if post is not None:
        _check_postprocess_study(source, post, kinds)
    space = SearchSpace(
        name=spec.name or path.stem,
        description=spec.description,
        source=path,
        base_tree=tree,
        objective=spec.objective,
        trials=spec.trials,
        early_stopping=spec.early_stopping,
        parameters=parameters,
        postprocess=post,
        target_kinds=kinds,
        points=tuple(copy.deepcopy(point) for point in spec.points),
    )
    logger.debug("loaded search space %s (%d parameters) from %s", space.name, len(parameters), path)
    return space


def _base_tree(spec: SpaceFile, path: Path, base: Mapping[str, Any] | TrainConfig | str | Path | None
               ) -> dict[str, Any]:
    if isinstance(base, TrainConfig):
        return base.model_dump(mode="json")
    if isinstance(base, Mapping):
        return copy.deepcopy(dict(base))
    if base is not None:
        return read_yaml(Path(base), "training config")
    if spec.base is not None:
        return read_yaml(path.parent / spec.base, "training config")
    if spec.base_config is not None:
        return copy.deepcopy(spec.base_config)
    raise UserInputError(f"{path}: no base training config; set base or base_config, or pass one")


def _fill_stores(tree: dict[str, Any], stores_dir: Path) -> dict[str, Any]:
    data = tree.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("stores"), list):
        return tree
    stores = [str(stores_dir / str(s)[len(STORES_PLACEHOLDER):].lstrip("/"))
              if str(s).startswith(STORES_PLACEHOLDER) else s for s in data["stores"]]
    return {**tree, "data": {**data, "stores": stores}}


# ---------------------------------------------------------------------------------------------------------------
# Key paths
# ---------------------------------------------------------------------------------------------------------------

_FREE = object()  # marks a dict field: its keys are checked against the registries, not the schema


def _section_of(annotation: Any) -> Any:
    """The model class a field descends into, ``_FREE`` for a dict field, or None for a value."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    for arg in args or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    for arg in args or (annotation,):
        if typing.get_origin(arg) is dict or arg is dict:
            return _FREE
    return None


def check_key_path(key: str, where: str) -> None:
    """Raise unless ``key`` names a field of TrainConfig or a key below one of its dict fields."""
    parts = key.split(".")
    if any(not part for part in parts):
        raise UserInputError(f"{where}: empty part in the key path")
    section: Any = TrainConfig
    for i, part in enumerate(parts):
        if section is _FREE:
            return
        if section is None:
            raise UserInputError(f"{where}: {'.'.join(parts[:i])} is a value, not a section")
        fields = section.model_fields
        if part not in fields:
            parent = ".".join(parts[:i]) or "the training config"
            hint = f"; {suggestion}" if (suggestion := did_you_mean(part, fields)) else ""
            raise UserInputError(f"{where}: unknown key {part!r} in {parent}{hint} (keys: {', '.join(fields)})")
        section = _section_of(fields[part].annotation)


# ---------------------------------------------------------------------------------------------------------------
# Checking values against the base config
# ---------------------------------------------------------------------------------------------------------------


class _SpaceChecker:
    """Applies the space's values onto the base config and checks the result the way a trial would."""

    def __init__(self, source: str, tree: dict[str, Any], parameters: ParameterSet) -> None:
        self.source = source
        self.tree = tree
        self.parameters = parameters
        self.structural = {k for k in parameters.keys() if k in STRUCTURAL_KEYS}
        self.kinds: set[str] = set()

    def run(self) -> tuple[str, ...]:
        """Check every combination of model/loss choices, then every parameter value; return the target kinds."""
        structural = self._closure(self.structural)
        for scenario in self._scenarios(structural):
            self._check(scenario, "base config" if not scenario else "parameters " + _describe(scenario))
        for key, param in self.parameters:
            scenarios = [s for s in self._scenarios(self._closure(structural | {key}))
                         if self.parameters.is_active(key, s)]
            if not scenarios:
                raise UserInputError(f"{self.source}: parameters.{key}: its when conditions can never hold together")
            for scenario in scenarios:
                # A choice is enumerated with the rest, so the parameters that depend on it follow its value.
                values = [scenario.pop(key)] if param.choice is not None else param.test_values()
                for value in values:
                    context = f" with {_describe(scenario)}" if scenario else ""
                    self._check({**scenario, key: value}, f"parameters.{key}={value!r}{context}")
        return tuple(sorted(self.kinds))

    def _closure(self, keys: set[str]) -> set[str]:
        return keys.union(*(self.parameters.ancestors(k) for k in keys))

    def _scenarios(self, keys: set[str]) -> list[dict[str, Any]]:
        """Every assignment of the choice parameters in ``keys`` that sampling can produce (conditions honoured)."""
        assignments: list[dict[str, Any]] = [{}]
        for key, param in self.parameters:
            if key not in keys or param.choice is None:
                continue
            grown = []
            for values in assignments:
                if self.parameters.is_active(key, values):
                    grown.extend({**values, key: choice} for choice in param.choice)
                else:
                    grown.append(values)
            if len(grown) > MAX_SCENARIOS:
                logger.warning("%s: checking only %d of %d combinations involving %s",
                               self.source, MAX_SCENARIOS, len(grown), key)
                grown = grown[:MAX_SCENARIOS]
            assignments = grown
        return assignments

    def _check(self, values: dict[str, Any], label: str) -> None:

        try:
            tree = set_dotted_keys(self.tree, values, source="")
            config = TrainConfig.model_validate(tree)
        except ValidationError as exc:
            raise UserInputError(f"{self.source}: {label}: {describe_validation_error(exc, TrainConfig)}") from None
        except UserInputError as exc:
            raise UserInputError(f"{self.source}: {label}: {exc}") from None
        try:
            self._check_model_and_loss(config)
        except UserInputError as exc:
            raise UserInputError(f"{self.source}: {label}: {exc}") from None

    def _check_model_and_loss(self, config: TrainConfig) -> None:
        from celltune.trainables.compatibility import check_model_and_loss

        self.kinds.add(check_model_and_loss(config).target_kind)


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _check_postprocess_study(source: str, study: PostprocessStudy, kinds: tuple[str, ...]) -> None:
    from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS

    accepted = sorted({name for kind in kinds for name in DEFAULT_POSTPROCESS_PARAMS[kind]})
    for key, _ in study.parameters:
        if key not in accepted:
            hint = f"; {suggestion}" if (suggestion := did_you_mean(key, accepted)) else ""
            raise UserInputError(f"{source}: postprocess.parameters.{key}: not a post-processing parameter of "
                                 f"{'/'.join(kinds)} models{hint} (available: {', '.join(accepted)})")
