"""Hostile config and search-space files, systematically (issue 18): a valid file changed at random, a few ways at
once, then given to `celltune train --dry-run` or `celltune search --dry-run` as a user would.

For every case the command either accepts the file (exit 0) or refuses it with exit code 2 and one stderr line
that names the user's key (a prefix of a key the case changed, in the file's own dotted words) or the file, and
never pydantic's internal type names. The demo's stores make the valid cases pass the store checks too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from celltune.platform.cli import main
from celltune.search_spaces.space import resolve_space_path

# Words of pydantic's own vocabulary that must never reach a user.
PYDANTIC_WORDS = ("constrained-", "pydantic", "[type=", "input_value", "input_type", "dict[", "list[", "Union[",
                  "typing.", "Literal[", "function-after", "function-before", "function-wrap", "json-or-python",
                  "lax-or-strict", "tagged-union", "is-instance", "model_type", "ValidationError", "errors.pydantic")

HOSTILE_VALUES = st.sampled_from([
    -1, 0, 1, 10**20, -1e-9, 1e30, math.nan, math.inf, True, None, "", "abc", "1e-3", "-", [], {}, [1, "x"],
    {"x": 1}, [[1]], "<stores>", "../../etc/passwd", "a" * 300,
])


def _paths(tree: Any, prefix: str = "") -> list[str]:
    """Every key path of a YAML tree (sections and leaves; lists are leaves)."""
    if not isinstance(tree, dict):
        return []
    found = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        found.append(path)
        found += _paths(value, f"{path}.")
    return found


def _get_parent(tree: dict, path: str) -> tuple[dict | None, str]:
    *parents, last = path.split(".")
    node: Any = tree
    for part in parents:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            return None, last
        node = node[part]
    return node, last


def _misspelt(key: str, index: int) -> str:
    if len(key) < 3:
        return key + "x"
    i = index % (len(key) - 1)
    return key[:i] + key[i + 1] + key[i] + key[i + 2:]


@st.composite
def mutations(draw, paths: list[str]) -> tuple[str, str, Any]:
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "unknown_key", "misspell"]))
    path = draw(st.sampled_from(paths))
    value = draw(HOSTILE_VALUES) if kind == "set" else draw(st.integers(0, 30))
    return kind, path, value


def _apply(tree: dict, mutation: tuple[str, str, Any]) -> str | None:
    """Changes ``tree`` in place; returns the dotted path the change is at (None when it did not apply)."""
    kind, path, value = mutation
    parent, last = _get_parent(tree, path)
    if parent is None or last not in parent:
        return None
    if kind == "set":
        parent[last] = copy.deepcopy(value)
    elif kind == "delete":
        del parent[last]
    elif kind == "unknown_key":
        if not isinstance(parent[last], dict):
            return None
        parent[last]["colour"] = "red"
        return f"{path}.colour"
    elif kind == "misspell":
        new = _misspelt(last, int(value))
        if new == last or new in parent:
            return None
        parent[new] = parent.pop(last)
        return path.rsplit(".", 1)[0] + f".{new}" if "." in path else new
    return path


FILE_DAMAGE = st.sampled_from([None, None, None, None, "empty", "list", "invalid", "binary", "tabs", "scalar"])


def _write(path: Path, tree: dict, damage: str | None) -> None:
    text = yaml.safe_dump(tree, sort_keys=False)
    if damage == "empty":
        text = ""
    elif damage == "list":
        text = "- data\n- model\n"
    elif damage == "invalid":
        text = text[: len(text) // 2] + "\n  bad: [unclosed\n"
    elif damage == "tabs":
        text = text.replace("  ", "\t", 3)
    elif damage == "scalar":
        text = "42\n"
    if damage == "binary":
        path.write_bytes(b"\x00\xff\xfe" + text.encode()[:40])
    else:
        path.write_text(text)


def _run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


def _check_outcome(code: int, err: str, changed: list[str], file: Path, damage: str | None) -> None:
    assert code in (0, 2), err
    if code == 0:
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("celltune: error: ") and "Traceback" not in err, line
    assert not any(word in line for word in PYDANTIC_WORDS), line
    # A damaged file is named; otherwise the message names (after the file) a key path that is a prefix of a
    # changed key, in the file's own dotted words.
    message = line.removeprefix("celltune: error: ")
    if damage is not None:
        assert str(file) in message, line
        return
    message = message.removeprefix(f"{file}:")
    named_keys = set(re.findall(r"[A-Za-z_][\w+-]*(?:\.[\w+-]+)*", message))
    prefixes = {".".join(path.split(".")[:n]) for path in changed for n in range(1, path.count(".") + 2)}
    assert named_keys & prefixes, f"{line!r} names none of {sorted(changed)}"


def _train_tree(stores: Path) -> dict:
    spec = yaml.safe_load(resolve_space_path("demo").read_text())
    tree = spec["base_config"]
    tree["data"]["stores"] = [str(stores / Path(s).name) for s in tree["data"]["stores"]]
    tree["data"]["scale"] = {"Synth-Round": 1.0}
    tree["scheduler"] = {"name": "one_cycle", "warmup_fraction": 0.1}
    tree["training"]["max_minutes"] = 5
    tree["postprocess"] = {"min_area": 10}
    return tree


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(data=st.data())
def test_train_config_files_are_accepted_or_refused_in_one_line_naming_the_key(demo_stores, tmp_path_factory, data):
    tree = _train_tree(demo_stores)
    changes = data.draw(st.lists(mutations(_paths(tree)), min_size=1, max_size=3))
    changed = [path for change in changes if (path := _apply(tree, change))]
    damage = data.draw(FILE_DAMAGE)
    file = tmp_path_factory.mktemp("config") / "my_config.yaml"
    _write(file, tree, damage)
    code, err = _run(["train", "--config", str(file), "--dry-run"])
    event(f"exit {code}")
    _check_outcome(code, err, changed, file, damage)


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(data=st.data())
def test_search_space_files_are_accepted_or_refused_in_one_line_naming_the_key(demo_stores, tmp_path_factory, data):
    tree = yaml.safe_load(resolve_space_path("demo").read_text())
    changes = data.draw(st.lists(mutations(_paths(tree)), min_size=1, max_size=3))
    changed = [path for change in changes if (path := _apply(tree, change))]
    damage = data.draw(FILE_DAMAGE)
    file = tmp_path_factory.mktemp("space") / "my_space.yaml"
    _write(file, tree, damage)
    code, err = _run(["search", "--space", str(file), "--stores", str(demo_stores), "--dry-run"])
    event(f"exit {code}")
    _check_outcome(code, err, changed, file, damage)


def test_the_unchanged_files_are_accepted(demo_stores, tmp_path):
    config = tmp_path / "config.yaml"
    _write(config, _train_tree(demo_stores), None)
    assert _run(["train", "--config", str(config), "--dry-run"]) == (0, "")
    space = tmp_path / "space.yaml"
    _write(space, yaml.safe_load(resolve_space_path("demo").read_text()), None)
    code, err = _run(["search", "--space", str(space), "--stores", str(demo_stores), "--dry-run"])
    assert code == 0, err


@pytest.mark.parametrize("kind", ["set", "delete", "unknown_key", "misspell"])
def test_mutations_change_the_tree(kind):
    tree = {"data": {"crop": 64, "batch_size": 2}}
    path = _apply(tree, (kind, "data" if kind == "unknown_key" else "data.crop", 5 if kind != "set" else "abc"))
    assert path is not None and tree != {"data": {"crop": 64, "batch_size": 2}}
