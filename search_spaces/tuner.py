"""Run a search space on Ray Tune: Optuna TPE through ``OptunaSearch``, ASHA early stopping, resumable.

Each trial is one training run of :mod:`celltune.trainables.train_loop`:

* single-worker trials run the loop inside the Tune function trainable itself (no extra process), reporting
  every evaluation with ``ray.tune.report`` and restoring from ``ray.tune.get_checkpoint()`` after a failure;
* multi-worker trials call :func:`celltune.trainables.ray_train.fit` from a light function trainable (Ray's
  current Tune-over-Train pattern): Train's ``TuneReportCallback`` forwards the workers' reports, and the
  Train run is named after the trial so a restarted trial resumes Train from its own checkpoints.

One ASHA "time unit" is one evaluation (``training.eval_every`` epochs), so ``max_t`` is the number of
evaluations of a full trial. The searcher state, finished trials and trial checkpoints live in
``<storage>/<name>``; :func:`run_search` with ``resume=True`` continues from there. Each trial keeps
``checkpoints_to_keep`` checkpoints (its latest alone holds its best weights and everything a resume needs), and
under ASHA a :class:`~celltune.search_spaces.checkpoint_pruning.CheckpointPruner` deletes those of stopped trials
that are not among the ``keep_best`` best.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.sampling import apply_sample, define_by_run, encode_sample
from celltune.search_spaces.space import SearchSpace
from celltune.trainables.config import TrainConfig
from celltune.trainables.train_loop import TrainingObserver

logger = logging.getLogger(__name__)

DRIVER_CPU = 0.01  # a multi-worker trial's function only waits on its Train workers
CHECKPOINT_PATH_KEY = "checkpoint_path"  # what Train's TuneReportCallback adds to a multi-worker trial's metrics
TRAIN_RUNS = "train-runs"  # <storage>/<name>/train-runs/<trial_id>: a multi-worker trial's Train run


class TrialHooks(Protocol):
    """What the platform plugs into every trial (picklable: it travels to the trial's process)."""

    def observer_for(self, trial_id: str, trial_name: str, sample: Mapping[str, Any],
                     config: TrainConfig) -> TrainingObserver | None: ...


@dataclass(frozen=True)
class SearchSettings:
    """Where a search lives and how much of it to run."""

    storage_path: str  # a local folder or a URI Ray understands (s3://, gs://, ...)
    name: str
    trials: int
    seed: int = 0
    max_concurrent: int | None = None  # None: as many trials as the cluster's resources hold
    max_failures: int = 2  # retries per trial (a lost worker or node), each from its last checkpoint; -1: forever
    verbose: int = 1
    sampler: Literal["tpe", "random"] = "tpe"  # random: the baseline TPE is measured against
    early_stopping: bool = True  # False: every trial runs all its epochs, whatever the space says
    n_startup_trials: int | None = None  # TPE's random start; None: a quarter of the trials, 2 to 10
    checkpoints_to_keep: int = 1  # per trial, Tune's and a multi-worker trial's Train run's: the latest suffices
    keep_best: int = 1  # trials stopped early by ASHA that keep their checkpoints when among the best

    def __post_init__(self) -> None:
        for name in ("checkpoints_to_keep", "keep_best"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures: must be -1 (retry forever) or at least 0, got {self.max_failures}")


def trial_resources(config: TrainConfig) -> dict[str, float]:
    """Resources of one trial's function: the whole single worker, or a sliver next to its Train workers."""
    resources = config.resources
    if resources.num_workers > 1:
        return {"cpu": DRIVER_CPU}
    request = {"cpu": resources.cpus_per_worker}
    if resources.use_gpu:
        request["gpu"] = resources.gpus_per_worker
    return request


def trial_footprint(config: TrainConfig) -> dict[str, float]:
    """Everything one trial occupies while it runs (function plus Train workers), for concurrency planning."""
    resources = config.resources
    if resources.num_workers == 1:
        return {"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker if resources.use_gpu else 0.0}
    return {"CPU": DRIVER_CPU + resources.num_workers * resources.cpus_per_worker,
            "GPU": resources.num_workers * resources.gpus_per_worker if resources.use_gpu else 0.0}


def concurrency_for(footprint: Mapping[str, float], available: Mapping[str, float], trials: int) -> int:
    """How many trials fit side by side on ``available`` (Ray's cluster resources), at least one."""
    fits = [available.get(key, 0.0) / need for key, need in footprint.items() if need > 0]
    return max(1, min(trials, math.floor(min(fits) + 1e-9) if fits else trials))


def evaluations_per_trial(config: TrainConfig) -> int:
    """Reports a full trial makes: one per ``eval_every`` epochs, plus the final epoch when it is off-cycle."""
    training = config.training
    return training.epochs // training.eval_every + (1 if training.epochs % training.eval_every else 0)


def asha_units(config: TrainConfig, early_stopping) -> dict[str, Any]:
    """ASHA's clock: evaluations, or seconds of training for trials with a wall-time budget (compared at equal
    time; ``grace_minutes`` defaults to a quarter of the budget)."""
    if config.training.max_minutes:
        budget = config.training.max_minutes * 60
        grace = early_stopping.grace_minutes * 60 if early_stopping.grace_minutes else budget / 4
        return {"time_attr": "time_total_s", "max_t": round(budget), "grace_period": max(1, round(min(grace, budget)))}
    max_t = evaluations_per_trial(config)
    return {"time_attr": "training_iteration", "max_t": max_t, "grace_period": min(early_stopping.grace_period, max_t)}


def run_trial(sample: dict[str, Any], *, base_tree: dict[str, Any], hooks: TrialHooks | None,
              storage_path: str, search_name: str, checkpoints_to_keep: int = 1) -> None:
    """The Tune function trainable: one training run of the sampled config (``checkpoints_to_keep``: of a
    multi-worker trial's Train run; Tune keeps a single-worker trial's per the Tuner's ``CheckpointConfig``)."""
    import ray.tune

    context = ray.tune.get_context()
    trial_id = context.get_trial_id()
    config = apply_sample(base_tree, sample, source=f"trial {trial_id}")
    observer = hooks.observer_for(trial_id, context.get_trial_name(), sample, config) if hooks else None
    if config.resources.num_workers > 1:
        _run_multi_worker_trial(config, observer, storage_path=storage_path, search_name=search_name,
                                trial_id=trial_id, checkpoints_to_keep=checkpoints_to_keep)
    else:
        _run_single_worker_trial(config, observer)


def _run_single_worker_trial(config: TrainConfig, observer: TrainingObserver | None) -> None:
    import ray
    import ray.tune
    import torch

    from celltune.trainables.ray_train import ray_progress_bar
    from celltune.trainables.train_loop import WorkerContext, train

    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))

    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)  # where it ran, for users and tests

    with tempfile.TemporaryDirectory(prefix="celltune-trial-resume-") as scratch:

        def latest_checkpoint() -> Path | None:
            checkpoint = ray.tune.get_checkpoint()
            return None if checkpoint is None else Path(checkpoint.to_directory(scratch))

        use_cuda = config.resources.use_gpu and torch.cuda.is_available()
        context = WorkerContext(device=torch.device("cuda" if use_cuda else "cpu"), report=report,
                                latest_checkpoint=latest_checkpoint, progress_bar=ray_progress_bar)
        train(config, context, observer)


def _run_multi_worker_trial(config: TrainConfig, observer: TrainingObserver | None, *, storage_path: str,
                            search_name: str, trial_id: str, checkpoints_to_keep: int) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from celltune.trainables.ray_train import fit

    # A stable Train run per trial: a restarted trial resumes Train from that run's checkpoints.
    fit(config, storage_path=_join(storage_path, search_name, TRAIN_RUNS), name=trial_id, observer=observer,
        callbacks=[TuneReportCallback()], checkpoints_to_keep=checkpoints_to_keep)


def _join(base: str, *parts: str) -> str:
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base).joinpath(*parts))


def experiment_path(settings: SearchSettings) -> str:
    return _join(settings.storage_path, settings.name)


def search_exists(settings: SearchSettings) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(experiment_path(settings))


def build_tuner(space: SearchSpace, settings: SearchSettings, *, hooks: TrialHooks | None = None,
                resume: bool = False, callbacks: Sequence[Any] = (), stop: Any = None):
    """A ready ``Tuner`` for ``space`` (fresh, or restored from ``<storage>/<name>`` with ``resume``)."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from celltune.search_spaces.checkpoint_pruning import CheckpointPruner

    base = space.base_config()
    objective = space.objective

    def trainable_keeping(checkpoints_to_keep: int):
        trainable = tune.with_parameters(run_trial, base_tree=space.base_tree, hooks=hooks,
                                         storage_path=settings.storage_path, search_name=settings.name,
                                         checkpoints_to_keep=checkpoints_to_keep)
        return tune.with_resources(trainable, trial_resources(base))

    trainable = trainable_keeping(settings.checkpoints_to_keep)
    if resume:
        if not search_exists(settings):
            raise UserInputError(f"--resume: no search named {settings.name!r} under {settings.storage_path}")
        # Tune restores its callbacks (the pruner among them) and CheckpointConfig; the Train runs of multi-worker
        # trials keep what the search started with too.
        tuner = tune.Tuner.restore(experiment_path(settings), trainable, resume_unfinished=True,
                                   restart_errored=True)
        kept = _restored_checkpoints_to_keep(tuner)
        if kept is not None and kept != settings.checkpoints_to_keep:
            tuner = tune.Tuner.restore(experiment_path(settings), trainable_keeping(kept), resume_unfinished=True,
                                       restart_errored=True)
        return tuner
    if search_exists(settings):
        raise UserInputError(f"--name: a search named {settings.name!r} already exists under "
                             f"{settings.storage_path}; pass --resume to continue it or choose another name")

    if settings.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    else:
        startup = settings.n_startup_trials or min(10, max(2, settings.trials // 4))
        # multivariate + group model the joint, conditional space; constant_liar spreads concurrent trials.
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup, multivariate=True,
                                             group=True, constant_liar=True)
    points = [encode_sample(space.parameters, point, f"{space.source}: points[{index}]")
              for index, point in enumerate(space.points)]
    searcher = OptunaSearch(space=define_by_run(space), metric=objective.metric, mode=objective.mode,
                            sampler=sampler, points_to_evaluate=points or None)
    available = ray.cluster_resources()
    concurrency = settings.max_concurrent or concurrency_for(trial_footprint(base), available, settings.trials)
    if not settings.max_concurrent and trial_footprint(base)["GPU"] > available.get("GPU", 0.0):
        logger.warning("the cluster has %g GPUs now and a trial needs %g: trials run one at a time unless "
                       "--max-concurrent is given (an autoscaling cluster adds GPU nodes on demand)",
                       available.get("GPU", 0.0), trial_footprint(base)["GPU"])
    searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    max_t = evaluations_per_trial(base)
    callbacks = list(callbacks)
    if space.early_stopping is not None and settings.early_stopping:
        scheduler = ASHAScheduler(**asha_units(base, space.early_stopping),
                                  reduction_factor=space.early_stopping.reduction_factor)
        budget_s = base.training.max_minutes * 60 if base.training.max_minutes else None
        callbacks.append(CheckpointPruner(storage_path=settings.storage_path, search_name=settings.name,
                                          metric=objective.metric, mode=objective.mode, full_evaluations=max_t,
                                          budget_s=budget_s, keep_best=keep_best_for(space, settings),
                                          max_gmac=objective.max_gmac, base_tree=space.base_tree))
    else:
        scheduler = FIFOScheduler()
    budget = f", {base.training.max_minutes:g} min each" if base.training.max_minutes else ""
    logger.info("search %s: %d trials, up to %d at once, %d evaluations per full trial%s", settings.name,
                settings.trials, concurrency, max_t, budget)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=objective.metric, mode=objective.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=settings.trials),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage_path if "://" in settings.storage_path
            else str(Path(settings.storage_path).resolve()),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.checkpoints_to_keep),
            callbacks=callbacks,
            stop=stop,
            verbose=settings.verbose,
        ),
    )


def _restored_checkpoints_to_keep(tuner) -> int | None:
    """The ``num_to_keep`` a restored search started with (None where Ray does not say: a Ray Client tuner)."""
    local = getattr(tuner, "_local_tuner", None)  # Ray keeps the restored RunConfig there; no public accessor
    try:
        checkpoint_config = local.get_run_config().checkpoint_config if local is not None else None
    except AttributeError:
        return None
    kept = getattr(checkpoint_config, "num_to_keep", None)
    return kept if isinstance(kept, int) and kept >= 1 else None


def keep_best_for(space: SearchSpace, settings: SearchSettings) -> int:
    """How many of the best trials keep their checkpoints: the settings' number, or all the members the space's
    ensemble choice may average."""
    members = space.postprocess.ensemble_members if space.postprocess is not None else 1
    return max(settings.keep_best, members)


def checkpoint_of(result):
    """A trial's latest checkpoint (Tune's own, or the Train run's for multi-worker trials) on its storage
    filesystem, local or remote; ``.to_directory()`` brings it to local disk. None when the trial has none, or
    its local checkpoint was deleted (a stopped trial's, by the checkpoint pruner)."""
    from pyarrow import fs
    from ray.tune import Checkpoint

    checkpoint = result.checkpoint
    if checkpoint is None:
        path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
        if not path:
            return None
        checkpoint = Checkpoint(path=path, filesystem=result.filesystem)
    if isinstance(checkpoint.filesystem, fs.LocalFileSystem) and not Path(checkpoint.path).is_dir():
        return None
    return checkpoint
