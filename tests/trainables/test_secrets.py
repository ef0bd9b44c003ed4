"""Credentials stay out of what celltune writes: URIs printed or stored, and checkpoints' model cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_settings_named_like_credentials_are_not_secrets():
    from celltune.trainables.secrets import secret_values

    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/root/.ray/auth_token", "MY_API_TOKEN": SECRET}
    assert secret_values(env) == {SECRET}  # else every "token" in a config would be blanked


def test_the_logged_checkpoint_masks_secrets_and_the_stored_one_stays_usable(tmp_path, monkeypatch):
    import mlflow

    from celltune.platform.train_run import _log_checkpoint

    monkeypatch.setenv("CELLTUNE_TEST_API_TOKEN", SECRET)
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    card = {"train_config": {"data": {"stores": [f"/data/{SECRET}/Synth-Round.zarr"]}}}
    (checkpoint / "celltune_model.json").write_text(json.dumps(card))
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    _log_checkpoint(client, run_id, checkpoint)
    logged = Path(client.download_artifacts(run_id, "checkpoint", str(tmp_path / "down")))
    assert SECRET not in (logged / "celltune_model.json").read_text()
    assert json.loads((logged / "celltune_model.json").read_text())["train_config"]["data"]["stores"] == [
        f"/data/{MASK}/Synth-Round.zarr"]
    assert (logged / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((checkpoint / "celltune_model.json").read_text()) == card  # resuming reads the real paths
