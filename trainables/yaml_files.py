"""YAML files for configs and search spaces: one loader, one way to report what is wrong with them.

Shared by `celltune train` configs (platform) and search-space files (search_spaces), which both validate
into pydantic models from :mod:`celltune.trainables.config`.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from celltune.data_prep.common import UserInputError, did_you_mean


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 says string) and rejects repeated keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            repeated = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable keys: construct_mapping reports them
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str) -> Any:
    """Parse YAML safely, with ``1e-4`` as a float and repeated keys refused."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping from ``path``; one-line errors for unreadable files, bad YAML and non-mappings."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a {what} is YAML text") \
            from None
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise UserInputError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: a {what} must be a mapping, got {type(data).__name__}")
    return data


_TYPE_TAG = re.compile(r"^(constrained-|function-|literal\[|int$|float$|str$|bool$|list\[|dict\[|tuple\[|union\[|"
                       r"lax-|strict-|json-or-python\[|is-instance\[|nullable\[|none$)")


_CLASS_ALTERNATIVE = re.compile(r" or instance of \w+")  # "a valid dictionary or instance of DataConfig"


def _section(annotation: Any) -> Any:
    """An optional section's model (``DataConfig | None`` -> ``DataConfig``); other annotations as they are."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return sections[0] if len(sections) == 1 else None
    return annotation


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys the section at ``loc`` accepts, following ``model``'s fields (through optional sections, lists and
    mappings of sections); None where the path leaves what the annotations say."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, str) and _TYPE_TAG.match(part):
            continue
        annotation = _section(annotation)
        origin = typing.get_origin(annotation)
        if origin in (list, tuple, dict) or (isinstance(origin, type) and issubclass(origin, Mapping)):
            annotation = typing.get_args(annotation)[-1] if typing.get_args(annotation) else Any
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        annotation = field.annotation
    annotation = _section(annotation)
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return None
    return [field.alias or name for name, field in annotation.model_fields.items()]


def describe_validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first problem as ``dotted.key: problem`` (one line), in the user's keys: pydantic's type tags of
    union members (``constrained-int``, ``dict[str,...]``) are left out, and the alternatives a union tried are
    said together. Given the ``model`` that was validated, an unknown key gets a did-you-mean among every key
    of its section (else among the missing ones only)."""
    errors = exc.errors(include_url=False)

    def key_path(error) -> str:
        return ".".join(str(p) for p in error["loc"] if not (isinstance(p, str) and _TYPE_TAG.match(p)))

    # a union tried as a scalar and as a mapping reports both; the deepest path is where the user's value went wrong,
    # and of equal depth an unknown key goes first (a misspelt key also makes its right spelling "missing")
    first = max(errors, key=lambda error: (len(key_path(error).split(".")), error["type"] == "extra_forbidden"))
    path = key_path(first)
    same = [error for error in errors if key_path(error) == path]
    messages: list[str] = []
    for error in same:
        message = _CLASS_ALTERNATIVE.sub("", str(error["msg"]).removeprefix("Value error, "))
        if error["type"] == "extra_forbidden":
            try:  # only a hint: an annotation the walk does not know must not turn the message into a traceback
                known = _keys_at(model, tuple(error["loc"][:-1])) if model is not None else None
            except Exception:
                known = None
            if known is None:
                known = [str(e["loc"][-1]) for e in errors
                         if e["type"] == "missing" and e["loc"][:-1] == error["loc"][:-1]]
            hint = did_you_mean(error["loc"][-1], known)
            message = f"unknown key ({hint})" if hint else "unknown key"
        elif error["type"] == "literal_error":
            message = message[0].lower() + message[1:]
        message = message[0].lower() + message[1:] if messages else message
        if message not in messages:
            messages.append(message)
    message = " / ".join(messages)
    if first["type"] == "literal_error" or len(messages) > 1:
        message = f"got {first.get('input')!r}; {message[0].lower()}{message[1:]}"
    others = len({key_path(error) for error in errors if not path.startswith(key_path(error))})
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return f"{path or 'file'}: {message}{more}"


def set_dotted_keys(tree: Mapping[str, Any], values: Mapping[str, Any], *, source: str = "sampled config"
                 ) -> dict[str, Any]:
    """A deep copy of ``tree`` with each dotted key set (``--set`` overrides, search samples); shallower keys
    first, so a section can be replaced.

    Missing sections on the way are created (``loss.options.j_weight`` on a tree without ``loss.options``).

    Raises:
        UserInputError: a key runs through a value that is not a section.
    """
    result = copy.deepcopy(dict(tree))
    prefix = f"{source}: " if source else ""
    for key, value in sorted(values.items(), key=lambda item: item[0].count(".")):
        parts = key.split(".")
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserInputError(f"{prefix}{'.'.join(parts[:i + 1])} is a value ({child!r}), not a section, "
                                     f"so {key} cannot be set")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return result
