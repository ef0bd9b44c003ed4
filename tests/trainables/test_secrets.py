"""Credentials stay out of what celltune writes: URIs printed or stored, and checkpoints' model cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celltune.trainables.config import TrainConfig
from celltune.trainables.secrets import MASK, redact_uri

SECRET = "s3cr3t-t0ken-value"


@pytest.mark.parametrize("uri, expected", [
    ("http://alice:hunter22@mlflow.internal:5000/api", f"http://alice:{MASK}@mlflow.internal:5000/api"),
    ("https://bob:p%40ss@host/", f"https://bob:{MASK}@host/"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////work/mlflow.db", "sqlite:////work/mlflow.db"),
    ("postgresql://celltune@db/mlflow", "postgresql://celltune@db/mlflow"),
])
def test_a_password_in_a_uri_is_hidden(uri, expected):
    assert redact_uri(uri) == expected


def test_an_environment_secret_in_a_uri_is_masked_too(monkeypatch):
    monkeypatch.setenv("CELLTUNE_TEST_API_TOKEN", SECRET)
    assert redact_uri(f"http://host/?token={SECRET}") == f"http://host/?token={MASK}"


@pytest.mark.ray  # the demo_stores fixture prepares its stores with Ray
def test_a_checkpoint_model_card_masks_environment_secrets(demo_stores: Path, train_in_test, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLTUNE_TEST_API_TOKEN", SECRET)
    hidden = tmp_path / SECRET  # a store path that carries a credential, as a presigned URL would
    hidden.mkdir()
    (hidden / "Synth-Round.zarr").symlink_to(demo_stores / "Synth-Round.zarr", target_is_directory=True)
    (hidden / "index.parquet").symlink_to(demo_stores / "index.parquet")
    config = TrainConfig.model_validate({
        "data": {"stores": [str(hidden / "Synth-Round.zarr")], "configuration": "all-st", "crop": 32,
                 "batch_size": 2},
        "model": {"name": "unet", "options": {"width": 8}},
        "training": {"epochs": 1, "steps_per_epoch": 2, "precision": "fp32"},
    })
    card = (train_in_test(config).checkpoint / "celltune_model.json").read_text()
    assert SECRET not in card
    assert json.loads(card)["train_config"]["data"]["stores"] == [str(tmp_path / MASK / "Synth-Round.zarr")]
