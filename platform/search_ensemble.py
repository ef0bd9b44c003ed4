"""After a search: the model to register, chosen among the single best trial, top-k ensembles and TTA.

Asked for by a space's ``postprocess: {ensemble_members: K, tta: true}``. The best trial's cached validation
probabilities are joined by those of the next best trials whose networks take the same input (target kind,
normalization, scale); every (k, TTA) option gets thresholds tuned for it
(:func:`celltune.search_spaces.ensemble_selection.choose_ensemble`), and the winner is written as a checkpoint
folder (the best trial's own, or an ``ensemble`` one) for registration.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from celltune.search_spaces.ensemble_selection import Candidate, EnsembleOption, choose_ensemble
from celltune.search_spaces.postprocess_study import ValidationProbabilities, predict_validation
from celltune.search_spaces.space import SearchSpace
from celltune.trainables.config import TrainConfig
from celltune.trainables.ensembles import write_ensemble_checkpoint
from celltune.trainables.model_card import BEST_WEIGHTS, ModelCard, load_model_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """The registered model's folder and the option that won, with every option for the record."""

    folder: Path
    chosen: EnsembleOption
    options: list[EnsembleOption]

    def table(self) -> dict[str, dict[str, float | int | bool]]:
        """Each option's scores by its label, as the search run records them."""
        return {o.label: {"members": o.members, "tta": o.tta, **o.choice.scores} for o in self.options}


def choose_model(trials, best, best_folder: Path, best_probabilities: ValidationProbabilities, space: SearchSpace,
                 scratch: Path, *, seed: int, show_progress: bool) -> ModelChoice:
    """Choose between the best trial alone, ensembles of the best trials, each with and without TTA.

    Args:
        trials: the search's ``TrialRow``s (with checkpoints); ``best`` the best one, whose checkpoint is at
            ``best_folder`` with its cached validation probabilities ``best_probabilities``.
        space: the space (its objective mode and ``postprocess`` study settings).
        scratch: where the other trials' checkpoints and an ensemble's folder are written.
    """
    study = space.postprocess
    assert study is not None
    best_model, best_card = load_model_folder(best_folder, weights_names=(BEST_WEIGHTS,))
    data = TrainConfig.model_validate(best_card.train_config).data

    def averageable(model) -> bool:  # single-frame, same-padded: what TTA and the ensemble architecture take
        spec = getattr(model, "spec", None)
        return spec is None or (spec.time_window == 1 and not spec.output_crop)

    def tta_maps(model, card: ModelCard) -> ValidationProbabilities | None:
        return predict_validation(model, card, data, tta=True, show_progress=show_progress) if study.tta else None

    if not averageable(best_model):  # a time-window or valid-padding best model stays alone, without TTA
        logger.info("the best trial's network cannot be averaged or flipped; it is registered alone")
        study = replace(study, ensemble_members=1, tta=False)
    candidates = [Candidate(best.trial_id, best_probabilities, tta_maps(best_model, best_card))]
    folders = [best_folder]
    chosen_trials = []  # the trials after the best that joined the candidates, in order
    sign = -1.0 if space.objective.mode == "max" else 1.0
    bound = space.objective.max_gmac
    others = sorted((t for t in trials if t is not best and t.checkpoint is not None and t.objective is not None
                     and (bound is None or (t.gmac is not None and t.gmac <= bound))),
                    key=lambda t: sign * t.objective)
    for trial in others:
        if len(candidates) >= study.ensemble_members:
            break
        try:
            folder = Path(trial.checkpoint.to_directory(str(scratch / trial.trial_id)))
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. pruned by the disk budget
            logger.info("trial %s left out of the ensemble: its checkpoint is gone (%s)", trial.trial_id, exc)
            continue
        model, card = load_model_folder(folder, weights_names=(BEST_WEIGHTS,))
        if (card.target_kind, card.normalization, card.scale) != (best_card.target_kind, best_card.normalization,
                                                                   best_card.scale) or not averageable(model):
            logger.info("trial %s left out of the ensemble: its network takes another input", trial.trial_id)
            continue
        plain = predict_validation(model, card, data, show_progress=show_progress)
        candidates.append(Candidate(trial.trial_id, plain, tta_maps(model, card)))
        folders.append(folder)
        chosen_trials.append(trial)
    costs = [t.gmac if t.gmac is not None else float("inf") for t in [best, *chosen_trials]]
    chosen, options = choose_ensemble(candidates, study.for_target_kind(best_card.target_kind),
                                      start_params=best_card.postprocess, max_members=study.ensemble_members,
                                      trials=study.trials, seed=seed, costs=costs,
                                      max_cost=space.objective.max_gmac, show_progress=show_progress)
    folder = best_folder
    if chosen.members == 1 and chosen.tta:  # the best model itself, its card saying to predict with TTA
        folder = scratch / "chosen-model"
        shutil.copytree(best_folder, folder)
        best_card.model_copy(update={"tta": True}).write(folder)
    elif chosen.members > 1:
        folder = scratch / "chosen-model"
        write_ensemble_checkpoint(folders[: chosen.members], folder, postprocess=chosen.choice.default,
                                  postprocess_per_dataset=chosen.choice.per_dataset, tta=chosen.tta,
                                  best={k: float(v) for k, v in chosen.choice.scores.items()})
    return ModelChoice(folder, chosen, options)
