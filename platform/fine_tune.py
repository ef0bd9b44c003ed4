"""Driver side of fine-tuning (``celltune train --init URI``, ``init:`` in a config or a search space).

The parent model is resolved and checked here, before Ray starts: a registered version is downloaded once, its
weights must fit the run's architecture tensor by tensor, and they are written next to the run's checkpoints
as one safetensors file that every worker (or trial) reads. The parent's name, version and run become the new
run's provenance: tags on its MLflow run and on any model version registered from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError
from celltune.trainables.config import TrainConfig

INIT_WEIGHTS_FILE = "init_weights.safetensors"


@dataclass(frozen=True)
class ParentWeights:
    """A parent model's weights, checked to fit the run's architecture, and who the parent is."""

    state: dict[str, Any]
    parent: dict[str, str]


def load_parent(config: TrainConfig, tracking_uri: str | None) -> ParentWeights | None:
    """The weights ``config.init.model`` names, checked against ``config.model`` (None without ``init``).

    Raises:
        UserInputError: unknown model, alias, version or folder, or weights that do not fit ``config.model``
            (the message names the first mismatching tensor).
    """
    if config.init is None:
        return None
    from celltune.platform.model_registry import load_model
    from celltune.trainables.architectures import build_model
    from celltune.trainables.init_weights import first_mismatch

    uri = config.init.model
    loaded = load_model(uri, tracking_uri)
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    mismatch = first_mismatch(build_model(config.model.name, **config.model.options).state_dict(), state)
    if mismatch:
        raise UserInputError(f"--init {uri}: its weights do not fit model {config.model.name!r} {config.model.options}"
                             f" (the parent is {loaded.card.architecture!r}): {mismatch}")
    ref = loaded.ref
    parent = {"uri": uri, **{key: str(value) for key, value in (("name", ref.name), ("version", ref.version),
                                                                  ("run_id", ref.run_id)) if value is not None}}
    return ParentWeights(state=state, parent=parent)


def with_parent_weights(config: TrainConfig, parent: ParentWeights | None, folder: Path) -> TrainConfig:
    """``config`` whose ``init`` points at the parent's weights, written atomically to
    ``folder/init_weights.safetensors`` for the workers (unchanged without a parent)."""
    if config.init is None or parent is None:
        return config
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / INIT_WEIGHTS_FILE
    scratch = folder / f".{INIT_WEIGHTS_FILE}.tmp"
    save_file(parent.state, str(scratch))
    scratch.replace(target)
    init = config.init.model_copy(update={"weights": target.resolve(), "parent": dict(parent.parent)})
    return config.model_copy(update={"init": init})


def parent_config(config: TrainConfig, parent: ParentWeights | None) -> TrainConfig:
    """``config`` with ``init.parent`` recorded (no weights written): what the run's provenance tags read."""
    if config.init is None or parent is None:
        return config
    return config.model_copy(update={"init": config.init.model_copy(update={"parent": dict(parent.parent)})})


def provenance_tags(train_config: Mapping[str, Any] | TrainConfig) -> dict[str, str]:
    """MLflow tags naming the model a run, a search or a version registered from either was fine-tuned from."""
    if isinstance(train_config, TrainConfig):
        train_config = train_config.model_dump(mode="json")
    init = train_config.get("init") or {}
    parent = init.get("parent") or {}
    if not init:
        return {}
    tags = {"celltune.init": str(parent.get("uri", init.get("model")))}
    if parent.get("name"):
        tags["celltune.parent_model"] = f"{parent['name']}/{parent.get('version', '?')}"
    if parent.get("run_id"):
        tags["celltune.parent_run_id"] = str(parent["run_id"])
    return tags
