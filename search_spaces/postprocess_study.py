"""Post-processing thresholds tuned per dataset on cached validation probabilities, with no retraining.

The thresholds that turn probabilities into instances (``min_area``, ``hole_area``, marker and watershed
settings) matter per dataset, as in the XB-Net paper's per-dataset grid search. Tuning them needs only the
network's outputs, so the best checkpoint predicts every validation frame once (:func:`predict_validation`),
the maps are cached (:meth:`ValidationProbabilities.save`), and a cheap seeded Optuna TPE study per dataset
(:func:`tune_postprocess`) searches the space's ``postprocess`` parameters for the highest CTC SEG::

    probabilities = predict_validation(model, card, config.data)
    parameters = space.postprocess.for_target_kind(probabilities.kind)
    choice = tune_postprocess(probabilities, parameters, trials=space.postprocess.trials,
                              start_params=card.postprocess, seed=0)
    choice.per_dataset["DIC-C2DH-HeLa"], choice.default, choice.scores["seg_mean"]

The starting thresholds are the first trial of every study and stay a candidate, so the tuned SEG is never
below the untuned one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from pydantic import ValidationError
from tqdm.auto import tqdm

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.sampling import DefineByRun, encoded_choices
from celltune.search_spaces.space import Parameter, ParameterSet, same_value
from celltune.trainables.config import DataConfig
from celltune.trainables.metrics import seg_counts, seg_score
from celltune.trainables.model_card import ModelCard
from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS, postprocess, target_kind
from celltune.trainables.yaml_files import describe_validation_error

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

Frame = tuple[np.ndarray, np.ndarray]  # (probabilities (C, H, W) or (C, Z, Y, X), reference labels)
FILE_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------------
# Cached probabilities
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class ValidationProbabilities:
    """A model's validation probability maps and the reference labels, per dataset.

    Attributes:
        kind: the model's target kind ("tertiary", "mask_marker" or "binary").
        frames: dataset name -> list of ``(probabilities (C, H, W) or (C, Z, Y, X), labels (H, W) or (Z, Y, X))``.
    """

    kind: str
    frames: dict[str, list[Frame]]

    def __post_init__(self) -> None:
        channels = target_kind(self.kind).channels
        for name, frames in self.frames.items():
            for index, (probs, labels) in enumerate(frames):
                where = f"validation probabilities {name}[{index}]"
                floating = np.issubdtype(probs.dtype, np.floating)
                if probs.ndim not in (3, 4) or probs.shape[0] != channels or not floating:
                    raise UserInputError(f"{where}: probabilities {probs.dtype} {probs.shape}; expected float "
                                         f"({channels}, H, W) or ({channels}, Z, Y, X) for {self.kind} models")
                if labels.shape != probs.shape[1:] or not np.issubdtype(labels.dtype, np.integer):
                    raise UserInputError(f"{where}: labels {labels.dtype} {labels.shape}; expected integer labels "
                                         f"of shape {probs.shape[1:]}")

    def save(self, path: Path) -> None:
        """Write a compressed ``.npz`` (no pickled objects) atomically: a temp file next to ``path``, then rename."""
        path = Path(path)
        datasets = list(self.frames.items())
        meta = {"format": FILE_FORMAT, "kind": self.kind,
                "datasets": [[name, len(frames)] for name, frames in datasets]}
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for d, (_, frames) in enumerate(datasets):
            for i, (probs, labels) in enumerate(frames):
                arrays[f"probs_{d}_{i}"] = probs
                arrays[f"labels_{d}_{i}"] = labels
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
        try:
            with handle:
                np.savez_compressed(handle, **arrays)
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ValidationProbabilities:
        """Read a file written by :meth:`save`.

        Raises:
            UserInputError: the file is missing or is not such a file.
        """
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"{path}: cached validation probabilities not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != FILE_FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {FILE_FORMAT}")
                frames = {str(name): [(data[f"probs_{d}_{i}"], data[f"labels_{d}_{i}"]) for i in range(int(count))]
                          for d, (name, count) in enumerate(meta["datasets"])}
                kind = str(meta["kind"])
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise UserInputError(f"{path}: not a cached validation probabilities file ({exc})") from None
        return cls(kind, frames)


def predict_validation(model: nn.Module, card: ModelCard, data_config: DataConfig, *,
                       device: str = "cpu", dtype: type[np.floating] = np.float16, tta: bool = False,
                       show_progress: bool = False) -> ValidationProbabilities:
    """Probabilities of every validation frame (or 3D slice) of every dataset, predicted whole as in validation.

    Frames are normalized the way the model was trained (its card's ``normalization`` wins over
    ``data_config``'s) and predicted full-frame with the model's output activation, like the training loop's
    ``evaluate``.

    Args:
        model: the trained network.
        card: the model's card (target kind, size multiple, normalization, scale per dataset).
        data_config: the stores and split configuration whose validation frames are predicted.
        device: where the model runs.
        dtype: stored probability dtype. float16 (default) halves the cache; it can only change pixels whose
            class scores lie within float16 rounding (about 5e-4) of each other.
        tta: average over the eight flips and quarter turns (:mod:`celltune.trainables.tta`).
        show_progress: show a tqdm bar over frames.

    Raises:
        UserInputError: bad stores or device.
    """
    from celltune.trainables.data import load_validation_frames
    from celltune.trainables.inference import activation_for
    from celltune.trainables.temporal_inference import predict_frame_probabilities, time_window_of

    kind, size_multiple, normalization = card.target_kind, card.size_multiple, card.normalization
    if normalization != data_config.normalization:
        logger.info("normalizing validation frames with %s as the model was trained (data config says %s)",
                    normalization, data_config.normalization)
        try:
            data_config = DataConfig.model_validate({**data_config.model_dump(), "normalization": normalization})
        except ValidationError as exc:
            raise UserInputError(f"model card: {describe_validation_error(exc)}") from None
    validation = load_validation_frames(data_config, time_window=time_window_of(model))
    scales = card.scale  # the factors the model was trained at, per dataset
    activation = activation_for(kind)
    frames: dict[str, list[Frame]] = {}
    total = sum(len(items) for items in validation.values())
    with tqdm(total=total, unit="frame", desc="validation probabilities",
              disable=None if show_progress else True) as bar:
        for name, items in validation.items():
            frames[name] = []
            for frame in items:
                previous = None if frame.window is None else frame.window[:-1]  # time-window models get windows
                probs = predict_frame_probabilities(model, frame.image, previous=previous,
                                                    scale=scales.get(name, 1.0), size_multiple=size_multiple,
                                                    activation=activation, device=device, tta=tta)[0]
                frames[name].append((probs.astype(dtype, copy=False), np.asarray(frame.labels)))
                bar.update()
    return ValidationProbabilities(kind, frames)


# ---------------------------------------------------------------------------------------------------------------
# Scoring and tuning
# ---------------------------------------------------------------------------------------------------------------


def seg_score_for(kind: str, probabilities: Sequence[Frame], params: Mapping[str, Any]) -> float:
    """CTC SEG of ``params`` over frames, pooled like ``evaluate`` (Jaccards and reference objects summed).

    Args:
        kind: the target kind, selecting the post-processing.
        probabilities: ``(probabilities, labels)`` per frame.
        params: post-processing parameters; missing ones take :data:`DEFAULT_POSTPROCESS_PARAMS`.

    Returns:
        SEG in [0, 1]; 0.0 when the frames hold no reference object.
    """
    return seg_score(seg_counts(labels, postprocess(kind, probs, **params)) for probs, labels in probabilities)


@dataclass(frozen=True)
class PostprocessChoice:
    """Tuned thresholds per dataset and for datasets not seen in tuning.

    Attributes:
        default: for unknown datasets: of the per-dataset winners and the starting thresholds, the one with
            the best mean SEG over all datasets (the starting thresholds on ties).
        per_dataset: dataset -> full post-processing parameters (starting values for untuned ones).
        scores: ``seg/<dataset>`` and ``seg_mean`` with the per-dataset thresholds, ``seg_untuned/<dataset>``
            and ``seg_untuned_mean`` with the starting ones, ``seg_default_mean`` with ``default``.
        studies: dataset -> the Optuna study (in memory, for plots).
    """

    default: dict[str, Any]
    per_dataset: dict[str, dict[str, Any]]
    scores: dict[str, float]
    studies: dict[str, optuna.Study] = field(repr=False)


def tune_postprocess(probabilities: ValidationProbabilities, parameters: ParameterSet, *, trials: int,
                     start_params: Mapping[str, Any], seed: int = 0,
                     show_progress: bool = False) -> PostprocessChoice:
    """One seeded TPE study per dataset maximizing SEG over the cached probabilities.

    Args:
        probabilities: cached validation maps (datasets without frames are skipped with a warning).
        parameters: the tuned parameters, e.g. ``space.postprocess.for_target_kind(probabilities.kind)``.
        trials: trials per dataset, the first being the starting thresholds.
        start_params: the thresholds the model was trained and validated with (the model card's
            ``postprocess``); missing ones take the defaults. Parameters not tuned keep these values.
        seed: the samplers' seed; the same seed and inputs give the same choice.
        show_progress: show a tqdm bar over all trials.

    Raises:
        UserInputError: no parameters, a parameter or starting value the target kind does not accept,
            ``trials < 1``, or no dataset with validation frames.
    """
    kind = probabilities.kind
    accepted = DEFAULT_POSTPROCESS_PARAMS[kind]
    if not len(parameters):
        raise UserInputError("post-processing study: no parameters to tune")
    for name in [*parameters.keys(), *start_params]:
        if name not in accepted:
            raise UserInputError(f"post-processing study: {name!r} is not a {kind} post-processing parameter "
                                 f"(available: {', '.join(sorted(accepted))})")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UserInputError(f"post-processing study: trials={trials!r} must be a positive integer")
    start = {**accepted, **start_params}
    for name, frames in probabilities.frames.items():
        if not frames:
            logger.warning("post-processing study: %s has no validation frames; skipped", name)
    datasets = {name: frames for name, frames in probabilities.frames.items() if frames}
    if not datasets:
        raise UserInputError("post-processing study: no dataset has validation frames")

    score = _MemoizedScore(kind, datasets)
    sample = DefineByRun(parameters)
    first = _start_trial(parameters, start)
    studies: dict[str, optuna.Study] = {}
    per_dataset: dict[str, dict[str, Any]] = {}
    with _quiet_optuna(), tqdm(total=trials * len(datasets), unit="trial", desc="post-processing study",
                               disable=None if show_progress else True) as bar:
        for name in datasets:
            study = optuna.create_study(direction="maximize", study_name=f"postprocess/{name}",
                                        sampler=optuna.samplers.TPESampler(seed=_dataset_seed(seed, name)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([f"seg/{name}"])  # the plots' axis label
            study.enqueue_trial(first)
            study.optimize(_objective(score, name, sample, start), n_trials=trials,
                           callbacks=[lambda _study, _trial: bar.update()])
            best = dict(study.best_trial.user_attrs["params"])
            per_dataset[name] = best if score(name, best) > score(name, start) else dict(start)
            studies[name] = study
            logger.info("post-processing %s: SEG %.4f -> %.4f with %s", name, score(name, start),
                        score(name, per_dataset[name]), per_dataset[name])

    candidates = [dict(start)] + [p for p in per_dataset.values()]
    means = [float(np.mean([score(name, params) for name in datasets])) for params in candidates]
    default = candidates[int(np.argmax(means))]  # argmax takes the first of equals: the starting thresholds
    scores = {f"seg/{name}": score(name, params) for name, params in per_dataset.items()}
    scores["seg_mean"] = float(np.mean([scores[f"seg/{name}"] for name in datasets]))
    scores.update({f"seg_untuned/{name}": score(name, start) for name in datasets})
    scores["seg_untuned_mean"] = float(np.mean([scores[f"seg_untuned/{name}"] for name in datasets]))
    scores["seg_default_mean"] = max(means)
    return PostprocessChoice(default=dict(default), per_dataset=per_dataset, scores=scores, studies=studies)


class _MemoizedScore:
    """SEG per (dataset, parameters), computed once: TPE repeats integer thresholds, and winners are rescored."""

    def __init__(self, kind: str, datasets: Mapping[str, list[Frame]]) -> None:
        self.kind = kind
        self.datasets = datasets
        self.cache: dict[tuple[str, str], float] = {}

    def __call__(self, dataset: str, params: Mapping[str, Any]) -> float:
        key = (dataset, json.dumps(params, sort_keys=True, default=str))
        if key not in self.cache:
            self.cache[key] = seg_score_for(self.kind, self.datasets[dataset], params)
        return self.cache[key]


def _objective(score: _MemoizedScore, dataset: str, sample: DefineByRun, start: Mapping[str, Any]
               ) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        params = {**start, **sample(trial)}
        trial.set_user_attr("params", params)
        return score(dataset, params)

    return objective


def _start_trial(parameters: ParameterSet, start: Mapping[str, Any]) -> dict[str, Any]:
    """The starting values Optuna can take as a fixed trial (encoded); values outside the space are sampled."""
    fixed: dict[str, Any] = {}
    decoded: dict[str, Any] = {}
    for key, param in parameters:
        if not parameters.is_active(key, decoded):
            continue
        encoded = _encode_if_inside(param, start[key])
        if encoded is None:
            logger.info("post-processing study: starting %s=%r lies outside the space; the first trial samples it",
                        key, start[key])
            continue
        fixed[key] = encoded
        decoded[key] = start[key]
    return fixed


def _encode_if_inside(param: Parameter, value: Any) -> Any | None:
    if param.choice is not None:
        for choice, code in zip(param.choice, encoded_choices(param), strict=True):
            if same_value(choice, value):
                return code
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    low, high = param.bounds
    if not low <= value <= high or (param.kind == "int" and value != int(value)):
        return None
    if param.step is not None:
        steps = (value - low) / param.step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
            return None
    return int(value) if param.kind == "int" else float(value)


def _dataset_seed(seed: int, dataset: str) -> int:
    """A per-dataset seed that does not change when datasets are added or reordered."""
    return (int(seed) * 1_000_003 + zlib.crc32(dataset.encode())) % 2**32


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; keep warnings only, and restore the caller's level."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
