"""Architectures selected by name: a decorator registry and one factory, in the manner of timm.

A model family registers a builder whose keyword-only arguments, with their defaults, are the family's options:

    @register_model(target_kind="tertiary", size_multiple=16)
    def xbnet(*, width: int = 32) -> XBNet: ...

`build_model(name, **options)` checks the option names, fills in the defaults and calls the builder. A variant is
data, a name bound to a dict of option overrides (`register_variant("unet_xb", "unet", width=32, ...)`), never a
subclass. The model package imports every model module explicitly; this module imports that package on first use
so `build_model` always sees every model. `model_spec` is cheap (names, target kind, size multiple);
`validate_model` runs every value check by building on the meta device, for failing fast before training.

Every built model carries two attributes:

- `model.spec`: the `ModelSpec` for the options it was built with (target kind, output channels, size multiple,
  and for valid-convolution models the pixels lost per side and the smallest input).
- `model.celltune_config`: `{"name": str, "options": dict, "init_options": dict}`, plain JSON/YAML-safe values,
  enough to rebuild the architecture with `model_from_config(config)` and load a checkpoint's state dict into
  it. Options that only set initial weights (`init_only`, e.g. `encoder_weights`) are recorded at their default,
  since the state dict supersedes them and the original file may not exist where the checkpoint is loaded; their
  given values are kept under `"init_options"` for provenance.

Models output logits; losses and inference apply the activation the target kind implies (softmax over channels
for "tertiary" and "binary", a sigmoid per channel for "mask_marker").
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from celltune.data_prep.common import UserInputError, did_you_mean
from celltune.trainables.target_kinds import TARGET_KINDS as TARGET_KIND_TABLE

logger = logging.getLogger(__name__)

TargetKindName = str  # a key of celltune.trainables.target_kinds.TARGET_KINDS
# Output channels per target kind (the kinds' table says what each channel is).
OUT_CHANNELS: dict[str, int] = {name: kind.channels for name, kind in TARGET_KIND_TABLE.items()}
TARGET_KINDS: tuple[str, ...] = tuple(TARGET_KIND_TABLE)

SizeMultiple = int | Callable[[Mapping[str, Any]], int]
OptionalSize = int | Callable[[Mapping[str, Any]], int] | None


def unknown_name(what: str, value: object, choices: Iterable[str], *, context: str = "") -> str:
    """One-line message for an unknown name, with close matches (difflib) and the sorted list of valid names."""
    names = sorted(choices)
    hint = f"; {suggestion}" if (suggestion := did_you_mean(value, names, n=3, cutoff=0.5)) else ""
    return f"{context}unknown {what} {value!r}{hint} (available: {', '.join(names) or 'none'})"


def _plain(value: Any) -> Any:
    """Plain lists, dicts, str and numbers, so options survive JSON, YAML and `torch.load(weights_only=True)`."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()  # numpy scalars sampled by a search space
    return value


@dataclass(frozen=True)
class ModelSpec:
    """What a registered architecture takes and produces, for one set of options.

    Attributes:
        name: registered name (a family or a variant).
        target_kind: "tertiary", "mask_marker" or "binary".
        in_channels: image channels of the (B, C, H, W) input (1 for all CTC data).
        out_channels: logit channels (3 for tertiary, 2 otherwise).
        size_multiple: H and W of the input must be multiples of this (see `pad_to_multiple`); for a model with
            `output_crop > 0`, input sides must be `min_input_size + k * size_multiple` instead.
        time_window: consecutive frames per input; 1 for single-frame models, T > 1 for models fed
            (B, T, 1, H, W) windows ending at the target frame (set by a model option `time_window`).
        defaults: every option of the model with its registered default.
        options: `defaults` updated by the options this spec was made for.
        output_crop: pixels the model loses on each side (unpadded "valid" convolutions): an (H, W) input gives
            an (H - 2 * output_crop, W - 2 * output_crop) output. 0 for "same"-padded models.
        min_input_size: smallest input side (`size_multiple` for "same"-padded models).
    """

    name: str
    target_kind: str
    in_channels: int
    out_channels: int
    size_multiple: int
    time_window: int = 1
    defaults: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    output_crop: int = 0
    min_input_size: int = 0

    def __post_init__(self) -> None:
        if self.min_input_size == 0:  # frozen dataclass: derive the default from size_multiple once
            object.__setattr__(self, "min_input_size", self.size_multiple)

    def is_valid_input(self, side: int) -> bool:
        """Whether an input side of `side` pixels fits the model (`min_input_size + k * size_multiple`, k >= 0)."""
        return side >= self.min_input_size and (side - self.min_input_size) % self.size_multiple == 0

    def valid_input_size(self, side: int) -> int:
        """The smallest valid input side >= `side`."""
        steps = max(0, -(-(side - self.min_input_size) // self.size_multiple))
        return self.min_input_size + steps * self.size_multiple

    def input_size_for(self, output_side: int) -> int:
        """The smallest valid input side whose output covers `output_side` pixels."""
        return self.valid_input_size(output_side + 2 * self.output_crop)

    def for_options(self, options: Mapping[str, Any]) -> ModelSpec:
        """This spec with `options` applied on top of its own options (looked up in the default registry)."""
        return model_spec(self.name, **{**self.options, **options})

    def size_multiple_for(self, options: Mapping[str, Any]) -> int:
        """Size multiple with `options` applied on top of this spec's options, e.g. `{"stages": 6}` -> 32."""
        return self.for_options(options).size_multiple


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., nn.Module]
    target_kind: TargetKindName | None
    in_channels: int
    size_multiple: SizeMultiple
    defaults: dict[str, Any]
    init_only: frozenset[str]
    base: str
    output_crop: SizeMultiple = 0
    min_input_size: OptionalSize = None
    trainable: bool = True

    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        for key in options:
            if key not in self.defaults:
                raise UserInputError(unknown_name("option", key, self.defaults, context=f"model {self.name!r}: "))
        return _plain({**self.defaults, **options})

    def spec(self, options: Mapping[str, Any]) -> ModelSpec:
        resolved = self.resolve(options)
        kind = resolved["target_kind"] if self.target_kind is None else self.target_kind
        if kind not in OUT_CHANNELS:
            raise UserInputError(f"model {self.name!r}: target_kind={kind!r}; choose one of {', '.join(TARGET_KINDS)}")
        multiple = self.size_multiple(resolved) if callable(self.size_multiple) else self.size_multiple
        crop = self.output_crop(resolved) if callable(self.output_crop) else self.output_crop
        smallest = self.min_input_size(resolved) if callable(self.min_input_size) else self.min_input_size
        return ModelSpec(
            name=self.name,
            target_kind=kind,
            in_channels=self.in_channels,
            out_channels=OUT_CHANNELS[kind],
            size_multiple=int(multiple),
            time_window=int(resolved.get("time_window", 1)),
            defaults=dict(self.defaults),
            options=resolved,
            output_crop=int(crop),
            min_input_size=int(smallest or 0),
        )


def _builder_defaults(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for param in inspect.signature(builder).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.default is inspect.Parameter.empty:
            raise TypeError(
                f"model builder {builder.__name__}: parameter {param.name!r} must be keyword-only with a default"
            )
        defaults[param.name] = param.default
    return defaults


class ModelRegistry:
    """Name -> builder table. The module-level functions use one shared instance; tests may make their own."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def register(
        self,
        builder: Callable[..., nn.Module],
        *,
        size_multiple: SizeMultiple,
        target_kind: TargetKindName | None = None,
        in_channels: int = 1,
        init_only: Iterable[str] = (),
        name: str | None = None,
        output_crop: SizeMultiple = 0,
        min_input_size: OptionalSize = None,
        trainable: bool = True,
    ) -> Callable[..., nn.Module]:
        """Register `builder` under `name` (default: its function name); see `register_model`."""
        name = name or builder.__name__
        if name in self._entries:
            raise ValueError(f"model {name!r} is registered twice")
        defaults = _plain(_builder_defaults(builder))
        if (target_kind is None) == ("target_kind" not in defaults):
            raise TypeError(f"model {name!r}: declare target_kind either in the decorator or as an option, not both")
        if target_kind is not None and target_kind not in OUT_CHANNELS:
            raise ValueError(f"model {name!r}: target_kind={target_kind!r}; choose one of {', '.join(TARGET_KINDS)}")
        init = frozenset(init_only)
        if not init <= defaults.keys():
            raise TypeError(f"model {name!r}: init_only names unknown options {sorted(init - defaults.keys())}")
        entry = _Entry(name, builder, target_kind, in_channels, size_multiple, defaults, init, base=name,
                       output_crop=output_crop, min_input_size=min_input_size, trainable=trainable)
        entry.spec({})  # fail at import time if the defaults themselves are inconsistent
        self._entries[name] = entry
        return builder

    def register_variant(self, name: str, base: str, **overrides: Any) -> None:
        """Register `name` as family `base` with different default options (a variant is data)."""
        if name in self._entries:
            raise ValueError(f"model {name!r} is registered twice")
        parent = self.entry(base)
        defaults = parent.resolve(overrides)
        entry = _Entry(
            name,
            parent.builder,
            parent.target_kind,
            parent.in_channels,
            parent.size_multiple,
            defaults,
            parent.init_only,
            base=parent.base,
            output_crop=parent.output_crop,
            min_input_size=parent.min_input_size,
            trainable=parent.trainable,
        )
        entry.spec({})
        self._entries[name] = entry

    def entry(self, name: str) -> _Entry:
        """The registration of `name`; `UserInputError` with suggestions if unknown."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UserInputError(unknown_name("model", name, self.names())) from None

    def names(self) -> list[str]:
        """Sorted names of the architectures a config can train (not composites such as ``ensemble``)."""
        return sorted(name for name, entry in self._entries.items() if entry.trainable)

    def spec(self, name: str, **options: Any) -> ModelSpec:
        """`ModelSpec` of `name` with `options` over its defaults."""
        return self.entry(name).spec(options)

    def build(self, name: str, **options: Any) -> nn.Module:
        """Build `name` with `options`; see `build_model`."""
        entry = self.entry(name)
        spec = entry.spec(options)
        model = entry.builder(**spec.options)
        made = {
            "size_multiple": getattr(model, "size_multiple", None),
            "output_crop": getattr(model, "output_crop", 0),
            "min_input_size": getattr(model, "min_input_size", spec.size_multiple),
        }
        for attribute, value in made.items():
            if value != getattr(spec, attribute):
                raise RuntimeError(
                    f"model {name!r}: builder made {attribute}={value}, registry declares {getattr(spec, attribute)}"
                )
        model.spec = spec
        options_for_config = {k: (entry.defaults[k] if k in entry.init_only else v) for k, v in spec.options.items()}
        model.celltune_config = {
            "name": name,
            "options": _plain(options_for_config),
            "init_options": _plain({k: spec.options[k] for k in sorted(entry.init_only)}),
        }
        logger.debug("built model %s with options %s", name, spec.options)
        return model

    def from_config(self, config: Mapping[str, Any]) -> nn.Module:
        """Rebuild the architecture recorded in `model.celltune_config`; see `model_from_config`."""
        if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
            raise UserInputError(f"model config {config!r}: expected a mapping with a string 'name'")
        options = config.get("options", {})
        if not isinstance(options, Mapping):
            raise UserInputError(f"model config for {config['name']!r}: 'options' must be a mapping, got {options!r}")
        return self.build(config["name"], **options)


_REGISTRY = ModelRegistry()
_models_imported = False


def _registry() -> ModelRegistry:
    """The shared registry, after the model package has registered every family."""
    global _models_imported
    if not _models_imported:
        importlib.import_module("celltune.trainables.models")
        _models_imported = True
    return _REGISTRY


def register_model(
    *,
    size_multiple: SizeMultiple,
    target_kind: TargetKindName | None = None,
    in_channels: int = 1,
    init_only: Iterable[str] = (),
    name: str | None = None,
    output_crop: SizeMultiple = 0,
    min_input_size: OptionalSize = None,
    trainable: bool = True,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder in the shared registry.

    The builder's keyword-only arguments and their defaults are the model's options; it must return a module
    with a `size_multiple` attribute (and `output_crop` / `min_input_size` attributes when it declares them).

    Options reach the builder as plain values: tuples as lists, numpy scalars as Python numbers, paths as str.

    Args:
        size_multiple: the input size multiple, or a function of the resolved options returning it.
        target_kind: fixed target kind; leave None when the builder has a `target_kind` option instead.
        in_channels: input image channels.
        init_only: options that only affect initial weights (recorded at their default in `celltune_config`).
        name: registered name (default: the builder's function name).
        output_crop: pixels per side the model's output is smaller than its input (unpadded convolutions), or a
            function of the resolved options; 0 for "same"-padded models.
        min_input_size: smallest valid input side when `output_crop > 0` (valid sides are `min_input_size + k *
            size_multiple`), or a function of the options; None = `size_multiple`.
        trainable: False for a composite of trained models (``ensemble``): it rebuilds and predicts, but
            configs cannot train it and `list_models` leaves it out.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return _REGISTRY.register(
            builder,
            size_multiple=size_multiple,
            target_kind=target_kind,
            in_channels=in_channels,
            init_only=init_only,
            name=name,
            output_crop=output_crop,
            min_input_size=min_input_size,
            trainable=trainable,
        )

    return decorate


def register_variant(name: str, base: str, **overrides: Any) -> None:
    """Register `name` as the registered family `base` with `overrides` as its defaults."""
    _REGISTRY.register_variant(name, base, **overrides)


def list_models() -> list[str]:
    """Sorted names of every trainable registered model and variant."""
    return _registry().names()


def model_spec(name: str, **options: Any) -> ModelSpec:
    """The `ModelSpec` of model `name` for `options` (its defaults when none are given).

    Raises:
        UserInputError: unknown name or option (with "did you mean"), or an invalid target kind.
    """
    return _registry().spec(name, **options)


def build_model(name: str, **options: Any) -> nn.Module:
    """Build registered model `name` with `options` over its defaults.

    The module returned maps (B, in_channels, H, W) images, H and W multiples of `model.size_multiple`, to
    (B, out_channels, H, W) logits (H - 2 * output_crop, W - 2 * output_crop for valid-convolution models, whose
    input sides are `spec.min_input_size + k * size_multiple`), and carries `model.spec` and
    `model.celltune_config` (module docstring).

    Raises:
        UserInputError: unknown name or option (with "did you mean"), or an invalid option value.
    """
    return _registry().build(name, **options)


def validate_model(name: str, **options: Any) -> ModelSpec:
    """Run every check `build_model` would, without allocating weights (builds on the meta device).

    Use it to fail fast on a config before starting workers; `model_spec` only checks names, the target kind and
    what the size multiple depends on. An `encoder_weights`-style file is still read and checked.

    Raises:
        UserInputError: unknown name or option, or an invalid option value.
    """
    if not _registry().entry(name).trainable:
        raise UserInputError(f"model {name!r} is made from trained models (a search registers it); it cannot be "
                             f"trained: choose one of {', '.join(list_models())}")
    with torch.device("meta"):
        return build_model(name, **options).spec


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from its recorded `celltune_config` (`{"name": ..., "options": {...}}`), untrained.

    Load the checkpoint's state dict into the result afterwards.

    Raises:
        UserInputError: malformed config, unknown name or option.
    """
    return _registry().from_config(config)
