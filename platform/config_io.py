"""Read a YAML config, apply ``--set key=value`` overrides, validate it, and say exactly what is wrong."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from celltune.data_prep.common import UserInputError
from celltune.trainables.yaml_files import describe_validation_error, load_yaml_text, read_yaml, set_dotted_keys

Model = TypeVar("Model", bound=BaseModel)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings as dotted key -> value; values are parsed as YAML (``8``, ``1e-4``, ``[a, b]``)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--set {item!r}: expected key=value, e.g. training.epochs=10")
        try:
            parsed[key.strip()] = load_yaml_text(raw) if raw.strip() else ""
        except yaml.YAMLError:
            parsed[key.strip()] = raw
    return parsed


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set dotted keys from ``key=value`` strings (see :func:`parse_overrides`)."""
    return set_dotted_keys(tree, parse_overrides(overrides), source="--set")


def validate(model: type[Model], tree: dict[str, Any], source: str) -> Model:
    """Validate into ``model``; the first error becomes one line: source, dotted key path, problem."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise UserInputError(f"{source}: {describe_validation_error(exc, model)}") from None


def load_config(model: type[Model], path: Path, overrides: Iterable[str] = ()) -> Model:
    return validate(model, apply_overrides(read_yaml(path, "config"), overrides), str(path))


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}
