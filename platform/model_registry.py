"""Registered models: put a search's best checkpoint into the MLflow Model Registry and get models back out.

A registered version is an MLflow LoggedModel (pyfunc flavour, "models from code", so MLflow itself can
serve it) whose artifacts are just two files: the weights as safetensors and ``celltune_model.json`` (the
architecture's registry config, the tuned post-processing thresholds, the normalization contract and the
training config). :func:`load_model` rebuilds the network from that JSON through the architecture registry
and loads the weights without unpickling anything, after checking the weights' SHA-256 against the JSON, so
a tampered or mismatched artifact fails with one line instead of running arbitrary code.

The version tags listed in ``TAGS`` let ``celltune models`` show and compare versions without downloads.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError, one_line
from celltune.platform.tracking import default_tracking_uri
from celltune.trainables.model_card import (
    BEST_WEIGHTS,
    CARD_FILE,
    REGISTERED_WEIGHTS,
    ModelCard,
    file_sha256,
    load_model_folder,
)

logger = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"
PYFUNC_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")

__all__ = ["ModelRef", "LoadedModel", "resolve_ref", "load_model", "register_checkpoint", "default_tracking_uri",
           "key_settings"]


@dataclass(frozen=True)
class ModelRef:
    """What a model URI names: a registered version, or a local checkpoint folder (name/version/run None)."""

    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    local_dir: Path | None = None
    source: str | None = None  # where the version's artifacts live (its LoggedModel's artifact location)


@dataclass
class LoadedModel:
    """A rebuilt network (eval mode, CPU) with the card it was trained under."""

    model: Any  # torch.nn.Module
    card: ModelCard
    ref: ModelRef

    # What the pyfunc code frozen into versions registered before the typed card (2026-12-04) reads; MLflow runs
    # that copy when it serves or loads such a version, so these stay while those versions may exist.
    @property
    def target_kind(self) -> str:
        return self.card.target_kind

    @property
    def size_multiple(self) -> int:
        return self.card.size_multiple

    @property
    def normalization(self) -> str:
        return self.card.normalization

    def postprocess_params(self, dataset: str | None = None) -> dict[str, Any]:
        return self.card.postprocess_params(dataset)


def resolve_ref(uri: str, tracking_uri: str | None = None) -> ModelRef:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a local checkpoint folder, checked to exist.

    Raises:
        UserInputError: malformed URI, unknown model, alias or version, or a folder without a celltune model.
    """
    text = str(uri)
    if text.startswith("models:"):
        match = _MODELS_URI.match(text)
        if not match:
            raise UserInputError(f"{text}: not a model URI; use models:/NAME@ALIAS, models:/NAME/VERSION "
                                 "or a checkpoint folder")
        return _resolve_registered(text, match["name"], match["alias"], match["version"], tracking_uri)
    folder = Path(text).expanduser()
    if not folder.exists():
        raise UserInputError(f"{text}: no such model folder (or give models:/NAME@ALIAS)")
    if not (folder / CARD_FILE).is_file():
        raise UserInputError(f"{text}: not a celltune model folder (no {CARD_FILE})")
    return ModelRef(uri=text, local_dir=folder.resolve())


def _resolve_registered(uri: str, name: str, alias: str | None, version: str | None,
                        tracking_uri: str | None) -> ModelRef:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri(),
                          registry_uri=tracking_uri or default_tracking_uri())
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models()]
        raise UserInputError(f"{uri}: no registered model named {name!r} (registered: "
                             f"{', '.join(sorted(known)) or 'none'})") from None
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise UserInputError(f"{uri}: model {name!r} has no {what}") from None
    return ModelRef(uri=uri, name=name, version=str(found.version), run_id=found.run_id, source=found.source)


def load_model(uri: str, tracking_uri: str | None = None) -> LoadedModel:
    """Rebuild and load a celltune model from a registry URI or checkpoint folder, without unpickling.

    Raises:
        UserInputError: unknown or malformed URI, missing files, weights whose checksum or tensors do not match
            its card.
    """
    ref = resolve_ref(uri, tracking_uri)
    if ref.local_dir is not None:
        return _load_folder(ref.local_dir, ref)
    import mlflow

    with tempfile.TemporaryDirectory(prefix="celltune-model-") as scratch:
        try:
            # From the version's own source: a models:/ URI would be resolved against the global registry URI.
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=scratch,
                                                        tracking_uri=tracking_uri or default_tracking_uri())
        except Exception as exc:  # storage errors come in many types; name the model and the cause
            raise UserInputError(f"{uri}: cannot download the model's artifacts ({one_line(exc)})") from None
        cards = sorted(Path(local).rglob(CARD_FILE))
        if not cards:
            raise UserInputError(f"{uri}: the registered artifacts hold no {CARD_FILE} (not a celltune model)")
        return _load_folder(cards[0].parent, ref)


def _load_folder(folder: Path, ref: ModelRef) -> LoadedModel:
    model, card = load_model_folder(folder, where=ref.uri)
    return LoadedModel(model=model, card=card, ref=ref)


# ---------------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------------


def key_settings(train_config: Mapping[str, Any]) -> dict[str, Any]:
    """The few settings people compare versions by."""
    data, training = train_config.get("data", {}), train_config.get("training", {})
    return {
        "datasets": [Path(str(s)).name.removesuffix(".zarr") for s in data.get("stores", [])],
        "crop": data.get("crop"),
        "model": train_config.get("model", {}).get("name"),
        "loss": train_config.get("loss", {}).get("name"),
        "lr": train_config.get("optimizer", {}).get("lr"),
        "scheduler": train_config.get("scheduler", {}).get("name"),
        "scheme": training.get("scheme"),
        "epochs": training.get("epochs"),
    }


def package_checkpoint(checkpoint_dir: Path, target: Path, *, postprocess_default: Mapping[str, Any],
                       postprocess_per_dataset: Mapping[str, Mapping[str, Any]],
                       metrics: Mapping[str, float]) -> ModelCard:
    """Write the two files of a registered model into ``target``: best weights and the completed card."""
    from celltune.platform.tracking import mask_secrets

    source = Path(checkpoint_dir)
    card = ModelCard.read(source)
    weights = next((source / name for name in (BEST_WEIGHTS, REGISTERED_WEIGHTS) if (source / name).is_file()), None)
    if weights is None:
        raise UserInputError(f"{source}: no {BEST_WEIGHTS} or {REGISTERED_WEIGHTS} to register")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target / REGISTERED_WEIGHTS)
    masked = mask_secrets(card.model_dump(mode="json"))  # training paths may hold credentials (a presigned URL)
    card = ModelCard.from_mapping({
        **masked,
        "postprocess": dict(postprocess_default),
        "postprocess_per_dataset": {k: dict(v) for k, v in postprocess_per_dataset.items()},
        "validation": dict(metrics),
        "weights_sha256": file_sha256(target / REGISTERED_WEIGHTS),
    }, str(source))
    card.write(target)
    return card


def register_checkpoint(checkpoint_dir: Path, *, name: str, run_id: str, tracking_uri: str,
                        postprocess_default: Mapping[str, Any],
                        postprocess_per_dataset: Mapping[str, Mapping[str, Any]],
                        metrics: Mapping[str, float], tags: Mapping[str, str] | None = None,
                        alias: str | None = CANDIDATE_ALIAS):
    """Log ``checkpoint_dir``'s best model into run ``run_id`` and register it as a new version of ``name``.

    Returns the new ``ModelVersion``; ``alias`` (default ``candidate``) is moved to it.
    """
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from celltune.platform.fine_tune import provenance_tags
    from celltune.platform.tracking import flatten_params, metric_name

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="celltune-register-") as scratch:
        folder = Path(scratch) / "celltune"
        card = package_checkpoint(Path(checkpoint_dir), folder, postprocess_default=postprocess_default,
                                  postprocess_per_dataset=postprocess_per_dataset, metrics=metrics)
        example = _input_example(card)
        model_dir = Path(scratch) / "model"
        # save_model + client calls rather than the fluent log_model, which would repoint this process's (and its
        # subprocesses') global tracking and registry URIs.
        mlflow.pyfunc.save_model(str(model_dir), python_model=str(PYFUNC_CODE), artifacts={"celltune": str(folder)},
                                 signature=_signature(example), input_example=example,
                                 pip_requirements=_requirements())
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, model_type="celltune",
                                            params=flatten_params(card.train_config))
        client.log_model_artifacts(logged.model_id, str(model_dir))
        client.finalize_logged_model(logged.model_id, "READY")
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version_tags = {
        "celltune.seg_mean": str(float(metrics.get("seg_mean", float("nan")))),
        "celltune.metrics": json.dumps({metric_name(k): float(v) for k, v in metrics.items()}, sort_keys=True),
        "celltune.architecture": card.architecture,
        "celltune.target_kind": card.target_kind,
        "celltune.postprocess": json.dumps({"default": card.postprocess, "per_dataset": card.postprocess_per_dataset},
                                           sort_keys=True),
        "celltune.normalization": card.normalization,
        "celltune.key_settings": json.dumps(key_settings(card.train_config), sort_keys=True),
        **provenance_tags(card.train_config),
        **_cost_tags(card),
        **dict(tags or {}),
    }
    # Tags go in with the version, so a version never exists without them (a resumed search looks for them).
    version = client.create_model_version(name, source=logged.artifact_location, run_id=run_id,
                                          model_id=logged.model_id, tags=version_tags)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return client.get_model_version(name, version.version)


def _cost_tags(card: ModelCard) -> dict[str, str]:
    """``celltune.params`` and ``celltune.gmac_512`` (convolution GMac per 512x512 frame, counted on the meta
    device), and ``celltune.cpu_frames_per_s`` (512x512 frames per second on this machine's CPU, with the thread
    count in ``celltune.cpu_threads``); empty, with a log line, for a model that cannot be traced or run so."""
    import torch

    from celltune.trainables.architectures import model_from_config
    from celltune.trainables.complexity import cpu_frames_per_second, model_cost

    try:
        model = model_from_config(card.model.registry_config())
        cost, speed = model_cost(model), cpu_frames_per_second(model)
    except Exception as exc:  # a cost is a nicety; never fail a registration over it
        logger.warning("no cost tags for %s: %s", card.architecture, exc)
        return {}
    passes = 8 if card.tta else 1  # a model chosen with TTA runs its network 8 times per frame
    return {"celltune.params": str(int(cost["params"])), "celltune.gmac_512": f"{passes * cost['gmac_512']:.3f}",
            "celltune.cpu_frames_per_s": f"{speed / passes:.3g}", "celltune.cpu_threads": str(torch.get_num_threads())}


def _input_example(card: ModelCard):
    """A small raw frame batch ``(1, H, W)``: what the pyfunc model takes."""
    import numpy as np

    side = max(card.size_multiple * 2, 32)
    return np.random.default_rng(0).integers(0, 255, size=(1, side, side)).astype(np.float32)


def _signature(example):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    shape = (-1,) * example.ndim
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
                          outputs=Schema([TensorSpec(np.dtype(np.int32), shape)]),
                          params=ParamSchema([ParamSpec("dataset", "string", "")]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("celltune", "torch", "safetensors", "numpy", "scikit-image", "scipy"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins
