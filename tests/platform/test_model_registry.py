"""Registering a checkpoint and loading it back: by alias, by version, from a folder; tampering is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from celltune.data_prep.common import UserInputError
from celltune.platform.model_registry import load_model, register_checkpoint
from celltune.trainables.architectures import build_model
from celltune.trainables.model_card import CARD_FILE, REGISTERED_WEIGHTS
from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS


def _checkpoint(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model("unet", width=8)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best_model.safetensors"))
    config = {**model.celltune_config, "target_kind": model.spec.target_kind, "size_multiple": model.spec.size_multiple}
    description = {"model": config, "postprocess": DEFAULT_POSTPROCESS_PARAMS[model.spec.target_kind],
                   "normalization": "minmax", "best": {"seg_mean": 0.4},
                   "train_config": {"data": {"stores": ["/data/Synth-Round.zarr"], "crop": 64},
                                    "model": {"name": "unet"}, "training": {"epochs": 4}}}
    (folder / CARD_FILE).write_text(json.dumps(description))
    return folder


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.set_terminated(run_id)
    checkpoint = _checkpoint(root / "ckpt")
    version = register_checkpoint(checkpoint, name="cells", run_id=run_id, tracking_uri=uri,
                                  postprocess_default={"min_area": 20, "hole_area": 8},
                                  postprocess_per_dataset={"Synth-Round": {"min_area": 5, "hole_area": 0}},
                                  metrics={"seg_mean": 0.61, "seg/Fluo-N2DH-SIM+": 0.61},
                                  tags={"celltune.search": "s1"})
    return uri, run_id, checkpoint, version


def test_registered_version_carries_tags_alias_and_loads_by_alias_and_version(registry):
    uri, run_id, checkpoint, version = registry
    assert str(version.version) == "1" and version.aliases == ["candidate"] and version.run_id == run_id
    tags = version.tags
    assert float(tags["celltune.seg_mean"]) == pytest.approx(0.61)
    assert json.loads(tags["celltune.metrics"]) == {"seg_mean": 0.61, "seg/Fluo-N2DH-SIMplus": 0.61}
    assert json.loads(tags["celltune.postprocess"])["per_dataset"] == {"Synth-Round": {"min_area": 5, "hole_area": 0}}
    assert json.loads(tags["celltune.key_settings"])["datasets"] == ["Synth-Round"]
    assert tags["celltune.architecture"] == "unet" and tags["celltune.search"] == "s1"
    from celltune.trainables.complexity import count_conv_macs, count_parameters

    unet = build_model("unet", width=8)  # what it costs beside what it scores
    assert int(tags["celltune.params"]) == count_parameters(unet)
    assert float(tags["celltune.gmac_512"]) == pytest.approx(count_conv_macs(unet, (1, 1, 512, 512)) / 1e9, abs=1e-3)
    assert float(tags["celltune.cpu_frames_per_s"]) > 0 and int(tags["celltune.cpu_threads"]) >= 1

    by_alias = load_model("models:/cells@candidate", uri)
    by_version = load_model("models:/cells/1", uri)
    local = load_model(str(checkpoint))
    assert by_alias.ref.version == "1" and by_alias.ref.run_id == run_id
    assert by_alias.card.postprocess_params("Synth-Round") == {"min_area": 5, "hole_area": 0}
    assert by_alias.card.postprocess_params("other") == {"min_area": 20, "hole_area": 8}
    assert by_alias.card.postprocess_params() == {"min_area": 20, "hole_area": 8}
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        expected = local.model(image)
        assert torch.equal(by_alias.model(image), expected)
        assert torch.equal(by_version.model(image), expected)


def test_mlflow_pyfunc_flavour_predicts_labels(registry):
    uri = registry[0]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/cells@candidate")
    frames = np.random.default_rng(1).integers(0, 200, size=(2, 48, 40)).astype(np.float32)
    labels = model.predict(frames)
    assert labels.shape == (2, 48, 40) and labels.dtype == np.int32


def test_a_version_registered_with_the_pyfunc_code_of_before_the_model_card_still_predicts(registry, tmp_path):
    """MLflow runs the pyfunc code frozen into each version at registration; the code celltune registered before
    the typed model card (kept in tests/platform/data) must keep working against today's celltune."""
    uri = registry[0]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/cells/1", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=uri))
    folder = next(local.rglob(CARD_FILE)).parent
    old_code = Path(__file__).parent / "data" / "pyfunc_model_before_card.py"
    mlflow.pyfunc.save_model(str(tmp_path / "old"), python_model=str(old_code), artifacts={"celltune": str(folder)})
    frames = np.random.default_rng(2).integers(0, 200, size=(2, 48, 40)).astype(np.float32)
    labels = mlflow.pyfunc.load_model(str(tmp_path / "old")).predict(frames)
    assert labels.shape == (2, 48, 40) and labels.dtype == np.int32


@pytest.mark.parametrize("uri, message", [
    ("models:/nosuch@candidate", "no registered model named 'nosuch'"),
    ("models:/cells@champion", "model 'cells' has no alias 'champion'"),
    ("models:/cells/7", "model 'cells' has no version 7"),
    ("models:/cells", "not a model URI"),
    ("/no/such/folder", "no such model folder"),
])
def test_bad_model_uris_fail_in_one_line(registry, uri, message):
    with pytest.raises(UserInputError, match=message) as caught:
        load_model(uri, registry[0])
    assert "\n" not in str(caught.value)


def test_tampered_or_mismatched_artifacts_are_refused(registry, tmp_path):
    uri = registry[0]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/cells/1", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=uri))
    folder = next(local.rglob(CARD_FILE)).parent
    assert load_model(str(folder)).ref.local_dir == folder.resolve()

    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    data = bytearray((tampered / REGISTERED_WEIGHTS).read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # the last float becomes inf: same size, different checksum
    (tampered / REGISTERED_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="does not match the checksum"):
        load_model(str(tampered))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(folder, mismatched)
    description = json.loads((mismatched / CARD_FILE).read_text())
    description["model"]["options"]["width"] = 16
    description.pop("weights_sha256")
    (mismatched / CARD_FILE).write_text(json.dumps(description))
    with pytest.raises(UserInputError, match="do not fit the stored 'unet' config"):
        load_model(str(mismatched))

    garbage = tmp_path / "garbage"
    shutil.copytree(folder, garbage)
    (garbage / REGISTERED_WEIGHTS).write_bytes(b"not a safetensors file")
    description = json.loads((garbage / CARD_FILE).read_text())
    description.pop("weights_sha256")
    (garbage / CARD_FILE).write_text(json.dumps(description))
    with pytest.raises(UserInputError, match="not a valid safetensors file"):
        load_model(str(garbage))
