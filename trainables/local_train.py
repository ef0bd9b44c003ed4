"""Training in this process on one device, without Ray (`celltune train --local`).

For a one-GPU workstation, for debugging with a plain stack trace, and for machines where Ray cannot run: the
same :func:`train_loop.train` as the Ray path, with checkpoints kept the way Ray Train keeps them
(``<storage>/<name>/checkpoint_NNNNNN``, the newest two), so ``--resume`` continues either kind of run folder
written by this entry.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from celltune.trainables.config import TrainConfig
from celltune.trainables.inference import resolve_device
from celltune.trainables.train_loop import TrainingObserver, WorkerContext, train

logger = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2
_CHECKPOINT = re.compile(r"^checkpoint_(\d{6})$")


@dataclass
class LocalResult:
    """What a local run reported last, and its newest checkpoint folder."""

    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_dir: Path | None = None


def local_device(requested: str = "auto") -> torch.device:
    """``auto``: the first CUDA device where there is one, else the CPU; anything else as ``resolve_device``."""
    return resolve_device(requested)


def checkpoints(run_folder: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    if not run_folder.is_dir():
        return []
    return sorted(p for p in run_folder.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name))


def fit_local(config: TrainConfig, *, run_folder: Path, device: str = "auto",
              observer: TrainingObserver | None = None) -> LocalResult:
    """Train ``config`` here on ``device``; resumes from the newest checkpoint in ``run_folder`` if any."""
    run_folder = Path(run_folder)
    run_folder.mkdir(parents=True, exist_ok=True)
    result = LocalResult()
    existing = checkpoints(run_folder)
    result.checkpoint_dir = existing[-1] if existing else None
    numbers = [int(_CHECKPOINT.match(p.name).group(1)) for p in existing]
    counter = iter(range(max(numbers, default=-1) + 1, 1_000_000))

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        result.metrics = dict(metrics)
        if checkpoint_dir is None:
            return
        target = run_folder / f"checkpoint_{next(counter):06d}"
        scratch = run_folder / f".{target.name}.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(checkpoint_dir, scratch)
        scratch.rename(target)  # a checkpoint folder is whole or absent
        result.checkpoint_dir = target
        for old in checkpoints(run_folder)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)

    resolved = local_device(device)
    logger.info("training in this process on %s", resolved)
    context = WorkerContext(device=resolved, report=report, latest_checkpoint=lambda: result.checkpoint_dir)
    train(config, context, observer)
    return result
