"""Run a search space on Ray Tune: Optuna TPE through ``OptunaSearch``, ASHA early stopping, resumable.

Each trial is one training run of :mod:`celltune.trainables.train_loop`:

* single-worker trials run the loop inside the Tune function trainable itself (no extra process), reporting
  every evaluation with ``ray.tune.report`` and restoring from ``ray.tune.get_checkpoint()`` after a failure;
* multi-worker trials call :func:`celltune.trainables.ray_train.fit` from a light function trainable (Ray's
  current Tune-over-Train pattern): Train's ``TuneReportCallback`` forwards the workers' reports, and the
  Train run is named after the trial so a restarted trial resumes Train from its own checkpoints.

One ASHA "time unit" is one evaluation (``training.eval_every`` epochs), so ``max_t`` is the number of
evaluations of a full trial. The searcher state, finished trials and trial checkpoints live in
``<storage>/<name>``; :func:`run_search` with ``resume=True`` continues from there.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from celltune.data_prep.errors import UserInputError
from celltune.search_spaces.sampling import apply_sample, define_by_run, encode_sample
from celltune.search_spaces.space import SearchSpace
from celltune.trainables.config import TrainConfig
from celltune.trainables.train_loop import TrainingObserver

logger = logging.getLogger(__name__)

DRIVER_CPU = 0.01  # a multi-worker trial's function only waits on its Train workers
CHECKPOINT_PATH_KEY = "checkpoint_path"  # what Train's TuneReportCallback adds to a multi-worker trial's metrics


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
    max_failures: int = 2  # retries per trial (a lost worker or node), each from the trial's last checkpoint
    verbose: int = 1
    sampler: Literal["tpe", "random"] = "tpe"  # random: the baseline TPE is measured against
    early_stopping: bool = True  # False: every trial runs all its epochs, whatever the space says
    n_startup_trials: int | None = None  # TPE's random start; None: a quarter of the trials, 2 to 10


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
              storage_path: str, search_name: str) -> None:
    """The Tune function trainable: one training run of the sampled config."""
    import ray.tune

    context = ray.tune.get_context()
    trial_id = context.get_trial_id()
    config = apply_sample(base_tree, sample, source=f"trial {trial_id}")
    observer = hooks.observer_for(trial_id, context.get_trial_name(), sample, config) if hooks else None
    if config.resources.num_workers > 1:
        _run_multi_worker_trial(config, observer, storage_path=storage_path, search_name=search_name,
                                trial_id=trial_id)
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
                            search_name: str, trial_id: str) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from celltune.trainables.ray_train import fit

    # A stable Train run per trial: a restarted trial resumes Train from that run's checkpoints.
    fit(config, storage_path=_join(storage_path, search_name, "train-runs"), name=trial_id, observer=observer,
        callbacks=[TuneReportCallback()])


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

    base = space.base_config()
    objective = space.objective
    trainable = tune.with_parameters(run_trial, base_tree=space.base_tree, hooks=hooks,
                                     storage_path=settings.storage_path, search_name=settings.name)
    trainable = tune.with_resources(trainable, trial_resources(base))
    if resume:
        if not search_exists(settings):
            raise UserInputError(f"--resume: no search named {settings.name!r} under {settings.storage_path}")
        return tune.Tuner.restore(experiment_path(settings), trainable, resume_unfinished=True,
                                  restart_errored=True)
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
    if space.early_stopping is not None and settings.early_stopping:
        scheduler = ASHAScheduler(**asha_units(base, space.early_stopping),
                                  reduction_factor=space.early_stopping.reduction_factor)
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
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            stop=stop,
            verbose=settings.verbose,
        ),
    )


def checkpoint_of(result):
    """A trial's latest checkpoint (Tune's own, or the Train run's for multi-worker trials) on its storage
    filesystem, local or remote; ``.to_directory()`` brings it to local disk."""
    if result.checkpoint is not None:
        return result.checkpoint
    path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
    if not path:
        return None
    from ray.tune import Checkpoint

    return Checkpoint(path=path, filesystem=result.filesystem)
