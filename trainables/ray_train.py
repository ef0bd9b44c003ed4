"""The one place that calls ``ray.train``: run :func:`train_loop.train` data-parallel on a ``TorchTrainer``.

DDP over gloo on CPU and NCCL on GPU; each worker gets its rank, device and DDP wrapping from Ray, reports
metrics every evaluation, and rank 0 attaches the checkpoint. Ray Train V2 restores a run from its latest
checkpoint when the same ``name`` and ``storage_path`` are used again (worker failures within a run are
retried per ``max_failures``), which is what ``--resume`` relies on.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError
from celltune.trainables.config import TrainConfig
from celltune.trainables.train_loop import TrainingObserver, WorkerContext, train

logger = logging.getLogger(__name__)


def _worker_entry(loop_config: dict[str, Any]) -> None:
    """Runs inside every Ray Train worker process."""
    import ray.train
    import ray.train.torch

    config = TrainConfig.model_validate(loop_config["config"])
    train_context = ray.train.get_context()
    progress_queue = loop_config.get("progress")
    progress_bar = ray_progress_bar
    if progress_queue is not None and train_context.get_world_rank() == 0:
        from celltune.trainables.ray_progress import QueueLogHandler, RemoteBar

        logging.getLogger("celltune").addHandler(QueueLogHandler(progress_queue))

        def progress_bar(total: int, initial: int, desc: str) -> RemoteBar:
            return RemoteBar(progress_queue, total, initial, desc)

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint() -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        # A folder of this rank's own: the default one is shared by the ranks of a node, and one rank
        # rewriting files another is reading crashed workers on resume.
        scratch = tempfile.mkdtemp(prefix=f"celltune-resume-rank{train_context.get_world_rank()}-")
        return Path(checkpoint.to_directory(scratch))

    context = WorkerContext(
        rank=train_context.get_world_rank(),
        world_size=train_context.get_world_size(),
        device=ray.train.torch.get_device(),
        prepare_model=lambda model: ray.train.torch.prepare_model(model, move_to_device=False),
        report=report,
        latest_checkpoint=latest_checkpoint,
        progress_bar=progress_bar,
    )
    train(config, context, loop_config.get("observer"))


def ray_progress_bar(total: int, initial: int, desc: str):
    """Rank 0's bar through Ray's distributed tqdm (a Tune trial's; seen with worker logs on, ``-v``)."""
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=total, desc=desc, unit="step")
    if initial:
        bar.update(initial)
    return bar


def fit(config: TrainConfig, *, storage_path: Path, name: str, observer: TrainingObserver | None = None,
        max_failures: int = 2, callbacks: list | None = None, show_progress: bool = False,
        checkpoints_to_keep: int = 2):
    """Run training on the connected Ray cluster and return Ray's ``Result`` (metrics, checkpoint, path).

    ``callbacks`` are Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` when a Tune trial runs this.
    ``show_progress``: this process draws rank 0's bar and relays its warnings (:mod:`ray_progress`).
    ``checkpoints_to_keep``: the latest checkpoints kept (each holds the best weights so far too, so one serves
    both a resume and the best model; a search trial keeps its search's setting, default 1).
    """
    if checkpoints_to_keep < 1:
        raise ValueError(f"checkpoints_to_keep: must be at least 1, got {checkpoints_to_keep}")
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from celltune.trainables.loopback_rendezvous import LoopbackTorchConfig

    resources = config.resources
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    progress = None
    if show_progress:
        from celltune.trainables.ray_progress import DriverProgress

        progress = DriverProgress()
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"config": config.model_dump(mode="json"), "observer": observer,
                           "progress": progress.queue if progress else None},
        torch_config=LoopbackTorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=resources.num_workers, use_gpu=resources.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_to_keep),
            logging_config=LoggingConfig(log_level="WARNING"),  # keep the console to the progress bar
            callbacks=callbacks or None,
        ),
    )
    if progress is None:
        return trainer.fit()
    with progress:
        return trainer.fit()


def check_schedulable(config: TrainConfig, cluster: Mapping[str, float], *, fixed_size: bool) -> None:
    """Refuse what a cluster of fixed size can never place (Ray would wait forever without a word); on an
    autoscaling cluster only say what the run waits for.

    Args:
        cluster: the cluster's total resources (``ray.cluster_resources()``).
        fixed_size: True for the local Ray this command started, whose size is known for good.

    Raises:
        UserInputError: the run needs more CPUs or GPUs than a fixed-size cluster has.
    """
    resources = config.resources
    needs = {"CPU": resources.num_workers * resources.cpus_per_worker,
             "GPU": resources.num_workers * resources.gpus_per_worker}
    short = [(kind, need, float(cluster.get(kind, 0.0))) for kind, need in needs.items()
             if need > float(cluster.get(kind, 0.0)) + 1e-9]
    if not short:
        return
    kind, need, have = short[0]
    wanted = (f"resources: {resources.num_workers} worker(s) x {resources.cpus_per_worker:g} CPU"
              + (f" + {resources.gpus_per_worker:g} GPU" if resources.gpus_per_worker else "")
              + f" need {need:g} {kind}")
    if fixed_size:
        raise UserInputError(f"{wanted}, the local Ray has {have:g}; lower resources.num_workers or "
                             f"resources.{'gpus' if kind == 'GPU' else 'cpus'}_per_worker (or train with --local)")
    logger.warning("%s, the Ray cluster has %g now: the run waits until the cluster scales up", wanted, have)


def resource_plan(config: TrainConfig) -> dict[str, Any]:
    """What the run will ask Ray for, for ``--dry-run``."""
    resources = config.resources
    per_worker = {"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}
    return {
        "workers": resources.num_workers,
        "per_worker": per_worker,
        "total": {key: value * resources.num_workers for key, value in per_worker.items()},
        "backend": "nccl" if resources.use_gpu else "gloo",
    }
