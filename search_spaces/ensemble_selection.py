"""How many of a search's best models to average, and whether to add test-time augmentation, chosen on cached
validation probabilities with the thresholds tuned for each choice.

The threshold study already caches every validation frame's probabilities for the best trial; averaging the
cached maps of the top-k trials is what their ensemble would predict (the ensemble architecture outputs the mean
probability), so k and TTA are chosen without retraining or re-predicting. Every choice gets its own tuned
thresholds (:func:`celltune.search_spaces.postprocess_study.tune_postprocess`), so the comparison is between
models used at their best. The scores are measured on the frames the thresholds were tuned on: optimistic for
every row alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.postprocess_study import PostprocessChoice, ValidationProbabilities, tune_postprocess
from celltune.search_spaces.space import ParameterSet


@dataclass(frozen=True)
class Candidate:
    """One trained model's validation probabilities, plain and (when predicted) with TTA."""

    label: str
    plain: ValidationProbabilities
    tta: ValidationProbabilities | None = None


@dataclass(frozen=True)
class EnsembleOption:
    """The top ``members`` candidates averaged, with or without TTA, at their tuned thresholds."""

    members: int
    tta: bool
    choice: PostprocessChoice

    @property
    def seg_mean(self) -> float:
        return float(self.choice.scores["seg_mean"])

    @property
    def label(self) -> str:
        what = "single best" if self.members == 1 else f"top-{self.members} ensemble"
        return f"{what}{' + TTA' if self.tta else ''}"


def mean_probabilities(parts: Sequence[ValidationProbabilities]) -> ValidationProbabilities:
    """The frame-by-frame mean of several models' probabilities (what their equal-weight ensemble predicts).

    Raises:
        UserInputError: models of different target kinds, or caches of different validation frames.
    """
    if not parts:
        raise UserInputError("an ensemble needs at least one member")
    first = parts[0]
    frames: dict[str, list] = {}
    for name, items in first.frames.items():
        frames[name] = []
        for index, (_, labels) in enumerate(items):
            maps = []
            for part in parts:
                if part.kind != first.kind or len(part.frames.get(name, [])) != len(items):
                    raise UserInputError(f"ensemble members disagree on {name}'s validation frames or target kind")
                maps.append(part.frames[name][index][0].astype(np.float32))
            frames[name].append((np.mean(maps, axis=0), labels))
    return ValidationProbabilities(first.kind, frames)


def choose_ensemble(candidates: Sequence[Candidate], parameters: ParameterSet, *, start_params: Mapping,
                    max_members: int, trials: int, seed: int = 0, costs: Sequence[float] | None = None,
                    max_cost: float | None = None,
                    show_progress: bool = False) -> tuple[EnsembleOption, list[EnsembleOption]]:
    """Every (k, TTA) option from 1 to ``max_members`` members (TTA where each candidate has TTA maps), each at
    its tuned thresholds; returns the best by tuned mean SEG (ties: fewer members, no TTA) and all options.

    Args:
        candidates: the trained models, best first (by their validation score).
        parameters, start_params, trials, seed, show_progress: as for ``tune_postprocess``.
        max_members: the largest ensemble tried (at most ``len(candidates)``).
        costs, max_cost: each candidate's cost per frame (GMac); an option costs its members' sum, 8x with TTA,
            and only options within ``max_cost`` may be chosen (the single best always may: the search's bound
            already admitted it).
    """
    if not candidates:
        raise UserInputError("ensemble selection: no candidates")
    if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 1:
        raise UserInputError(f"ensemble selection: max_members={max_members!r} must be a positive integer")
    options: list[EnsembleOption] = []
    with_tta = [False] + ([True] if all(c.tta is not None for c in candidates) else [])
    for count in range(1, min(max_members, len(candidates)) + 1):
        for tta in with_tta:
            maps = [c.tta if tta else c.plain for c in candidates[:count]]
            choice = tune_postprocess(mean_probabilities(maps), parameters, trials=trials,  # type: ignore[arg-type]
                                      start_params=start_params, seed=seed, show_progress=show_progress)
            options.append(EnsembleOption(count, tta, choice))
    def affordable(option: EnsembleOption) -> bool:
        if max_cost is None or costs is None or (option.members == 1 and not option.tta):
            return True
        return sum(costs[: option.members]) * (8 if option.tta else 1) <= max_cost

    best = max(filter(affordable, options), key=lambda o: (round(o.seg_mean, 6), -o.members, not o.tta))
    return best, options
