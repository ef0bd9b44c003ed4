"""`celltune models transfer`: SEG of models x real datasets, written, drawn and logged to the versions' runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from celltune.platform.cli import main
from celltune.platform.model_registry import register_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOWT1, HELA = "Fluo-N2DH-GOWT1", "DIC-C2DH-HeLa"
KEPT = {"min_area": 300}  # the synthetic-data model's small fragments are not what this test is about


@pytest.fixture
def datasets(ctc_data_dir: Path, ctc_head, tmp_path: Path) -> dict[str, Path]:
    """GOWT1 02 up to frame 25 (GT SEG on 3 frames) and HeLa 01 up to frame 5 (GT SEG on frames 2 and 5)."""
    return {GOWT1: ctc_head(ctc_data_dir / GOWT1, "02", 25, tmp_path / "data"),
            HELA: ctc_head(ctc_data_dir / HELA, "01", 5, tmp_path / "data")}


@pytest.fixture
def registry(tmp_path, monkeypatch, checkpoint):
    """Model ``synth`` version 1 (alias ``champion``) registered from the test checkpoint by run ``run_id``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("models")).info.run_id
    client.set_terminated(run_id)
    register_checkpoint(checkpoint, name="synth", run_id=run_id, tracking_uri=uri, postprocess_default={},
                        postprocess_per_dataset={}, metrics={"seg_mean": 0.5}, alias="champion")
    return uri, run_id


def test_transfer_scores_every_model_on_every_dataset_writes_and_logs_the_table(checkpoint, datasets, registry,
                                                                                 predict_helpers, tmp_path, capsys):
    from celltune.platform.model_registry import load_model
    from celltune.platform.seg_only import evaluate_seg_only

    uri, run_id = registry
    # the same weights, described as trained on GOWT1: its GOWT1 score is marked as not a transfer score
    on_gowt1 = predict_helpers.variant_checkpoint(checkpoint, tmp_path / "on-gowt1",
                                          stores=[f"/stores/{GOWT1}.zarr"])
    out, plot = tmp_path / "transfer.csv", tmp_path / "transfer.png"
    assert main(["models", "transfer", "synth@champion", str(on_gowt1), "--data", str(datasets[GOWT1]),
                 "--data", str(datasets[HELA]), "--out", str(out), "--plot", str(plot), "--set", "min_area=300",
                 "--tracking-uri", uri, "--no-progress"]) == 0
    printed = capsys.readouterr().out

    rows = {(row["model"], row["dataset"]): row for row in csv.DictReader(out.open())}
    assert set(rows) == {(m, d) for m in ("synth@champion", "on-gowt1") for d in (GOWT1, HELA)}
    direct = evaluate_seg_only(load_model(str(checkpoint)), datasets[GOWT1], overrides=KEPT)
    assert direct.rows[0].seg > 0.3  # real matches, so the equality below is not 0 == 0
    for model in ("synth@champion", "on-gowt1"):
        assert float(rows[(model, GOWT1)]["seg"]) == pytest.approx(direct.rows[0].seg, abs=1e-9)
        assert rows[(model, GOWT1)]["frames"] == "3" and rows[(model, HELA)]["frames"] == "2"
    assert [key for key, row in rows.items() if row["seen_in_training"] == "True"] == [("on-gowt1", GOWT1)]
    assert "* trained on this dataset" in printed and plot.read_bytes()[:4] == b"\x89PNG"

    logged = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    assert logged[f"transfer/{GOWT1}/SEG"] == pytest.approx(direct.rows[0].seg, abs=1e-9)
    assert f"transfer/{HELA}/SEG" in logged
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "transfer")}
    assert artifacts == {"transfer/transfer.csv", "transfer/transfer.png"}


def test_transfer_json_holds_the_same_rows(checkpoint, datasets, tmp_path):
    out = tmp_path / "transfer.json"
    assert main(["models", "transfer", str(checkpoint), "--data", str(datasets[HELA]), "--out", str(out),
                 "--set", "min_area=300", "--no-progress"]) == 0
    written = json.loads(out.read_text())
    assert written["datasets"] == [HELA] and written["models"] == [checkpoint.name]
    (row,) = written["rows"]
    assert row["frames"] == 2 and 0 <= row["seg"] <= 1 and row["seen_in_training"] is False


@pytest.mark.parametrize("case, expected", [
    ("missing_data", "dataset folder not found"),
    ("no_seg", "no sequence has GT SEG frames"),
    ("twice", "is already given; give each dataset once"),
    ("bad_out", "name a .csv or .json file"),
    ("missing_model", "no registered model named 'nobody'"),
])
def test_transfer_bad_input_is_one_line_and_writes_nothing(checkpoint, datasets, ctc_data_dir, tmp_path, capsys,
                                                           case, expected):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # an empty registry
    model, data, out = str(checkpoint), [str(datasets[HELA])], tmp_path / "out" / "transfer.csv"
    out.parent.mkdir()
    if case == "missing_data":
        data.append(str(tmp_path / "nowhere"))
    elif case == "no_seg":  # frames and GT tracking markers, but no SEG folder
        bare = tmp_path / "bare" / GOWT1
        (bare / "02_GT").mkdir(parents=True)
        (bare / "02").symlink_to(ctc_data_dir / GOWT1 / "02", target_is_directory=True)
        (bare / "02_GT" / "TRA").symlink_to(ctc_data_dir / GOWT1 / "02_GT" / "TRA", target_is_directory=True)
        data.append(str(bare))
    elif case == "twice":
        data.append(str(datasets[HELA]))
    elif case == "bad_out":
        out = out.with_suffix(".txt")
    else:
        model = "nobody@champion"
    code = main(["models", "transfer", model, *[a for d in data for a in ("--data", d)], "--out", str(out),
                 "--tracking-uri", uri, "--no-progress"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert list(out.parent.iterdir()) == []
