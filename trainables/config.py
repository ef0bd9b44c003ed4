"""The typed training configuration: what a YAML file, `--set` overrides and Tune samples are validated into.

One tree of pydantic models with ``extra="forbid"``, so an unknown key or a bad value fails at the edge with
the key's path and what is allowed. Everything below the edge (models, losses, loaders) takes plain values.
Defaults follow Guo et al.'s XB-Net setup where the paper gives one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

DataConfiguration = Literal["gt", "st", "gt+st", "all-gt", "all-st", "all-gt+st"]
Scheme = Literal["mix", "seq", "fix", "shu", "cho", "acc"]
CropSize = PositiveInt | Literal["short_side"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    """Random flips and 90-degree rotations (one of the six, uniformly), plus optional noise and jitter."""

    flips_and_rotations: bool = True
    noise_std: float = Field(0.0, ge=0.0, description="std of additive |N(0, s)| noise on [0, 1] images")
    intensity_jitter: float = Field(0.0, ge=0.0, lt=1.0, description="max relative gain/offset change")


class DataConfig(_Strict):
    stores: list[Path] = Field(min_length=1, description="zarr stores written by `celltune data prep`")
    configuration: DataConfiguration = "all-gt"
    crop: CropSize | dict[str, CropSize] = 256
    batch_size: PositiveInt | dict[str, PositiveInt] = 8
    pad: int | None = Field(None, ge=0, description="reflection padding per side; default 8 (16 for 6 stages)")
    normalization: Literal["minmax", "percentile"] = "minmax"
    augment: AugmentConfig = AugmentConfig()
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per dataset")
    cache_in_ram: bool = False

    @property
    def dataset_names(self) -> list[str]:
        return [Path(store).name.removesuffix(".zarr") for store in self.stores]

    def crop_for(self, dataset: str) -> CropSize:
        return self.crop.get(dataset, 256) if isinstance(self.crop, dict) else self.crop

    def batch_size_for(self, dataset: str) -> int:
        return self.batch_size.get(dataset, 8) if isinstance(self.batch_size, dict) else self.batch_size

    @model_validator(mode="after")
    def _per_dataset_keys_exist(self) -> DataConfig:
        names = set(self.dataset_names)
        for field in ("crop", "batch_size"):
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
    name: Literal["ce", "ce_j", "edge_bce", "weight_map_ce"] = "ce"
    options: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = True


class SchedulerConfig(_Strict):
    """`warm_restarts` with t0=100, t_mult=2 restarts at epochs 100, 300, 700 (the paper's schedule)."""

    name: Literal["constant", "cosine", "warm_restarts", "step"] = "warm_restarts"
    eta_min: float = Field(1e-6, ge=0.0)
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
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None


class ResourcesConfig(_Strict):
    num_workers: PositiveInt = 1
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


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

    @field_validator("postprocess")
    @classmethod
    def _plain_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if not isinstance(item, int | float | bool):
                raise ValueError(f"postprocess.{key} must be a number, got {item!r}")
        return value
