"""Does a training config hang together? Model, loss, thresholds and crops, checked before anything runs.

Shared by `celltune train` (before Ray starts) and search-space validation (for every choice a space can
make), so both reject the same configs with the same one-line messages.
"""

from __future__ import annotations

import json
from functools import lru_cache

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import ModelSpec
from celltune.trainables.config import TrainConfig


def check_model_and_loss(config: TrainConfig) -> ModelSpec:
    """Validate names, options and their agreement; return the model's spec.

    Raises:
        UserInputError: unknown or bad model/loss options, a loss for another target kind, thresholds the
            model's post-processing does not have, a crop that is not a multiple of the model's size multiple,
            or ``mix`` with several crop sizes.
    """
    from celltune.trainables.architectures import unknown_name
    from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS

    spec = _model_spec(json.dumps([config.model.name, config.model.options], sort_keys=True, default=str))
    if "margin" in config.loss.options:
        raise UserInputError("loss.options.margin: set data.pad instead (the loss ignores the padded border)")
    wanted = _loss_kind(json.dumps([config.loss.name, config.loss.options], sort_keys=True, default=str))
    if wanted != spec.target_kind:
        raise UserInputError(f"loss.name: {config.loss.name!r} trains {wanted} targets but model "
                             f"{config.model.name!r} predicts {spec.target_kind}")
    accepted = DEFAULT_POSTPROCESS_PARAMS[spec.target_kind]
    for name in config.postprocess:
        if name not in accepted:
            raise UserInputError(unknown_name("post-processing parameter", name, accepted,
                                              context=f"postprocess of {spec.target_kind} model "
                                                      f"{config.model.name!r}: "))
    crops = {config.data.crop_for(name) for name in config.data.dataset_names}
    for crop in crops:
        if crop != "short_side" and crop % spec.size_multiple:
            raise UserInputError(f"data.crop: {crop} is not a multiple of {spec.size_multiple}, "
                                 f"which model {config.model.name!r} needs")
    if config.training.scheme == "mix" and len(crops) > 1:
        raise UserInputError("training.scheme: 'mix' pools all datasets into one loader and needs one crop size")
    return spec


@lru_cache(maxsize=256)
def _model_spec(key: str) -> ModelSpec:
    """Building on the meta device checks every option value; cached since spaces check many combinations."""
    from celltune.trainables.architectures import validate_model

    name, options = json.loads(key)
    return validate_model(name, **options)


@lru_cache(maxsize=256)
def _loss_kind(key: str) -> str:
    from celltune.trainables.losses import build_loss, loss_spec

    name, options = json.loads(key)
    build_loss(name, **options)
    return loss_spec(name).target_kind
