"""Driver side of `celltune train`: check the config against the stores, open the MLflow run, fit on Ray.

A run lives in two places: Ray's storage (``<storage>/<name>``, checkpoints, what ``--resume`` restarts from)
and one MLflow run (params, curves, pictures, the final checkpoint). A small ``celltune_run.json`` in the Ray
folder ties them, so a resumed run keeps logging into the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError, write_atomic
from celltune.platform.console import run_folder_made
from celltune.platform.fine_tune import load_parent, parent_config, provenance_tags, with_parent_weights
from celltune.platform.mlflow_observer import MlflowObserver
from celltune.platform.tracking import RunLogger, absolute_tracking_uri, default_tracking_uri, redact_uri
from celltune.platform.tracking import experiment_id as tracking_experiment_id
from celltune.trainables.compatibility import check_model_and_loss
from celltune.trainables.config import TrainConfig

logger = logging.getLogger(__name__)

RUN_LINK_FILE = "celltune_run.json"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a folder name under the storage, never a path
DEFAULT_EXPERIMENT = "celltune-train"


@dataclass(frozen=True)
class TrainRunResult:
    name: str
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    checkpoint_dir: Path | None


def check_run_name(name: str) -> None:
    """Run and search names become folders (and a log file's place): no separators, no leading dot."""
    if not RUN_NAME.fullmatch(name):
        raise UserInputError(f"--name {name!r}: use letters, digits, '.', '_', '+' and '-' (starting with a letter "
                             "or digit)")


def _check_run_folder(run_folder: Path, resume: bool, *, resumable: bool) -> None:
    """A new run needs a free name; a resumed one needs its folder (``resumable``: what resuming reads is there)."""
    if resume and not resumable:
        raise UserInputError(f"--resume: no run named {run_folder.name!r} under {run_folder.parent}")
    if not resume and run_folder.exists():
        raise UserInputError(f"--name: a run named {run_folder.name!r} already exists under {run_folder.parent}; "
                             "pass --resume to continue it or choose another name")


def check_config(config: TrainConfig) -> None:
    """Fail before Ray starts: stores hold training frames, and the model, loss and thresholds fit together."""
    from celltune.trainables.data import check_crop_fits, training_frames

    for store in config.data.stores:
        if not Path(store).is_dir():
            raise UserInputError(f"data.stores: {store} does not exist (run `celltune data prep` first)")
        training_frames(Path(store), config.data)  # no frames, or fewer than data.train_frames: one line
        check_crop_fits(Path(store), config.data)
    check_model_and_loss(config)


def dry_run_plan(config: TrainConfig) -> dict[str, Any]:
    from celltune.trainables.ray_train import resource_plan

    return {"config": config.model_dump(mode="json"), "ray": resource_plan(config)}


def run_training(config: TrainConfig, *, storage_path: Path, name: str | None = None, resume: bool = False,
                 tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 address: str | None = None, parent_run_id: str | None = None, local: bool = False,
                 device: str = "auto", show_progress: bool = False) -> TrainRunResult:
    """Train on Ray (or, ``local``, in this process on ``device``) and track in MLflow; with ``resume``
    continue the run called ``name`` where it stopped. ``show_progress``: this process draws the bar of a Ray
    run (a local run draws its own)."""
    import mlflow

    config, storage_path, name = _prepared(config, storage_path, name, resume)
    run_folder = storage_path / name
    link_file = run_folder / RUN_LINK_FILE
    # The name is checked before Ray starts: its start-up lines must not land in another run's log file.
    _check_run_folder(run_folder, resume, resumable=link_file.is_file())
    if not local:
        _ray_that_fits(config, address)  # before anything is written: a run Ray can never place is refused
    tracking_uri = absolute_tracking_uri(tracking_uri or default_tracking_uri())  # workers run in other folders
    parent = load_parent(config, tracking_uri)  # a bad --init fails here, before anything is written
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if resume:
        run_id = json.loads(link_file.read_text())["mlflow_run_id"]
        client.update_run(run_id, status="RUNNING")
    else:
        experiment_id = tracking_experiment_id(client, experiment, tracking_uri)
        tags = {"mlflow.runName": name, "celltune.kind": "train", **provenance_tags(parent_config(config, parent))}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        run_folder.mkdir(parents=True)
        run_folder_made()
        write_atomic(link_file, json.dumps({"mlflow_run_id": run_id, "tracking_uri": redact_uri(tracking_uri)}))
    config = with_parent_weights(config, parent, run_folder)

    observer = MlflowObserver(RunLogger(tracking_uri, run_id))
    try:
        metrics, checkpoint_dir = _fit(config, storage_path, name, observer, local=local, device=device,
                                       address=address, show_progress=show_progress)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    if checkpoint_dir is not None:
        _log_checkpoint(client, run_id, checkpoint_dir)
    client.set_terminated(run_id, status="FINISHED")
    return TrainRunResult(name=name, mlflow_run_id=run_id, tracking_uri=tracking_uri, metrics=metrics,
                          checkpoint_dir=checkpoint_dir)


def run_untracked(config: TrainConfig, *, storage_path: Path, name: str | None = None, resume: bool = False,
                  device: str = "auto") -> TrainRunResult:
    """Train in this process without MLflow (a machine without it, or a quick debugging run): checkpoints in
    ``<storage>/<name>`` only."""
    config, storage_path, name = _prepared(config, storage_path, name, resume)
    run_folder = storage_path / name
    _check_run_folder(run_folder, resume, resumable=run_folder.is_dir())
    if config.init is not None:
        raise UserInputError("--init needs MLflow tracking (its provenance is recorded there); leave out --no-tracking")
    run_folder.mkdir(parents=True, exist_ok=True)
    run_folder_made()
    metrics, checkpoint_dir = _fit(config, storage_path, name, None, local=True, device=device)
    return TrainRunResult(name=name, mlflow_run_id="", tracking_uri="", metrics=metrics, checkpoint_dir=checkpoint_dir)


def _prepared(config: TrainConfig, storage_path: Path, name: str | None,
              resume: bool) -> tuple[TrainConfig, Path, str]:
    """Absolute store paths (Ray workers run in their own working directories), the config checked, the name."""
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"stores": [Path(store).resolve() for store in config.data.stores]})})
    check_config(config)
    if resume and not name:
        raise UserInputError("--resume needs --name of the run to continue")
    if name:
        check_run_name(name)
    storage_path = Path(storage_path).resolve()
    if storage_path.exists() and not storage_path.is_dir():
        raise UserInputError(f"--storage {storage_path}: is a file, not a folder")
    return config, storage_path, name or default_run_name()


def default_run_name() -> str:
    return time.strftime("train-%Y%m%d-%H%M%S")


def _log_checkpoint(client, run_id: str, checkpoint_dir: Path) -> None:
    """Log the checkpoint to the run with environment secrets masked in its model card (a tracking server is
    shared more widely than the run's own storage, which keeps the card as written: resuming reads it)."""
    import shutil
    import tempfile

    from celltune.platform.tracking import mask_secrets
    from celltune.trainables.model_card import CARD_FILE

    with tempfile.TemporaryDirectory(prefix="celltune-checkpoint-") as scratch:
        copy = Path(scratch) / "checkpoint"
        shutil.copytree(checkpoint_dir, copy)
        card = copy / CARD_FILE
        if card.is_file():  # masked as JSON: logging a checkpoint never fails over what its card holds
            write_atomic(card, json.dumps(mask_secrets(json.loads(card.read_text())), indent=2))
        client.log_artifacts(run_id, str(copy), "checkpoint")


def _ray_that_fits(config: TrainConfig, address: str | None) -> None:
    """Start or join Ray and check the run can be placed there (the local Ray's size is fixed)."""
    import os

    import ray

    from celltune.data_prep.ray_session import ensure_ray
    from celltune.trainables.ray_train import check_schedulable

    ensure_ray(address)
    fixed = not (address or os.environ.get("RAY_ADDRESS"))
    check_schedulable(config, ray.cluster_resources(), fixed_size=fixed)


def _fit(config: TrainConfig, storage_path: Path, name: str, observer, *, local: bool, device: str,
         address: str | None = None, show_progress: bool = False) -> tuple[dict[str, float], Path | None]:
    """The last reported metrics and the newest checkpoint of a Ray or a local run."""
    if local:
        from celltune.trainables.local_train import fit_local

        outcome = fit_local(config, run_folder=storage_path / name, device=device, observer=observer)
        return outcome.metrics, outcome.checkpoint_dir
    from celltune.data_prep.ray_session import ensure_ray
    from celltune.trainables import ray_train

    ensure_ray(address)
    result = ray_train.fit(config, storage_path=storage_path, name=name, observer=observer,
                           show_progress=show_progress)
    return dict(result.metrics or {}), Path(result.checkpoint.path) if result.checkpoint else None

