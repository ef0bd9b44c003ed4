"""`celltune train --init`: fine-tuning from a registered model, its provenance, and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import save_file

from celltune.platform.cli import main
from celltune.platform.model_registry import register_checkpoint
from celltune.trainables.architectures import build_model
from celltune.trainables.model_card import CARD_FILE, CHECKPOINT_WEIGHTS, read_weights
from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "platform" / "configs" / "demo_train.yaml"
PARENT_OPTIONS = {"width": 8}  # demo_train.yaml's XB-Net


def _parent_checkpoint(folder: Path) -> Path:
    torch.manual_seed(7)
    model = build_model("xbnet", **PARENT_OPTIONS)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best_model.safetensors"))
    config = {**model.celltune_config, "target_kind": model.spec.target_kind, "size_multiple": model.spec.size_multiple}
    description = {"model": config, "postprocess": DEFAULT_POSTPROCESS_PARAMS[model.spec.target_kind],
                   "normalization": "minmax", "best": {"seg_mean": 0.5},
                   "train_config": {"data": {"stores": ["/data/Synth-Round.zarr"]}, "model": {"name": "xbnet"}}}
    (folder / CARD_FILE).write_text(json.dumps(description))
    return folder


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """A registry holding model ``parent`` version 1 (alias ``champion``) trained by run ``parent_run_id``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("parents")).info.run_id
    client.set_terminated(run_id)
    checkpoint = _parent_checkpoint(tmp_path / "parent")
    register_checkpoint(checkpoint, name="parent", run_id=run_id, tracking_uri=uri, postprocess_default={},
                        postprocess_per_dataset={}, metrics={"seg_mean": 0.5}, alias="champion")
    return uri, run_id, checkpoint


def _config(tmp_path: Path, stores: Path) -> Path:
    tree = yaml.safe_load(DEMO_CONFIG.read_text())
    tree["data"]["stores"] = [str(stores / Path(s).name) for s in tree["data"]["stores"]]
    tree["training"].update(epochs=2, eval_every=2, steps_per_epoch=2)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _train(tmp_path: Path, stores: Path, uri: str, *extra: str) -> int:
    return main(["train", "--config", str(_config(tmp_path, stores)), "--storage", str(tmp_path / "runs"),
                 "--tracking-uri", uri, "--name", "tuned", *extra])


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("celltune:"), err
    return lines[0]


def _nothing_written(tmp_path: Path, uri: str) -> None:
    assert not (tmp_path / "runs" / "tuned").exists()
    assert mlflow.MlflowClient(uri).get_experiment_by_name("celltune-train") is None


@pytest.mark.ray
@pytest.mark.slow
def test_fine_tuning_from_a_registered_model_records_its_parent(tmp_path, demo_stores, ray_session, registry):
    uri, parent_run_id, _ = registry
    assert _train(tmp_path, demo_stores, uri, "--init", "models:/parent@champion",
                  "--set", "init.encoder_lr=1e-4") == 0
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("celltune-train").experiment_id])
    assert run.data.tags["celltune.parent_model"] == "parent/1"
    assert run.data.tags["celltune.parent_run_id"] == parent_run_id
    assert run.data.tags["celltune.init"] == "models:/parent@champion"
    assert run.data.params["init.model"] == "models:/parent@champion"
    assert run.data.params["init.encoder_lr"] == "0.0001"

    checkpoint = max(p for p in (tmp_path / "runs" / "tuned").glob("checkpoint_*") if p.is_dir())
    trained = read_weights(checkpoint / CHECKPOINT_WEIGHTS)
    assert set(trained) == set(build_model("xbnet", **PARENT_OPTIONS).state_dict())
    version = register_checkpoint(checkpoint, name="child", run_id=run.info.run_id, tracking_uri=uri,
                                  postprocess_default={}, postprocess_per_dataset={}, metrics={"seg_mean": 0.1})
    assert version.tags["celltune.parent_model"] == "parent/1"


def test_a_different_architecture_is_refused_naming_the_first_tensor(tmp_path, demo_stores, registry, capsys):
    uri = registry[0]
    code = _train(tmp_path, demo_stores, uri, "--init", "models:/parent@champion", "--set", "model.options.width=16")
    message = _error(capsys.readouterr().err)
    assert code == 2
    assert "models:/parent@champion" in message and "do not fit model 'xbnet'" in message
    first = next(iter(build_model("xbnet", width=16).state_dict()))
    assert f"tensor {first!r} has shape" in message
    _nothing_written(tmp_path, uri)


@pytest.mark.parametrize("uri_given, expected", [
    ("models:/missing@champion", "no registered model named 'missing'"),
    ("models:/parent@nope", "model 'parent' has no alias 'nope'"),
    ("no/such/folder", "no such model folder"),
])
def test_a_missing_parent_is_one_line_and_writes_nothing(tmp_path, demo_stores, registry, capsys, uri_given,
                                                         expected):
    uri = registry[0]
    code = _train(tmp_path, demo_stores, uri, "--init", uri_given)
    assert code == 2 and expected in _error(capsys.readouterr().err)
    _nothing_written(tmp_path, uri)


def test_a_checkpoint_folder_is_a_parent_too(tmp_path, registry):
    from celltune.platform.fine_tune import load_parent, with_parent_weights
    from celltune.trainables.config import TrainConfig

    config = TrainConfig.model_validate({"data": {"stores": ["s.zarr"]},
                                         "model": {"name": "xbnet", "options": PARENT_OPTIONS},
                                         "init": {"model": str(registry[2]), "freeze_encoder": True}})
    parent = load_parent(config, registry[0])
    assert parent.parent == {"uri": str(registry[2])}
    resolved = with_parent_weights(config, parent, tmp_path / "run")
    written = read_weights(resolved.init.weights)
    expected = read_weights(registry[2] / "best_model.safetensors")
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    assert not list((tmp_path / "run").glob(".*tmp"))
