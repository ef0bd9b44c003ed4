"""Points: samples a search evaluates first (one per architecture for an equal-budget comparison)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from ray.tune.search.optuna import OptunaSearch

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.sampling import define_by_run, encode_sample
from celltune.search_spaces.space import load_space
from celltune.trainables.architectures import list_models

SPACE = """\
name: t
base_config:
  data: {stores: [s/A.zarr], crop: 64}
  model: {name: unet, options: {width: 8}}
  loss: {name: ce}
parameters:
  model.name: {choice: [unet, xbnet, u_se_resnet]}
  loss.name: {choice: [edge_bce], when: {model.name: u_se_resnet}}
  optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}
points:
"""


def _space(tmp_path: Path, points: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE + textwrap.indent(textwrap.dedent(points), "  "))
    return path


def test_points_are_the_searchers_first_suggestions_then_it_samples(tmp_path):
    space = load_space(_space(tmp_path, """\
        - {model.name: u_se_resnet, loss.name: edge_bce, optimizer.lr: 0.001}
        - {model.name: xbnet, optimizer.lr: 0.005}
    """))
    points = [encode_sample(space.parameters, p, "p") for p in space.points]
    searcher = OptunaSearch(space=define_by_run(space), metric="seg_mean", mode="max", points_to_evaluate=points)
    first, second, third = (searcher.suggest(f"t{i}") for i in range(3))
    assert first == {"model.name": "u_se_resnet", "loss.name": "edge_bce", "optimizer.lr": 0.001}
    assert second == {"model.name": "xbnet", "optimizer.lr": 0.005}
    assert third["model.name"] in ("unet", "xbnet", "u_se_resnet") and 1e-4 <= third["optimizer.lr"] <= 1e-2


@pytest.mark.parametrize(("points", "message"), [
    ("- {model.name: resnet, optimizer.lr: 0.001}", r"points\[0\]: model.name: 'resnet' is not one of the choices"),
    ("- {model.name: xbnet}", r"points\[0\]: optimizer.lr is missing"),
    ("- {model.name: xbnet, optimizer.lr: 0.001, loss.name: edge_bce}",
     r"points\[0\]: loss.name is set but its condition model.name in \['u_se_resnet'\] does not hold"),
    ("- {model.name: xbnet, optimizer.lr: 1.0}", r"points\[0\]: optimizer.lr: 1.0 lies outside"),
    ("- {model.name: xbnet, optimizer.lr: 0.001, data.crop: 32}", r"points\[0\]: 'data.crop' is not a parameter"),
])
def test_bad_points_fail_in_one_line_naming_the_point(tmp_path, points, message):
    path = _space(tmp_path, points)
    with pytest.raises(UserInputError, match=message) as caught:
        load_space(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(str(path))


def test_shipped_architecture_comparison_runs_every_registered_architecture_once(tmp_path):
    space = load_space("architectures", stores_dir=tmp_path)
    assert space.early_stopping is None and space.trials == len(space.points)
    assert {point["model.name"] for point in space.points} == set(list_models())
    assert {"same", "valid"} == {p["model.options.padding"] for p in space.points if p["model.name"] == "unet"}
