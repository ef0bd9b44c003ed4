"""`celltune ui`: the MLflow UI for celltune's default store, on loopback unless told otherwise."""

from __future__ import annotations

import mlflow
import pytest

from celltune.platform.cli import main


def test_ui_serves_the_default_store_on_loopback(tmp_path, monkeypatch, capsys):
    import celltune.platform.cli_ui as cli_ui

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()  # the store exists
    started = []
    monkeypatch.setattr(cli_ui.subprocess, "call", lambda command: started.append(command) or 0)
    assert main(["ui"]) == 0
    (command,) = started
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "http://127.0.0.1:5000" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expected", [
    (["--port", "70000"], "--port 70000: must lie in 1-65535"),
    ([], "no tracking database here yet"),
])
def test_ui_bad_input_is_one_line(tmp_path, monkeypatch, capsys, extra, expected):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["ui", *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "mlflow.db").exists()
