"""`celltune predict` and `celltune evaluate --model`: summaries, thresholds, MLflow logging, and every bad
input as exit code 2 with one line on stderr and no output folder left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from celltune.platform.cli import main
from celltune.platform.ctc_results import read_ctc_result

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, predict_helpers) -> Path:
    return predict_helpers.build_test_data(tmp_path_factory)


def _predict(*args: str) -> int:
    return main(["predict", *map(str, args), "--no-progress"])


def _error(stderr: str) -> str:
    """Our stderr without MLflow's own INFO lines (printed when it creates a new tracking database)."""
    return "\n".join(line for line in stderr.strip().splitlines() if " INFO mlflow." not in line)


def test_predict_prints_one_summary_line_per_sequence(checkpoint, dataset, tmp_path, capsys, predict_helpers):
    out = tmp_path / "res"
    assert _predict("--model", checkpoint, "--input", dataset, "--out", out, "--no-ray") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"wrote 2 result folder(s) to {out}"
    for seq, line in zip(("01", "02"), lines[:2], strict=True):
        result = read_ctc_result(out / f"{seq}_RES")
        cells = sum(len(np.unique(m)) - 1 for m in result.masks)
        assert line.startswith(f"{seq}: 6 frames, {cells} cells ({cells / 6:.1f}/frame), {len(result.tracks)} "
                               f"tracks, ")
        assert line.endswith(f" s -> {out / f'{seq}_RES'}")
        assert predict_helpers.ctc_valid(out / f"{seq}_RES") == 1


def _cells(line: str) -> int:
    return int(line.split(", ")[1].split()[0])


def test_dataset_thresholds_and_overrides(checkpoint, dataset, tmp_path, capsys, caplog):
    base = ["--model", checkpoint, "--input", dataset / "01"]
    assert _predict(*base, "--out", tmp_path / "default") == 0
    assert _cells(capsys.readouterr().out) > 0
    assert _predict(*base, "--out", tmp_path / "huge", "--dataset", "Synth-Huge") == 0  # tuned: min_area 100000
    assert _cells(capsys.readouterr().out) == 0
    assert _predict(*base, "--out", tmp_path / "set", "--set", "min_area=100000") == 0
    assert _cells(capsys.readouterr().out) == 0
    assert _predict(*base, "--out", tmp_path / "unknown", "--dataset", "Synth-Other", "--no-track") == 0
    assert _cells(capsys.readouterr().out) > 0
    assert "no thresholds tuned for dataset 'Synth-Other'" in caplog.text
    with_track = read_ctc_result(tmp_path / "default")
    without = read_ctc_result(tmp_path / "unknown")
    assert (without.masks > 0).sum() == (with_track.masks > 0).sum()  # same pixels, one-frame tracks
    assert len(without.tracks) == sum(len(np.unique(m)) - 1 for m in without.masks)


def test_overwrite_replaces_a_non_empty_output(checkpoint, dataset, tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert _predict("--model", checkpoint, "--input", dataset / "01", "--out", out, "--overwrite") == 0
    assert not (out / "old.txt").exists() and (out / "res_track.txt").is_file()


def _gap(root: Path, dataset: Path) -> Path:
    shutil.copytree(dataset / "01", root / "01")
    (root / "01" / "t003.tif").unlink()
    return root / "01"


def _looping_last_frame(root: Path, dataset: Path) -> Path:
    """The last frame replaced by a link to itself: skipping it would leave its mask silently missing."""
    shutil.copytree(dataset / "01", root / "01")
    last = sorted((root / "01").glob("t*.tif"))[-1]
    last.unlink()
    last.symlink_to(last.name)
    return root / "01"


def _empty(root: Path, dataset: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _unreadable(root: Path, dataset: Path) -> Path:
    shutil.copytree(dataset / "01", root / "01")
    (root / "01" / "t002.tif").write_bytes(b"not a tiff at all")
    return root / "01"


def _volume(root: Path, dataset: Path) -> Path:
    (root / "vol").mkdir()
    for t in range(2):
        tifffile.imwrite(root / "vol" / f"t{t:03d}.tif", np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    return root / "vol"


BAD_INPUTS = {
    # case: (make input, model variant or URI, extra args, text in the error)
    "gap in frames": (_gap, None, [], "t003.tif missing"),
    "empty input folder": (_empty, None, [], "no input frames"),
    "looping frame link": (_looping_last_frame, None, [], "t005.tif: named like a frame but not a readable file"),
    "unreadable TIFF": (_unreadable, None, [], "t002.tif"),
    "missing checkpoint folder": (None, "missing-dir", [], "no such model folder"),
    "folder without a model": (None, "no-json", [], "not a celltune model folder"),
    "unknown registered model": (None, "models:/nope@champion", [], "no registered model named 'nope'"),
    "malformed model URI": (None, "models:/a/b/c", [], "not a model URI"),
    "3D model on 2D input": (None, {"stores": ["/gone/Fluo-N3DH-CE.zarr"]}, [], "trained on 3D data only"),
    "2D model on 3D input": (_volume, {"stores": ["/gone/Fluo-N2DH-GOWT1.zarr"]}, [], "trained on 2D data only"),
    "unknown threshold": (None, None, ["--set", "min_aera=3"], "did you mean 'min_area'"),
    "bad tracker setting": (None, None, ["--set", "track.max_displacement=-1"], "max_displacement=-1"),
    "bad tile": (None, None, ["--tile", "0"], "--tile 0"),
    "conflicting flags": (None, None, ["--no-ray", "--address", "auto"], "choose one"),
    "no CUDA": (None, None, ["--device", "cuda"], "CUDA is not available"),
    "output exists": (None, None, ["existing-out"], "exists and is not empty"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_output(case, checkpoint, dataset, tmp_path, capsys, predict_helpers):
    make, model, extra, text = BAD_INPUTS[case]
    source = make(tmp_path, dataset) if make else dataset / "01"
    if model is None:
        uri = str(checkpoint)
    elif isinstance(model, dict):
        uri = str(predict_helpers.variant_checkpoint(checkpoint, tmp_path / "variant", **model))
    elif model == "missing-dir":
        uri = str(tmp_path / "no-such-checkpoint")
    elif model == "no-json":
        (tmp_path / "plain").mkdir()
        uri = str(tmp_path / "plain")
    else:
        uri = model
    out = tmp_path / "out"
    if extra == ["existing-out"]:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        extra = []
    args = ["--model", uri, "--input", source, "--out", out, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            *extra]
    assert _predict(*args) == 2
    err = _error(capsys.readouterr().err)
    assert err.startswith("celltune: error: ") and "\n" not in err and text in err, err
    if case == "output exists":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_output_holding_the_input_is_refused_even_with_overwrite(checkpoint, dataset, tmp_path, capsys):
    data = tmp_path / "DS"
    shutil.copytree(dataset / "01", data / "01")
    before = sorted(p.name for p in (data / "01").iterdir())
    assert _predict("--model", checkpoint, "--input", data / "01", "--out", data, "--overwrite") == 2
    assert "the output folder holds the input" in capsys.readouterr().err
    assert sorted(p.name for p in (data / "01").iterdir()) == before


@pytest.mark.ray
def test_bad_frame_in_a_ray_task_is_one_line_exit_2(checkpoint, dataset, tmp_path, capsys, ray_session):
    data = tmp_path / "DS"
    shutil.copytree(dataset, data)
    (data / "02" / "t001.tif").write_bytes(b"II*\x00\x08\x00\x00\x00")  # a header and nothing else
    assert _predict("--model", checkpoint, "--input", data, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("celltune: error: ") and "\n" not in err and "02/t001.tif" in err, err
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_evaluate_model_on_a_dataset_prints_the_table(checkpoint, dataset, tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["evaluate", "--model", str(checkpoint), "--data", str(dataset), "--out", str(out), "--no-ray",
                 "--threads", "1", "--no-progress", "--json", str(tmp_path / "scores.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "sequence  frames      SEG      DET      TRA   OP_CSB   OP_CTB" in text
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert [s["sequence"] for s in scores["sequences"]] == ["01", "02"]
    for row in scores["sequences"]:
        assert 0.0 < row["DET"] <= 1.0 and 0.0 < row["TRA"] <= 1.0 and 0.0 <= row["SEG"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["01_RES", "02_RES"]


def test_evaluate_flags_must_go_together(checkpoint, dataset, tmp_path, capsys):
    assert main(["evaluate", "--model", str(checkpoint)]) == 2
    assert "--model and --data go together" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(dataset), "--res", str(tmp_path)]) == 2
    assert "leave them out" in capsys.readouterr().err
    assert main(["evaluate", "--res", str(tmp_path)]) == 2
    assert "give --res DIR --gt DIR" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(tmp_path / "nope")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_evaluate_registered_model_logs_to_its_run(checkpoint, dataset, tmp_path, capsys, predict_helpers):
    from mlflow import MlflowClient

    from celltune.platform.model_registry import register_checkpoint

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("predict-test", str(tmp_path / "artifacts")))
    client.set_terminated(run.info.run_id)
    description = json.loads((checkpoint / "celltune_model.json").read_text())
    register_checkpoint(checkpoint, name="tiny", run_id=run.info.run_id, tracking_uri=uri,
                        postprocess_default=description["postprocess"], postprocess_per_dataset={},
                        metrics={"seg_mean": 0.5})
    code = main(["evaluate", "--model", "models:/tiny@candidate", "--data", str(dataset), "--tracking-uri", uri,
                 "--no-ray", "--threads", "1", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"logged to MLflow run {run.info.run_id} (tiny version 1)" in printed
    metrics = client.get_run(run.info.run_id).data.metrics
    lines = printed.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("sequence  frames      SEG")))
    rows = [line.split() for line in lines[first + 2:first + 4]]  # the CTC measures table: 01, 02, mean
    assert [r[0] for r in rows] == ["01", "02"]
    for seq, _frames, seg, det, tra, *_ in rows:
        assert metrics[f"eval/Synth-SIMplus/{seq}/SEG"] == pytest.approx(float(seg), abs=5e-5)
        assert metrics[f"eval/Synth-SIMplus/{seq}/DET"] == pytest.approx(float(det), abs=5e-5)
        assert metrics[f"eval/Synth-SIMplus/{seq}/TRA"] == pytest.approx(float(tra), abs=5e-5)
    assert "eval/Synth-SIMplus/mean/TRA" in metrics
    local = client.download_artifacts(run.info.run_id, "evaluation", str(tmp_path / "dl"))
    table = (Path(local) / f"{predict_helpers.TEST_DATASET}.txt").read_text()
    assert table.splitlines()[:5] == lines[first:first + 5]  # the printed table


def test_a_killed_predictions_staging_folder_is_removed_by_the_next_run(checkpoint, dataset, tmp_path):
    import os

    dead = tmp_path / ".out.tmp-999999999-abcd"  # no such process: a run killed before it could clean up
    live = tmp_path / f".out.tmp-{os.getpid()}-efgh"  # a run still going
    unknown = tmp_path / ".out.tmp-ijkl"  # not ours to judge
    for folder in (dead, live, unknown):
        (folder / "01_RES").mkdir(parents=True)
    assert _predict("--model", checkpoint, "--input", dataset / "01", "--out", tmp_path / "out", "--no-ray") == 0
    assert not dead.exists() and live.is_dir() and unknown.is_dir()
    assert not [p for p in tmp_path.glob(".out.tmp-*") if p not in (live, unknown)]


def test_predict_with_tta_writes_a_valid_result(checkpoint, dataset, tmp_path, predict_helpers):
    assert _predict("--model", checkpoint, "--input", dataset / "01", "--out", tmp_path / "out", "--no-ray",
                    "--tta") == 0
    assert predict_helpers.ctc_valid(tmp_path / "out") == 1
