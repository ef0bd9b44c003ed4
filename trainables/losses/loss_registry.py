"""Losses chosen by name: a decorator fills the table, ``build_loss`` is the one factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from celltune.data_prep.common import UserInputError, did_you_mean
from celltune.trainables.losses.base import TARGET_KINDS, SegmentationLoss

_LOSSES: dict[str, type[SegmentationLoss]] = {}


@dataclass(frozen=True)
class LossSpec:
    """What a registered loss consumes, so a training config can be checked before any data is read."""

    name: str
    target_kind: str
    needs_weight: bool
    needs_epoch: bool
    options: tuple[str, ...]


def register_loss(name: str, *, target_kind: str) -> Callable[[type[SegmentationLoss]], type[SegmentationLoss]]:
    """Class decorator: register a :class:`SegmentationLoss` under ``name`` for ``target_kind`` targets."""
    if target_kind not in TARGET_KINDS:
        raise ValueError(f"register_loss({name!r}): target_kind={target_kind!r} not in {TARGET_KINDS}")

    def decorate(cls: type[SegmentationLoss]) -> type[SegmentationLoss]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is registered twice ({_LOSSES[name].__name__}, {cls.__name__})")
        cls.name = name
        cls.target_kind = target_kind
        _LOSSES[name] = cls
        return cls

    return decorate


def list_losses() -> list[str]:
    """Sorted names of the registered losses."""
    return sorted(_LOSSES)


def unknown_loss_message(name: str) -> str:
    hint = f"; {suggestion}" if (suggestion := did_you_mean(name, _LOSSES)) else ""
    return f"unknown loss {name!r}{hint} available: {', '.join(list_losses())}"


def _lookup(name: str) -> type[SegmentationLoss]:
    if name not in _LOSSES:
        raise UserInputError(unknown_loss_message(name))
    return _LOSSES[name]


def _options(cls: type[SegmentationLoss]) -> tuple[str, ...]:
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY))


def loss_spec(name: str) -> LossSpec:
    """Target kind, extra inputs and accepted options of loss ``name``.

    Raises:
        UserInputError: unknown name (with a suggestion and the list of names).
    """
    cls = _lookup(name)
    return LossSpec(name, cls.target_kind, cls.needs_weight, cls.needs_epoch, _options(cls))


def loss_target_kind(name: str) -> str:
    """``"tertiary"``, ``"mask_marker"`` or ``"binary"``: the target encoding loss ``name`` needs."""
    return _lookup(name).target_kind


def build_loss(name: str, **options: object) -> SegmentationLoss:
    """Build a registered loss from plain keyword options, e.g. ``build_loss("ce_j", j_weight=0.05)``.

    Raises:
        UserInputError: unknown name, unknown option (listing the accepted ones) or a bad option value.
    """
    cls = _lookup(name)
    accepted = _options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserInputError(f"loss {name!r}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return cls(**options)
