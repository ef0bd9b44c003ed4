"""`celltune train --local`: the same training loop in one process on one device, no Ray, MLflow optional."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from celltune.platform.cli import main

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, stores: Path, epochs: int = 3) -> Path:
    tree = yaml.safe_load((REPO / "platform" / "configs" / "demo_train.yaml").read_text())
    tree["data"]["stores"] = [str(stores / Path(s).name) for s in tree["data"]["stores"]]
    tree["training"].update(epochs=epochs, eval_every=1, steps_per_epoch=2)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("celltune:"), err
    return lines[0]


@pytest.mark.ray  # demo_stores are prepared with Ray; the training itself is Ray-free (see the next test)
def test_local_training_is_tracked_and_keeps_the_two_newest_checkpoints(tmp_path, demo_stores, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["train", "--config", str(_config(tmp_path, demo_stores)), "--local", "--device", "cpu",
                 "--storage", str(tmp_path / "runs"), "--name", "here", "--tracking-uri", uri]) == 0
    assert "MLflow run" in capsys.readouterr().out
    folder = tmp_path / "runs" / "here"
    assert sorted(p.name for p in folder.glob("checkpoint_*")) == ["checkpoint_000001", "checkpoint_000002"]
    card = json.loads((folder / "checkpoint_000002" / "celltune_model.json").read_text())
    assert card["epoch"] == 3 and card["step"] == 6
    (run,) = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name(
        "celltune-train").experiment_id])
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["best/seg_mean"] <= 1
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/celltune_model.json" in artifacts

    # --resume continues from the newest checkpoint to the new epoch count
    assert main(["train", "--config", str(_config(tmp_path, demo_stores, epochs=4)), "--local", "--device", "cpu",
                 "--storage", str(tmp_path / "runs"), "--name", "here", "--tracking-uri", uri, "--resume"]) == 0
    card = json.loads((folder / "checkpoint_000003" / "celltune_model.json").read_text())
    assert card["epoch"] == 4 and card["step"] == 8


@pytest.mark.ray  # demo_stores
def test_local_untracked_training_imports_neither_ray_nor_mlflow(tmp_path, demo_stores):
    script = (
        "import sys; sys.modules['ray'] = None; sys.modules['mlflow'] = None\n"  # importing either now fails
        "from celltune.platform.cli import main\n"
        f"sys.exit(main(['train', '--config', {str(_config(tmp_path, demo_stores, epochs=1))!r}, '--local', "
        f"'--no-tracking', '--storage', {str(tmp_path / 'runs')!r}, '--name', 'bare']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checkpoint:" in done.stdout and "MLflow" not in done.stdout
    assert (tmp_path / "runs" / "bare" / "checkpoint_000000" / "best_model.safetensors").is_file()


@pytest.mark.parametrize("extra, expected", [
    (["--local", "--device", "cuda"], "CUDA is not available on this machine"),
    (["--device", "cpu"], "--device goes with --local"),
    (["--no-tracking"], "--no-tracking goes with --local"),
    (["--local", "--address", "ray://head:10001"], "--local trains in this process; leave out --address"),
    (["--name", "../elsewhere"], "--name '../elsewhere': use letters, digits"),  # a name, not a path
])
def test_local_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, expected, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"stores": [str(tmp_path / "A.zarr")]}}))
    code = main(["train", "--config", str(config), *extra, "--storage", str(tmp_path / "runs"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert code == 2 and expected in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("resources, fixed, refused", [
    ({"num_workers": 8, "cpus_per_worker": 1}, True, "8 worker(s) x 1 CPU need 8 CPU, the local Ray has 2"),
    ({"num_workers": 1, "cpus_per_worker": 64}, True, "1 worker(s) x 64 CPU need 64 CPU, the local Ray has 2"),
    ({"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1}, True, "+ 1 GPU need 1 GPU, the local Ray has 0"),
    ({"num_workers": 8, "cpus_per_worker": 1}, False, None),  # an autoscaling cluster may grow: only a warning
    ({"num_workers": 2, "cpus_per_worker": 1}, True, None),
])
def test_a_run_the_cluster_can_never_place_is_refused(resources, fixed, refused, caplog):
    from celltune.data_prep.common import UserInputError
    from celltune.trainables.config import TrainConfig
    from celltune.trainables.ray_train import check_schedulable

    config = TrainConfig.model_validate({"data": {"stores": ["s/A.zarr"]}, "resources": resources})
    if refused:
        with pytest.raises(UserInputError, match=re.escape(refused)):
            check_schedulable(config, {"CPU": 2.0}, fixed_size=fixed)
    else:
        check_schedulable(config, {"CPU": 2.0}, fixed_size=fixed)
        assert ("waits until the cluster scales up" in caplog.text) == (not fixed)


@pytest.mark.ray
def test_train_refuses_more_workers_than_the_local_ray_has_and_writes_nothing(tmp_path, demo_stores, ray_session,
                                                                              capsys):
    code = main(["train", "--config", str(_config(tmp_path, demo_stores)), "--set", "resources.num_workers=8",
                 "--storage", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert code == 2 and "need 3.92 CPU, the local Ray has 2" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
