"""Read a YAML config, apply ``--set key=value`` overrides, validate it, and say exactly what is wrong."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from celltune.data_prep.errors import UserInputError

Model = TypeVar("Model", bound=BaseModel)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; people write learning rates that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserInputError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set dotted keys from ``key=value`` strings; values are parsed as YAML (``8``, ``1e-4``, ``[a, b]``)."""
    result = _deep_copy(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--set {item!r}: expected key=value, e.g. training.epochs=10")
        try:
            value = _load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserInputError(f"--set {item!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def validate(model: type[Model], tree: dict[str, Any], source: str) -> Model:
    """Validate into ``model``; the first error becomes one line: source, dotted key path, problem."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise UserInputError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "literal[")))
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "literal_error":
        message = f"got {first.get('input')!r}; {first['msg'].lower()}"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{path or 'config'}: {message}{more}"


def load_config(model: type[Model], path: Path, overrides: Iterable[str] = ()) -> Model:
    return validate(model, apply_overrides(read_yaml(path), overrides), str(path))


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}
