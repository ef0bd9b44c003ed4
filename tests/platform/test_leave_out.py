"""`celltune leave-out`: the recipe without one dataset, its zero-shot SEG there, and the few-shot curve."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest
import yaml

from celltune.platform.cli import main

REPO = Path(__file__).resolve().parents[2]
LEFT_OUT = "Synth-Dense"


def _recipe(tmp_path: Path, stores: Path) -> Path:
    tree = yaml.safe_load((REPO / "platform" / "configs" / "demo_train.yaml").read_text())
    tree["data"]["stores"] = [str(stores / Path(s).name) for s in tree["data"]["stores"]]
    tree["data"]["crop"] = {"Synth-Round": 64, LEFT_OUT: 48}  # per-dataset values follow their dataset
    tree["training"].update(epochs=2, eval_every=2, steps_per_epoch=2)
    tree["resources"] = {"num_workers": 1, "cpus_per_worker": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("celltune:"), err
    return lines[0]


@pytest.mark.ray
@pytest.mark.slow
def test_leave_out_trains_without_the_dataset_and_draws_the_few_shot_curve(tmp_path, demo_stores, ray_session,
                                                                           monkeypatch, capsys):
    from celltune.data_prep.index import frames_for, load_index

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["leave-out", "--config", str(_recipe(tmp_path, demo_stores)), "--dataset", LEFT_OUT,
                 "--shots", "all,0", "--minutes", "0.05", "--name", "study", "--storage", str(tmp_path / "runs"),
                 "--tracking-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert "| k (GT frames) |" in printed

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("celltune-leave-out").experiment_id
    runs = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert set(runs) == {"study", "study-universal", "study-kall-universal", "study-kall-scratch"}
    study = runs.pop("study")
    assert all(run.data.tags["mlflow.parentRunId"] == study.info.run_id for run in runs.values())
    # the universal model never saw the left-out dataset; each fine-tuning starts from it, scratch runs do not
    stores = runs["study-universal"].data.params["data.stores"]
    assert "Synth-Round" in stores and LEFT_OUT not in stores
    universal = study.data.tags["celltune.universal_model"]
    assert runs["study-kall-universal"].data.tags["celltune.init"] == universal
    assert "celltune.init" not in runs["study-kall-scratch"].data.tags

    gt_train = frames_for(load_index(demo_stores), "gt", "train", LEFT_OUT).num_rows
    rows = list(csv.DictReader(Path(client.download_artifacts(study.info.run_id, "leave_out/few_shot.csv",
                                                              str(tmp_path))).open()))
    assert [(row["k"], row["frames"]) for row in rows] == [("0", "0"), ("all", str(gt_train))]
    assert rows[0]["seg_from_scratch"] == ""  # nothing to train from scratch on zero frames
    for row in rows:
        assert 0 <= float(row["seg_from_universal"]) <= 1
    for row in rows[1:]:
        assert 0 <= float(row["seg_from_scratch"]) <= 1
    assert study.data.metrics["few_shot/universal/k0"] == pytest.approx(float(rows[0]["seg_from_universal"]),
                                                                          abs=1e-6)
    assert {a.path for a in client.list_artifacts(study.info.run_id, "leave_out")} == {
        "leave_out/few_shot.csv", "leave_out/few_shot.png"}


@pytest.mark.parametrize("extra, expected", [
    (["--dataset", "Nowhere"], "--dataset Nowhere: not one of the config's datasets (Synth-Round, Synth-Dense)"),
    (["--dataset", LEFT_OUT, "--shots", "1,500"], "k=500 GT frames asked for, but Synth-Dense has only 7"),
    (["--dataset", LEFT_OUT, "--shots", "1,few"], "'few' is not a number of frames or 'all'"),
])
def test_leave_out_bad_input_is_one_line_and_writes_nothing(tmp_path, demo_stores, capsys, extra, expected):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["leave-out", "--config", str(_recipe(tmp_path, demo_stores)), *extra, "--storage",
                 str(tmp_path / "runs"), "--tracking-uri", uri])
    assert code == 2 and expected in _error(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_training_frames_spreads_k_frames_and_refuses_more_than_there_are(demo_stores):
    from celltune.data_prep.common import UserInputError
    from celltune.trainables.config import DataConfig
    from celltune.trainables.data import dataset_frames, training_frames

    store = demo_stores / f"{LEFT_OUT}.zarr"
    every = dataset_frames(store, "gt", "train")
    picked = training_frames(store, DataConfig(stores=[store], configuration="gt", train_frames=3))
    assert len(every) == 7 and picked == [every[1], every[3], every[5]]
    assert {f.sequence for f in training_frames(store, DataConfig(stores=[store], configuration="gt",
                                                                   train_frames=2))} == {f.sequence for f in every}
    with pytest.raises(UserInputError, match=r"data.train_frames: 8 frames of Synth-Dense asked for, but .* only 7"):
        training_frames(store, DataConfig(stores=[store], configuration="gt", train_frames=8))


def test_a_shot_trains_on_k_gt_frames_of_the_left_out_dataset_alone(tmp_path, demo_stores):
    from celltune.data_prep.common import UserInputError
    from celltune.platform.config_io import load_config
    from celltune.platform.leave_out import ShotBudget, shot_config, universal_config
    from celltune.trainables.config import TrainConfig

    recipe = load_config(TrainConfig, _recipe(tmp_path, demo_stores), [])
    shot = shot_config(recipe, LEFT_OUT, 2, 1.5, "models:/universal@champion")
    assert shot.data.dataset_names == [LEFT_OUT] and shot.data.crop == {LEFT_OUT: 48}
    assert (shot.data.configuration, shot.data.train_frames, shot.training.max_minutes) == ("gt", 2, 1.5)
    assert shot.init.model == "models:/universal@champion" and shot_config(recipe, LEFT_OUT, 2, 1.5, None).init is None
    by_steps = shot_config(recipe, LEFT_OUT, 2, ShotBudget(steps=25), None).training  # whole epochs, no clock
    assert by_steps.max_minutes is None and by_steps.epochs * by_steps.steps_per_epoch >= 25
    assert (by_steps.epochs - 1) * by_steps.steps_per_epoch < 25
    for wrong, message in (({"minutes": 0.0}, "--minutes 0.0: must be > 0"), ({"steps": 0}, "--steps 0: must be >= 1"),
                           ({}, "--minutes or --steps")):
        with pytest.raises(UserInputError, match=message):
            ShotBudget(**wrong)
    without = universal_config(recipe, LEFT_OUT)
    assert without.data.dataset_names == ["Synth-Round"] and without.data.crop == {"Synth-Round": 64}
