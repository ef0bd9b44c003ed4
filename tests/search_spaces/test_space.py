"""Loading and checking search-space files: shipped spaces load, every kind of mistake fails with one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.space import load_space, shipped_spaces
from celltune.trainables.config import TrainConfig

BASE = """\
name: t
base_config:
  data: {stores: [s/A.zarr, s/B.zarr], crop: 64}
  model: {name: unet, options: {width: 8}}
  loss: {name: ce}
"""


def write_space(tmp_path: Path, parameters: str, head: str = BASE, tail: str = "") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(head + "parameters:\n" + textwrap.indent(textwrap.dedent(parameters), "  ") + tail)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(UserInputError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


# --- shipped spaces ------------------------------------------------------------------------------------------------


def test_shipped_spaces_are_the_package_data_files():
    assert set(shipped_spaces()) == {"xbnet_training", "unet_modules", "architectures", "binary_baseline", "demo",
                                     "cpu_universal"}
    for name, path in shipped_spaces().items():
        assert path.parent.name == "search_spaces" and path.name == f"{name}.yaml"


@pytest.mark.parametrize("name", sorted(shipped_spaces()))
def test_every_shipped_space_loads_and_its_base_validates(name, tmp_path):
    space = load_space(name, stores_dir=tmp_path)
    assert space.name == name and space.description
    config = space.base_config()
    assert all(Path(store).parent == tmp_path for store in config.data.stores)
    assert len(space.parameters) >= 2 and space.trials >= 4
    assert space.objective.metric == "seg_mean" and space.objective.mode == "max"
    assert space.postprocess is not None and space.postprocess.trials >= 8
    # Every condition comes after the parameter it names: sampling order.
    seen: set[str] = set()
    for key, param in space.parameters:
        assert set(param.when) <= seen
        seen.add(key)


def test_shipped_spaces_say_what_the_issue_asks():
    xb = load_space("xbnet_training")
    assert xb.base_config().model.name == "xbnet"
    assert xb.parameters["data.crop"].choice == [256, 512, "short_side"]
    assert xb.parameters["loss.options.j_weight"].when == {"loss.name": ["ce_j"]}
    assert xb.parameters["scheduler.t0"].when == {"scheduler.name": ["warm_restarts"]}
    assert set(xb.parameters["scheduler.name"].choice) == {"cosine", "warm_restarts", "constant"}
    modules = load_space("unet_modules")
    assert {k.removeprefix("model.options.") for k in modules.parameters.keys()} == {
        "norm", "aspp", "up", "down", "stages"}
    arch = load_space("architectures")
    assert arch.parameters["model.name"].choice == ["unet", "unet_xb", "xbnet", "u_se_resnet", "convlstm_unet"]
    assert arch.target_kinds == ("mask_marker", "tertiary")
    demo = load_space("demo").base_config()
    assert demo.training.epochs <= 4 and demo.training.eval_every == 1 and demo.model.options["width"] == 8
    assert [Path(s).name for s in demo.data.stores] == ["Synth-Round.zarr", "Synth-Dense.zarr"]


def test_load_by_name_or_path_and_unknown_names():
    assert load_space(shipped_spaces()["demo"]).parameters == load_space("demo").parameters
    with pytest.raises(UserInputError, match=r"unknown search space 'dmeo'; did you mean 'demo'\?"):
        load_space("dmeo")
    with pytest.raises(UserInputError, match="missing.yaml: search-space file not found"):
        load_space("missing.yaml")


def test_base_file_relative_to_the_space_overrides_and_caller_base(tmp_path):
    (tmp_path / "train.yaml").write_text("data: {stores: [a/X.zarr]}\nmodel: {name: xbnet, options: {width: 8}}\n")
    path = write_space(tmp_path, "optimizer.lr: {loguniform: [1e-4, 1e-3]}\n", head="base: train.yaml\n")
    space = load_space(path)
    assert space.name == "space"  # file stem when the file has no name
    assert space.parameters["optimizer.lr"].bounds == (1e-4, 1e-3)  # "1e-4" read as a float
    assert space.base_config().model.name == "xbnet"
    space = load_space(path, overrides={"data.stores": ["b/Y.zarr"], "training.epochs": 3})
    assert space.base_config().data.stores == [Path("b/Y.zarr")] and space.base_config().training.epochs == 3
    caller = TrainConfig.model_validate({"data": {"stores": ["c/Z.zarr"]}, "model": {"name": "unet"}})
    assert load_space(path, base=caller).base_config().model.name == "unet"


# --- error cases ---------------------------------------------------------------------------------------------------

ERRORS = [
    # unknown key paths
    ("optimizer.weight_decy: {choice: [0.1]}", "parameters.optimizer.weight_decy: unknown key 'weight_decy' in "
                                              "optimizer; did you mean 'weight_decay'?"),
    ("optimiser.lr: {choice: [0.1]}", "parameters.optimiser.lr: unknown key 'optimiser' in the training config"),
    ("optimizer.lr.x: {choice: [0.1]}", "parameters.optimizer.lr.x: optimizer.lr is a value, not a section"),
    ("model.options.nrom: {choice: [group]}", "parameters.model.options.nrom='group': model 'unet': unknown option "
                                              "'nrom'; did you mean 'norm'?"),
    ("postprocess.min_aera: {int: [1, 9]}", "parameters.postprocess.min_aera=1: postprocess of tertiary model 'unet': "
                                            "unknown post-processing parameter 'min_aera'; did you mean 'min_area'?"),
    # an option that only some of the choosable models or losses have
    ("model.name: {choice: [unet, xbnet]}\nmodel.options.norm: {choice: [batch, group]}",
     "parameters.model.options.norm='batch' with model.name='xbnet': model 'xbnet': unknown option 'norm'"),
    ("loss.name: {choice: [ce, ce_j]}\nloss.options.j_weight: {loguniform: [0.01, 0.1]}",
     "parameters.loss.options.j_weight=0.01 with loss.name='ce': loss 'ce': unknown option(s) j_weight"),
    # bad ranges
    ("optimizer.lr: {uniform: [0.1, 0.1]}", "parameters.optimizer.lr: uniform: low 0.1 must be below high 0.1"),
    ("optimizer.lr: {loguniform: [0, 0.1]}", "parameters.optimizer.lr: loguniform: low 0.0 must be > 0"),
    ("training.epochs: {int: [9, 3]}", "parameters.training.epochs: int: low 9 must be below high 3"),
    ("training.epochs: {int: [0, 8], log: true}", "parameters.training.epochs: int with log: true: low 0 must be >= 1"),
    ("training.epochs: {int: [1, 8], step: 2}", "parameters.training.epochs: int: step 2 does not divide [1, 8]"),
    ("optimizer.lr: {uniform: [0.1, 0.2], log: true}", "log: true only applies to int ranges"),
    ("optimizer.lr: {}", "parameters.optimizer.lr: give exactly one of choice, uniform, loguniform, int (got none)"),
    ("optimizer.lr: {choice: [0.1], uniform: [0.1, 0.2]}", "exactly one of choice, uniform, loguniform, int (got "
                                                           "choice, uniform)"),
    # choices
    ("data.crop: {choice: []}", "parameters.data.crop: choice is empty"),
    ("data.crop: {choice: [64, 96, 64]}", "parameters.data.crop: choice lists 64 twice"),
    # conditions
    ("scheduler.t0: {int: [2, 9], when: {scheduler.nme: warm_restarts}}",
     "parameters.scheduler.t0: when names 'scheduler.nme', which is not a parameter of the space"),
    ("scheduler.name: {choice: [cosine, warm_restarts]}\n"
     "scheduler.t0: {int: [2, 9], when: {scheduler.name: warm_restart}}",
     "parameters.scheduler.t0: when scheduler.name='warm_restart' can never hold; scheduler.name is one of "
     "['cosine', 'warm_restarts']"),
    ("optimizer.lr: {uniform: [0.1, 0.2]}\nscheduler.t0: {int: [2, 9], when: {optimizer.lr: 0.1}}",
     "when names 'optimizer.lr', which is not a choice of plain values"),
    ("scheduler.name: {choice: [cosine, step], when: {loss.name: ce}}\n"
     "loss.name: {choice: [ce, ce_j], when: {scheduler.name: step}}", "parameters: the when conditions of "
                                                                      "scheduler.name, loss.name form a cycle"),
    ("loss.name: {choice: [ce, ce_j]}\nscheduler.name: {choice: [cosine, step], when: {loss.name: ce_j}}\n"
     "scheduler.gamma: {uniform: [0.1, 0.9], when: {scheduler.name: step, loss.name: ce}}",
     "parameters.scheduler.gamma: its when conditions can never hold together"),
    # values that the training config or the registries reject
    ("scheduler.name: {choice: [cosine, linear]}", "parameters.scheduler.name='linear': scheduler.name: got 'linear'"),
    ("optimizer.lr: {uniform: [0.0, 0.1]}",
     "parameters.optimizer.lr=0.0: optimizer.lr: Input should be greater than 0"),
    ("model.options.norm: {choice: [batch, instance]}", "parameters.model.options.norm='instance': unet: "
                                                        "norm='instance' is not supported"),
    ("model.name: {choice: [unet, u_se_resnet]}", "parameters model.name='u_se_resnet': loss.name: 'ce' "
                                                  "trains tertiary targets but model 'u_se_resnet' "
                                                  "predicts mask_marker"),
    ("data.crop.C: {choice: [64]}", "parameters.data.crop.C=64: data.crop is a value (64), not a section, so "
                                    "data.crop.C cannot be set"),
]


@pytest.mark.parametrize(("parameters", "expected"), ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_each_mistake_gives_one_line_naming_file_and_key(tmp_path, parameters, expected):
    message = load_error(write_space(tmp_path, parameters))
    assert expected in message


def test_conditions_make_model_specific_options_valid(tmp_path):
    space = load_space(write_space(tmp_path, """\
        model.name: {choice: [unet, xbnet]}
        model.options.norm: {choice: [batch, group], when: {model.name: unet}}
        loss.name: {choice: [ce, ce_j]}
        loss.options.j_weight: {loguniform: [0.01, 0.1], when: {loss.name: ce_j}}
        """))
    assert space.parameters.keys() == ["model.name", "model.options.norm", "loss.name", "loss.options.j_weight"]


def test_a_loss_switched_with_the_model_passes_the_target_kind_check(tmp_path):
    space = load_space(write_space(tmp_path, """\
        model.name: {choice: [unet, u_se_resnet]}
        loss.name: {choice: [edge_bce], when: {model.name: u_se_resnet}}
        """))
    assert space.target_kinds == ("mask_marker", "tertiary")


def test_conditions_are_sorted_after_what_they_name(tmp_path):
    space = load_space(write_space(tmp_path, """\
        scheduler.t0: {int: [2, 9], when: {scheduler.name: warm_restarts}}
        scheduler.name: {choice: [cosine, warm_restarts]}
        """))
    assert space.parameters.keys() == ["scheduler.name", "scheduler.t0"]


@pytest.mark.parametrize(("head", "tail", "expected"), [
    (BASE + "paramters: {}\n", "", "paramters: unknown key"),
    (BASE + "base: train.yaml\n", "", "give base or base_config, not both"),
    ("name: t\n", "", "no base training config; set base or base_config, or pass one"),
    (BASE.replace("crop: 64", "crop: -1"), "", "base_config.data.crop: got -1"),
    (BASE, "postprocess: {parameters: {min_aera: {int: [1, 9]}}}\n",
     "postprocess.parameters.min_aera: not a post-processing parameter of tertiary models; did you mean 'min_area'?"),
    (BASE, "postprocess: {parameters: {min_area: {int: [1, 9], when: {grow: 1}}}}\n",
     "postprocess.parameters.min_area: when names 'grow', which is not a parameter of the space"),
    (BASE, "trials: 0\n", "trials: Input should be greater than 0"),
    (BASE, "  data.crop: {choice: [96]}\n", "line 8: invalid YAML (key 'data.crop' appears twice)"),
])
def test_file_level_mistakes(tmp_path, head, tail, expected):
    message = load_error(write_space(tmp_path, "data.crop: {choice: [64]}\n", head=head, tail=tail))
    assert expected in message


@pytest.mark.parametrize("metric, expected", [
    ("seg_meen", "objective.metric 'seg_meen' is not a score the trials report; did you mean 'seg_mean'?"),
    ("seg/C", "objective.metric 'seg/C' is not a score the trials report;"),
    ("accuracy", "choose seg_mean, iou_mean or <score>/<dataset>"),
])
def test_an_objective_the_trials_never_report_is_refused_at_load(tmp_path, metric, expected):
    head = BASE + f"objective: {{metric: {metric}, mode: max}}\n"
    assert expected in load_error(write_space(tmp_path, "data.crop: {choice: [64]}\n", head=head))


@pytest.mark.parametrize("metric", ["seg_mean", "seg/B", "best/iou/A", "recall@0.5/A"])
def test_every_reported_score_can_be_the_objective(tmp_path, metric):
    head = BASE + f"objective: {{metric: '{metric}', mode: max}}\n"
    assert load_space(write_space(tmp_path, "data.crop: {choice: [64]}\n", head=head)).objective.metric == metric
