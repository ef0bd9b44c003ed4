"""Value checks shared by the model constructors: one-line `UserInputError`s naming the option and what is allowed."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

from celltune.data_prep.common import UserInputError


def check_choice(model: str, option: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise unless `value` is one of `allowed`."""
    allowed = tuple(allowed)
    if isinstance(value, bool) != isinstance(allowed[0], bool) or value not in allowed:
        raise UserInputError(f"{model}: {option}={value!r} is not supported; choose one of {allowed}")


def check_int(model: str, option: str, value: Any, *, minimum: int = 1, multiple_of: int = 1) -> None:
    """Raise unless `value` is an integer >= `minimum` and a multiple of `multiple_of` (numpy integers count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum or value % multiple_of:
        rule = f"an integer >= {minimum}" + (f" and a multiple of {multiple_of}" if multiple_of > 1 else "")
        raise UserInputError(f"{model}: {option}={value!r} must be {rule}")


def check_bool(model: str, option: str, value: Any) -> None:
    """Raise unless `value` is a bool (a YAML "yes" string would otherwise count as true)."""
    if not isinstance(value, bool):
        raise UserInputError(f"{model}: {option}={value!r} must be true or false")
