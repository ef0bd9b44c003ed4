"""`celltune train` end to end on the demo data: Ray Train with 2 workers, tracked in MLflow, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from celltune.platform.cli import main
from celltune.trainables.inference import activation_for, predict_probabilities
from celltune.trainables.model_card import BEST_WEIGHTS, load_model_folder

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "platform" / "configs" / "demo_train.yaml"

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path: Path, stores: Path, **training) -> Path:
    tree = yaml.safe_load(DEMO_CONFIG.read_text())
    tree["data"]["stores"] = [str(stores / Path(s).name) for s in tree["data"]["stores"]]
    tree["training"].update(training)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _checkpoints(run_folder: Path) -> list[Path]:
    return [p for p in run_folder.glob("checkpoint_*") if p.is_dir() and (p / "celltune_model.json").is_file()]


def _artifacts(client, run_id, path=None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return found


def test_demo_training_is_tracked_in_mlflow_with_a_loadable_checkpoint(tmp_path, demo_stores, ray_session):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = _config(tmp_path, demo_stores, epochs=4, eval_every=2)
    started = time.monotonic()
    code = main(["train", "--config", str(config), "--storage", str(tmp_path / "runs"), "--tracking-uri", uri,
                 "--name", "e2e"])
    assert code == 0
    assert time.monotonic() - started < 180
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("celltune-train").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.name"] == "xbnet" and params["training.scheme"] == "acc"
    assert params["resources.num_workers"] == "2"
    metrics = run.data.metrics
    for key in ("seg_mean", "seg/Synth-Round", "seg/Synth-Dense", "iou/Synth-Round", "loss/total", "lr"):
        assert key in metrics, key
    assert 0.0 < metrics["seg_mean"] <= 1.0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "seg_mean")] == [10, 20]
    assert len(client.get_metric_history(run.info.run_id, "loss/total")) == 20  # every step
    artifacts = _artifacts(client, run.info.run_id)
    assert "plots/learning_curve.png" in artifacts
    for dataset in ("Synth-Round", "Synth-Dense"):
        assert f"overlays/{dataset}/epoch_00004.png" in artifacts
    assert "config/train_config.yaml" in artifacts and "checkpoint/best_model.safetensors" in artifacts

    checkpoint = Path(client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / "dl")))
    model, card = load_model_folder(checkpoint, weights_names=(BEST_WEIGHTS,))
    assert card.architecture == "xbnet"
    image = np.random.default_rng(0).random((37, 53), dtype=np.float32)
    probs = predict_probabilities(model, image, size_multiple=card.size_multiple,
                                  activation=activation_for(card.target_kind))
    assert probs.shape == (1, 3, 37, 53)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_killed_run_resumes_from_its_checkpoint_and_continues_the_step_count(tmp_path, demo_stores,
                                                                              ray_session):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = _config(tmp_path, demo_stores, epochs=5, eval_every=1)
    storage = tmp_path / "runs"
    args = ["train", "--config", str(config), "--storage", str(storage), "--tracking-uri", uri, "--name", "killme"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    console = tmp_path / "console.txt"  # a pipe, as in CI or `ray job submit`: no terminal
    with console.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "celltune.platform", *args], env=env, cwd=tmp_path,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(_checkpoints(storage / "killme")) < 2:
            assert process.poll() is None, "training ended before it could be killed"
            time.sleep(0.5)
        assert len(_checkpoints(storage / "killme")) >= 2, "no second checkpoint within 4 minutes"
        time.sleep(1.0)  # the driver relays what rank 0 sent a moment ago
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    _assert_readable_in_a_pipe(console.read_bytes().decode(), storage / "killme" / "celltune.log")
    run_id = json.loads((storage / "killme" / "celltune_run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(uri)
    epochs_before = [int(m.value) for m in client.get_metric_history(run_id, "epoch")]
    assert 2 <= max(epochs_before) < 5

    assert main([*args, "--resume"]) == 0
    epochs = sorted(int(m.value) for m in client.get_metric_history(run_id, "epoch"))
    assert epochs[-1] == 5
    assert epochs.count(1) == 1, "the resumed run started over instead of continuing"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "seg_mean")})
    assert steps == [5, 10, 15, 20, 25]
    assert client.get_run(run_id).info.status == "FINISHED"


def _assert_readable_in_a_pipe(text: str, log_file: Path) -> None:
    """One plain line per evaluation, nothing from Ray's or the libraries' internals; those are in the log."""
    lines = text.splitlines()
    evaluations = [line for line in lines if line.startswith("epoch ")]
    assert evaluations, text
    assert all(" SEG Round " in line and "Dense " in line and "| step " in line for line in evaluations), text
    assert "\r" not in text, "redraws in a pipe"
    for noise in ("RayTrainWorker", "PlacementGroupCleaner", "pid=", "WARNING", "Warning:",
                  "Checkpoint successfully created", "Traceback"):
        assert noise not in text, f"{noise!r} on the console:\n{text}"
    assert len(lines) <= len(evaluations) + 3, text  # the log file's name, the evaluations, nothing more
    assert log_file.is_file() and log_file.read_text().strip(), "the libraries' lines were not captured"


@pytest.mark.ray  # demo_stores are prepared with Ray
def test_a_crop_larger_than_every_frame_is_refused_before_training(tmp_path, demo_stores, capsys):
    config = _config(tmp_path, demo_stores)
    assert main(["train", "--config", str(config), "--set", "data.crop=4096", "--dry-run"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "data.crop 4096 for Synth-Round: larger than every training frame (the largest is " \
        "128x128); use at most 128 or short_side" in err[0], err
    assert main(["train", "--config", str(config), "--set", "data.crop=96", "--dry-run"]) == 0
