"""An ensemble of trained checkpoints is registered as one model version and predicts from a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from celltune.data_prep.common import UserInputError
from celltune.trainables.ensembles import write_ensemble_checkpoint
from celltune.trainables.model_card import BEST_WEIGHTS, CARD_FILE, load_model_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _perturbed(checkpoint: Path, folder: Path) -> Path:
    """A second member: the trained weights plus a little noise."""
    shutil.copytree(checkpoint, folder)
    torch.manual_seed(1)
    state = load_file(str(folder / BEST_WEIGHTS))
    noisy = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in state.items()}
    save_file(noisy, str(folder / BEST_WEIGHTS))
    return folder


def test_a_registered_ensemble_loads_and_predicts_in_a_fresh_process(checkpoint, tmp_path, tmp_path_factory,
                                                                   predict_helpers):
    from mlflow import MlflowClient

    from celltune.platform.model_registry import register_checkpoint

    members = [checkpoint, _perturbed(checkpoint, tmp_path / "second")]
    folder = tmp_path / "ensemble"
    card = write_ensemble_checkpoint(members, folder, weights=[2, 1], tta=True)
    model, loaded = load_model_folder(folder, weights_names=(BEST_WEIGHTS,))
    assert loaded == card and card.architecture == "ensemble" and card.tta
    assert [m["name"] for m in card.model.options["members"]] == ["unet", "unet"]
    assert card.model.options["weights"] == [2.0, 1.0] and len(model.members) == 2

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("ensembles", str(tmp_path / "artifacts")))
    register_checkpoint(folder, name="ens", run_id=run.info.run_id, tracking_uri=uri,
                        postprocess_default=card.postprocess, postprocess_per_dataset={}, metrics={"seg_mean": 0.5})
    data = predict_helpers.build_test_data(tmp_path_factory)
    out = tmp_path / "predicted"
    done = subprocess.run([sys.executable, "-m", "celltune.platform", "predict", "--model", "models:/ens@candidate",
                           "--input", str(data / "01"), "--out", str(out), "--tracking-uri", uri, "--no-ray",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert predict_helpers.ctc_valid(out) == 1
    assert "01: 6 frames" in done.stdout


def test_members_must_share_what_the_card_states_once(checkpoint, tmp_path):
    other = shutil.copytree(checkpoint, tmp_path / "other")
    card = json.loads((other / CARD_FILE).read_text())
    card["normalization"] = "log" if card.get("normalization") != "log" else "minmax"
    (other / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(UserInputError, match="normalization .* differs from the first member's"):
        write_ensemble_checkpoint([checkpoint, other], tmp_path / "ensemble")
    assert not (tmp_path / "ensemble").exists()

