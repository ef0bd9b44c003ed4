"""The typed training configuration: what a YAML file, `--set` overrides and Tune samples are validated into.

One tree of pydantic models with ``extra="forbid"``, so an unknown key or a bad value fails at the edge with
the key's path and what is allowed. Everything below the edge (models, losses, loaders) takes plain values.
Defaults follow Guo et al.'s XB-Net setup where the paper gives one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

DataConfiguration = Literal["gt", "st", "gt+st", "all-gt", "all-st", "all-gt+st"]
Scheme = Literal["mix", "seq", "fix", "shu", "cho", "acc"]
CropSize = PositiveInt | Literal["short_side"]
Scale = Annotated[float, Field(ge=0.1, le=4.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Random flips and 90-degree rotations (one of the six, uniformly), plus optional noise and jitter.

    Rotation by arbitrary angles and elastic deformation (Simard et al., ICDAR 2003: a displacement field of
    uniform noise in [-1, 1] smoothed by a Gaussian of std ``elastic_sigma`` and scaled by ``elastic_alpha``
    pixels) move the image (linear interpolation) and every target (nearest neighbour) together; each is drawn
    with its probability, and all are off by default.
    """

    flips_and_rotations: bool = True
    noise_std: float = Field(0.0, ge=0.0, description="std of additive noise on [0, 1] images (0: none)")
    noise_kind: Literal["half_normal", "gaussian"] = Field(
        "half_normal", description="half_normal: |N(0, s)| as in U-SE-ResNet; gaussian: zero-mean N(0, s)")
    noise_p: float = Field(1.0, ge=0.0, le=1.0, description="probability of adding noise when noise_std > 0")
    intensity_jitter: float = Field(0.0, ge=0.0, lt=1.0, description="max relative gain/offset change")
    rotation_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of a rotation by a random angle")
    rotation_max_degrees: float = Field(180.0, gt=0.0, le=180.0, description="angles drawn from +-this")
    elastic_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of an elastic deformation")
    elastic_alpha: float = Field(200.0, ge=0.0, description="scale of the smoothed displacement field (pixels)")
    elastic_sigma: float = Field(10.0, gt=0.0, description="std of the Gaussian smoothing the field (pixels)")


_PER_DATASET_FIELDS = ("crop", "batch_size", "scale", "train_frames")


class DataConfig(_Strict):
    stores: list[Path] = Field(min_length=1, description="zarr stores written by `celltune data prep`")
    configuration: DataConfiguration = "all-gt"
    crop: CropSize | dict[str, CropSize] = 256
    batch_size: PositiveInt | dict[str, PositiveInt] = 8
    pad: int | None = Field(None, ge=0, description="reflection padding per side; default 8 (16 for 6 stages)")
    normalization: Literal["minmax", "percentile", "log"] = "minmax"
    augment: AugmentConfig = AugmentConfig()
    foreground_crop_p: float = Field(0.0, ge=0.0, le=1.0,
                                     description="probability that a crop is centred on an annotated cell pixel "
                                                 "instead of placed uniformly (0: always uniform)")
    scale: Scale | dict[str, Scale] = Field(
        1.0, description="resample each dataset's frames by this factor (0.5 halves each side) before cropping, so "
                         "cells have a similar size in pixels across datasets; crops are taken at the resampled "
                         "size, validation SEG is scored at the original resolution")
    ignore_unannotated: bool = Field(
        True, description="the loss ignores pixels near cells that GT TRA marks but GT SEG leaves unannotated "
                          "(sparse GT, e.g. Fluo-N2DH-GOWT1), instead of learning them as background")
    train_frames: PositiveInt | dict[str, PositiveInt] | None = Field(
        None, description="train on this many of a dataset's training frames (or per dataset; None: all), spread "
                          "evenly over its sequences and time: the k of a few-shot curve, with configuration gt")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per dataset")
    cache_in_ram: bool = False

    @property
    def dataset_names(self) -> list[str]:
        return [Path(store).name.removesuffix(".zarr") for store in self.stores]

    def crop_for(self, dataset: str) -> CropSize:
        return self.crop.get(dataset, 256) if isinstance(self.crop, dict) else self.crop

    def batch_size_for(self, dataset: str) -> int:
        return self.batch_size.get(dataset, 8) if isinstance(self.batch_size, dict) else self.batch_size

    def train_frames_for(self, dataset: str) -> int | None:
        return self.train_frames.get(dataset) if isinstance(self.train_frames, dict) else self.train_frames

    def scale_for(self, dataset: str) -> float:
        return float(self.scale.get(dataset, 1.0) if isinstance(self.scale, dict) else self.scale)

    @property
    def scales(self) -> dict[str, float]:
        """Every dataset's resampling factor (the model card records it for prediction)."""
        return {name: self.scale_for(name) for name in self.dataset_names}

    def restricted_to(self, names: list[str]) -> DataConfig:
        """The same settings for the datasets ``names`` only (leave-one-out and few-shot runs): their stores,
        and per-dataset values that keep their entries for those datasets."""
        stores = [store for store, name in zip(self.stores, self.dataset_names, strict=True) if name in names]
        update: dict[str, Any] = {"stores": stores}
        for field in _PER_DATASET_FIELDS:
            value = getattr(self, field)
            if isinstance(value, dict):
                update[field] = {key: item for key, item in value.items() if key in names}
        return DataConfig.model_validate({**self.model_dump(), **update})

    @model_validator(mode="after")
    def _per_dataset_keys_exist(self) -> DataConfig:
        names = set(self.dataset_names)
        for field in _PER_DATASET_FIELDS:
            value = getattr(self, field)
            if isinstance(value, dict):
                unknown = sorted(set(value) - names)
                if unknown:
                    raise ValueError(f"{field} names unknown datasets {unknown}; datasets are {sorted(names)}")
        return self


class ModelConfig(_Strict):
    name: str = "xbnet"
    options: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Strict):
    """A loss by its registered name (:mod:`celltune.trainables.losses`); a new loss needs no edit here."""

    name: str = "ce"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from celltune.trainables.losses import list_losses  # the loss modules import torch: only when validating
        from celltune.trainables.losses.loss_registry import unknown_loss_message

        if name not in list_losses():
            raise ValueError(unknown_loss_message(name))
        return name


class OptimizerConfig(_Strict):
    """AdamW (decoupled weight decay, the default), Adam (L2 penalty in the gradient) or SGD with momentum.

    `betas` and `amsgrad` apply to the Adam family, `momentum` and `nesterov` to SGD (the original U-Net used SGD
    with momentum 0.99); see `celltune.trainables.optimizers.build_optimizer`.
    """

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = True
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    nesterov: bool = Field(False, description="SGD with Nesterov momentum (needs momentum > 0)")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerConfig:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0")
        return self


class SchedulerConfig(_Strict):
    """`warm_restarts` with t0=100, t_mult=2 restarts at epochs 100, 300, 700 (the paper's schedule).

    `one_cycle` follows the run's progress in steps, or in wall time under `training.max_minutes`, so a run
    stopped by its time budget has still warmed up and annealed.
    """

    name: Literal["constant", "cosine", "warm_restarts", "step", "one_cycle"] = "warm_restarts"
    eta_min: float = Field(1e-6, ge=0.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                   description="one_cycle: share of the run spent warming up from lr/25 to lr")
    t0: PositiveInt = 100
    t_mult: PositiveInt = 2
    step_size: PositiveInt = 30
    gamma: float = Field(0.5, gt=0.0, le=1.0)


class TrainingConfig(_Strict):
    scheme: Scheme = "acc"
    epochs: PositiveInt = 1500
    steps_per_epoch: PositiveInt | None = Field(
        None, description="minibatches per dataset per epoch; default 20 for several datasets (paper Table 3), "
                          "one pass over the frames for a single dataset")
    eval_every: PositiveInt = 10
    max_minutes: float | None = Field(
        None, gt=0.0, description="wall-time budget: the run ends with an evaluation at the first epoch past it "
                                  "(or after `epochs`, whichever comes first); time spent before a resume counts")
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = Field(
        None, description="channels-last memory format; null: on CUDA for models without GroupNorm (faster there), "
                          "off on the CPU")


class ResourcesConfig(_Strict):
    num_workers: PositiveInt = 1
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class InitConfig(_Strict):
    """Start from a trained model's weights (fine-tuning) instead of a random initialisation.

    ``model`` is what the user names (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a checkpoint folder);
    the driver resolves it, checks the architecture fits, and fills ``weights`` (a local safetensors file the
    workers read) and ``parent`` (the registered name, version and run, recorded as provenance).
    """

    model: str = Field(min_length=1, description="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    weights: Path | None = Field(None, description="set by the driver: the resolved weights (safetensors)")
    parent: dict[str, str] = Field(default_factory=dict, description="set by the driver: name, version, run_id")
    freeze_encoder: bool = Field(False, description="keep the encoder (entry + encoder stages) as initialised")
    encoder_lr: float | None = Field(None, gt=0.0, description="learning rate of the encoder (default optimizer.lr)")

    @model_validator(mode="after")
    def _frozen_has_no_lr(self) -> InitConfig:
        if self.freeze_encoder and self.encoder_lr is not None:
            raise ValueError("init.encoder_lr has no effect with init.freeze_encoder: set one of them")
        return self


class TrainConfig(_Strict):
    """A whole training run; `celltune train --config FILE --set key=value` resolves to one of these."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    training: TrainingConfig = TrainingConfig()
    postprocess: dict[str, Any] = Field(default_factory=dict, description="thresholds for the model's target kind")
    resources: ResourcesConfig = ResourcesConfig()
    init: InitConfig | None = Field(None, description="fine-tune from these weights (celltune train --init)")

    @field_validator("postprocess")
    @classmethod
    def _plain_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not isinstance(item, int | float | bool):
                raise ValueError(f"postprocess.{key} must be a number, got {item!r}")
        return value
