"""`celltune evaluate --seg-only` on real data: the same SEG as the full evaluation, from the GT frames only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celltune.platform.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATASET = "Fluo-N2DH-GOWT1"
SEQUENCE = "02"  # 92 frames of 1024x1024, GT SEG on 20 of them
LAST_FRAME = 25  # the test's copy ends here: 26 frames, GT SEG on frames 1, 22 and 25


@pytest.fixture
def gowt1(ctc_data_dir: Path, ctc_head, tmp_path: Path) -> Path:
    """The first 26 frames of GOWT1's sequence 02 as a dataset of its own (linked from the shared data)."""
    return ctc_head(ctc_data_dir / DATASET, SEQUENCE, LAST_FRAME, tmp_path)


def test_seg_only_equals_the_full_evaluation_on_the_gt_frames_and_predicts_only_them(checkpoint, gowt1,
                                                                                       monkeypatch, tmp_path):
    import celltune.platform.predict_one as predict_one
    from celltune.platform.model_evaluation import evaluate_model
    from celltune.platform.model_registry import load_model
    from celltune.platform.seg_only import evaluate_seg_only

    loaded = load_model(str(checkpoint))
    kept = {"min_area": 300}  # the synthetic-data model's small fragments would make tracking the slow part
    full, _ = evaluate_model(loaded, gowt1, use_ray=False, threads=1, overrides=kept)

    predicted: list[int] = []
    real = predict_one.frame_probabilities

    def counting(model, description, images, **kwargs):
        predicted.append(len(images))
        return real(model, description, images, **kwargs)

    monkeypatch.setattr(predict_one, "frame_probabilities", counting)
    seg_only = evaluate_seg_only(loaded, gowt1, overrides=kept)

    gt_frames = len(list((gowt1 / f"{SEQUENCE}_GT" / "SEG").glob("man_seg*.tif")))
    (row,), (full_row,) = seg_only.rows, full.rows
    assert sum(predicted) == row.frames == gt_frames == 3
    assert full_row.seg > 0.3  # the model finds GOWT1's nuclei, so equality below compares real matches
    assert row.seg == pytest.approx(full_row.seg, abs=1e-9)
    assert row.instance.summary() == full_row.instance.summary()
    assert (row.det, row.tra) == (None, None)


def test_cli_seg_only_prints_seg_and_writes_json(checkpoint, gowt1, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(gowt1), "--seg-only", "--no-progress",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SEG" in printed and "P@0.5" in printed
    (row,) = json.loads(out.read_text())["sequences"]
    assert row["sequence"] == SEQUENCE and row["frames"] == 3
    assert row["DET"] is None and row["TRA"] is None and 0 < row["SEG"] <= 1


@pytest.mark.parametrize("case, expected", [
    ("missing", "dataset folder not found"),
    ("no_seg", "no sequence has GT SEG frames"),
    ("with_out", "--seg-only scores SEG and writes no result folders; leave out --out"),
])
def test_seg_only_bad_input_is_one_line_and_writes_nothing(checkpoint, ctc_data_dir, tmp_path, capsys, case,
                                                           expected):
    data = tmp_path / "data"
    extra: list[str] = []
    if case == "no_seg":  # GT tracking markers but no SEG folder
        data.mkdir()
        (data / SEQUENCE).symlink_to(ctc_data_dir / DATASET / SEQUENCE, target_is_directory=True)
        (data / f"{SEQUENCE}_GT").mkdir()
        (data / f"{SEQUENCE}_GT" / "TRA").symlink_to(ctc_data_dir / DATASET / f"{SEQUENCE}_GT" / "TRA",
                                                     target_is_directory=True)
    elif case == "with_out":
        data = ctc_data_dir / DATASET
        extra = ["--out", str(tmp_path / "res")]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["evaluate", "--model", str(checkpoint), "--data", str(data), "--seg-only", "--no-progress", *extra])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before
