"""Leave-one-dataset-out and the few-shot curve (`celltune leave-out`): how well does a universal model serve a
dataset it has not seen, and how many annotated frames does that dataset need?

For a recipe (a training config over several stores) and one of its datasets, the study

1. trains the recipe on the other datasets (or takes a given model as that universal model),
2. scores it on the left-out dataset's validation frames as it is (k = 0, zero-shot), at the recipe's
   resampling factor for that dataset and the model's default thresholds,
3. for each k, trains on k GT frames of the left-out dataset (``data.configuration: gt``,
   ``data.train_frames: k``, spread evenly over its sequences) twice at the same time budget: fine-tuned from the
   universal model and from scratch, each scored by its best validation SEG on the same frames.

Every training is an ordinary `celltune train` run, a child of one MLflow run that gets the table (CSV) and the
curve (PNG). The numbers answer "annotate or not, and how much" before anyone annotates.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celltune.data_prep.common import UserInputError
from celltune.trainables.config import InitConfig, TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "celltune-leave-out"
DEFAULT_SHOTS = "0,1,2,5,all"
ALL = None  # k = all of the left-out dataset's GT training frames


@dataclass(frozen=True)
class Shot:
    """One k of the curve: SEG from the universal model and from scratch (None where not run)."""

    k: int | None
    frames: int
    from_universal: float | None
    from_scratch: float | None

    @property
    def label(self) -> str:
        return "all" if self.k is ALL else str(self.k)


@dataclass(frozen=True)
class ShotBudget:
    """What each fine-tuning and each scratch run may spend: wall minutes, or optimizer steps (the same work on
    a busy machine as on a quiet one, so a study's numbers do not depend on what else ran beside it)."""

    minutes: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if (self.minutes is None) == (self.steps is None):
            raise UserInputError("a leave-out budget is --minutes or --steps, one of them")
        if self.minutes is not None and not self.minutes > 0:
            raise UserInputError(f"--minutes {self.minutes}: must be > 0")
        if self.steps is not None and self.steps < 1:
            raise UserInputError(f"--steps {self.steps}: must be >= 1")

    def applied_to(self, training):
        """``training`` (a TrainingConfig) spending this budget: whole epochs covering the steps, no clock."""
        if self.minutes is not None:
            return training.model_copy(update={"max_minutes": self.minutes})
        per_epoch = training.steps_per_epoch or min(self.steps, 10)
        return training.model_copy(update={"max_minutes": None, "steps_per_epoch": per_epoch,
                                           "epochs": -(-self.steps // per_epoch)})

    def describe(self) -> str:
        return f"{self.minutes:g} training minutes" if self.minutes is not None else f"{self.steps} optimizer steps"


@dataclass(frozen=True)
class LeaveOutReport:
    dataset: str
    universal: str
    budget: ShotBudget
    shots: tuple[Shot, ...]

    def format(self) -> str:
        lines = [f"left out: {self.dataset}; universal model: {self.universal}; {self.budget.describe()} "
                 "per fine-tuning and per scratch run",
                 "| k (GT frames) | frames | SEG from the universal model | SEG from scratch |", "|---|---|---|---|"]
        for shot in self.shots:
            lines.append(f"| {shot.label} | {shot.frames} | {_fmt(shot.from_universal)} | {_fmt(shot.from_scratch)} |")
        return "\n".join(lines)

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["dataset", "k", "frames", "seg_from_universal", "seg_from_scratch"])
        for shot in self.shots:
            writer.writerow([self.dataset, shot.label, shot.frames, _cell(shot.from_universal),
                             _cell(shot.from_scratch)])
        return buffer.getvalue()


def parse_shots(text: str) -> list[int | None]:
    """``"0,1,2,5,all"`` -> ``[0, 1, 2, 5, None]``, sorted, each once.

    Raises:
        UserInputError: an entry that is neither a non-negative integer nor ``all``, or no entry.
    """
    shots: set[int | None] = set()
    for item in (part.strip() for part in text.split(",")):
        if item == "all":
            shots.add(ALL)
        elif item.isdigit():
            shots.add(int(item))
        else:
            raise UserInputError(f"--shots {text}: {item!r} is not a number of frames or 'all'")
    if not shots:
        raise UserInputError(f"--shots {text!r}: name at least one k")
    return sorted(shots, key=lambda k: float("inf") if k is ALL else k)


def shot_config(recipe: TrainConfig, dataset: str, k: int | None, budget: ShotBudget | float,
                init: str | None) -> TrainConfig:
    """The recipe on ``dataset`` alone, k of its GT frames, trained for ``budget`` (a number: minutes), from
    ``init`` or scratch."""
    budget = budget if isinstance(budget, ShotBudget) else ShotBudget(minutes=budget)
    data = recipe.data.restricted_to([dataset]).model_copy(update={"configuration": "gt", "train_frames": k})
    return recipe.model_copy(update={
        "data": data, "init": None if init is None else InitConfig(model=init),
        "training": budget.applied_to(recipe.training),
    })


def universal_config(recipe: TrainConfig, dataset: str) -> TrainConfig:
    """The recipe without ``dataset``."""
    names = [name for name in recipe.data.dataset_names if name != dataset]
    return recipe.model_copy(update={"data": recipe.data.restricted_to(names)})


def check_study(recipe: TrainConfig, dataset: str, shots: list[int | None]) -> int:
    """Fail before anything runs; returns the number of GT training frames of ``dataset`` (what ``all`` means).

    Raises:
        UserInputError: ``dataset`` is not one of the recipe's, it is the recipe's only dataset, it has no
            validation frames to score, or a k exceeds its GT training frames.
    """
    from celltune.platform.train_run import check_config
    from celltune.trainables.data import dataset_frames

    names = recipe.data.dataset_names
    if dataset not in names:
        raise UserInputError(f"--dataset {dataset}: not one of the config's datasets ({', '.join(names)})")
    if len(names) < 2:
        raise UserInputError(f"--dataset {dataset}: the config trains on it alone; leaving it out leaves nothing")
    store = recipe.data.stores[names.index(dataset)]
    if not Path(store).is_dir():
        raise UserInputError(f"data.stores: {store} does not exist (run `celltune data prep` first)")
    available = len(dataset_frames(Path(store), "gt", "train"))
    if not dataset_frames(Path(store), "gt", "val"):
        raise UserInputError(f"{store}: no GT validation frames to score the left-out dataset on")
    largest = max((k for k in shots if k is not ALL), default=0)
    if largest > available:
        raise UserInputError(f"--shots: k={largest} GT frames asked for, but {dataset} has only {available} GT "
                             f"training frames ({store})")
    check_config(universal_config(recipe, dataset))
    return available


def run_leave_out(recipe: TrainConfig, dataset: str, *, shots: list[int | None], budget: ShotBudget | float,
                  storage_path: Path, name: str, universal: str | None = None, tracking_uri: str | None = None,
                  experiment: str = DEFAULT_EXPERIMENT,
                  on_shot: Callable[[Shot], None] | None = None) -> tuple[LeaveOutReport, str]:
    """Run the study; returns the report and the MLflow run holding it.

    Args:
        recipe: the training config whose datasets include ``dataset``.
        dataset: the dataset to leave out.
        shots: the k values (:func:`parse_shots`); 0 is the zero-shot score.
        budget: training budget of every fine-tuning and scratch run (a number: minutes).
        storage_path: Ray storage of the runs (``<name>-universal``, ``<name>-k<k>-universal``, ...).
        name: the study's MLflow run name and the prefix of its runs.
        universal: a model (``models:/...`` or a checkpoint folder) to use instead of training the recipe on the
            other datasets.
        on_shot: called with each finished k.

    Raises:
        UserInputError: see :func:`check_study`; a run name already taken under ``storage_path``.
    """
    import mlflow

    from celltune.platform.tracking import RunLogger, absolute_tracking_uri, default_tracking_uri
    from celltune.platform.tracking import experiment_id as experiment_id_of
    from celltune.platform.train_run import run_training

    budget = budget if isinstance(budget, ShotBudget) else ShotBudget(minutes=budget)
    available = check_study(recipe, dataset, shots)
    storage_path = Path(storage_path).resolve()
    taken = sorted(p.name for p in storage_path.glob(f"{name}-*")) if storage_path.is_dir() else []
    if taken:
        raise UserInputError(f"--name {name}: runs {', '.join(taken[:3])} already exist under {storage_path}; "
                             "choose another name")
    tracking_uri = absolute_tracking_uri(tracking_uri or default_tracking_uri())
    client = mlflow.MlflowClient(tracking_uri)
    study_run = client.create_run(experiment_id_of(client, experiment, tracking_uri), run_name=name, tags={
        "mlflow.runName": name, "celltune.kind": "leave-out", "celltune.left_out": dataset}).info.run_id
    run = RunLogger(tracking_uri, study_run)
    run.log_params({"left_out": dataset, "shots": ",".join("all" if k is ALL else str(k) for k in shots),
                    "budget": budget.describe(), "datasets": ",".join(recipe.data.dataset_names)})

    def train(config: TrainConfig, suffix: str):
        return run_training(config, storage_path=storage_path, name=f"{name}-{suffix}", tracking_uri=tracking_uri,
                            experiment=experiment, parent_run_id=study_run, show_progress=True)

    def best_seg(config: TrainConfig, suffix: str) -> float | None:
        metrics = train(config, suffix).metrics
        return metrics.get(f"best/seg/{dataset}", metrics.get("best/seg_mean"))

    try:
        if universal is None:
            result = train(universal_config(recipe, dataset), "universal")
            if result.checkpoint_dir is None:
                raise UserInputError(f"{name}-universal: the run left no checkpoint to start from")
            universal = str(result.checkpoint_dir)
        run.set_tags({"celltune.universal_model": universal})
        done: list[Shot] = []
        for k in shots:
            frames = available if k is ALL else k
            if k == 0:
                shot = Shot(0, 0, zero_shot_seg(universal, recipe, dataset, tracking_uri), None)
            else:
                label = "all" if k is ALL else str(k)
                shot = Shot(k, frames,
                            best_seg(shot_config(recipe, dataset, k, budget, universal), f"k{label}-universal"),
                            best_seg(shot_config(recipe, dataset, k, budget, None), f"k{label}-scratch"))
            done.append(shot)
            run.log_metrics({f"few_shot/{arm}/k{shot.label}": value for arm, value in
                             (("universal", shot.from_universal), ("scratch", shot.from_scratch)) if value is not None},
                            step=0)
            if on_shot is not None:
                on_shot(shot)
        report = LeaveOutReport(dataset, universal, budget, tuple(done))
        with tempfile.TemporaryDirectory(prefix="celltune-leave-out-") as scratch:
            table = Path(scratch) / "few_shot.csv"
            table.write_text(report.csv_text(), encoding="utf-8")
            run.log_artifact(table, "leave_out")
            run.log_artifact(write_curve(report, Path(scratch) / "few_shot.png"), "leave_out")
    except BaseException:
        client.set_terminated(study_run, status="FAILED")
        raise
    client.set_terminated(study_run, status="FINISHED")
    return report, study_run


def zero_shot_seg(universal: str, recipe: TrainConfig, dataset: str, tracking_uri: str) -> float:
    """SEG of ``universal`` on the left-out dataset's GT validation frames, predicted at the recipe's factor for
    it (the model never saw it, so its own card has none) with the model's default thresholds."""
    from celltune.platform.model_registry import load_model
    from celltune.search_spaces.postprocess_study import predict_validation, seg_score_for

    loaded = load_model(universal, tracking_uri)
    card = loaded.card.model_copy(update={"scale": {**loaded.card.scale, dataset: recipe.data.scale_for(dataset)}})
    data = recipe.data.restricted_to([dataset]).model_copy(update={"configuration": "gt"})
    probabilities = predict_validation(loaded.model, card, data, tta=card.tta)
    return seg_score_for(probabilities.kind, probabilities.frames[dataset], card.postprocess_params(None))


def write_curve(report: LeaveOutReport, path: Path) -> Path:
    """The few-shot curve as a PNG, atomically."""
    from celltune.platform.atomic_files import save_figure_atomic
    from celltune.platform.plots import few_shot_figure

    figure = few_shot_figure([shot.label for shot in report.shots], [shot.from_universal for shot in report.shots],
                             [shot.from_scratch for shot in report.shots],
                             title=f"{report.dataset} left out: SEG after k GT frames")
    return save_figure_atomic(figure, path)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
