"""Evaluation with py-ctcmetrics on hand-made GT: perfect results, scores worked out by hand, layouts,
bad input as one-line errors, and the `celltune evaluate` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from celltune.data_prep.common import UserInputError
from celltune.platform.cell_tracker import track_sequence
from celltune.platform.ctc_results import format_tracks, write_ctc_result
from celltune.platform.evaluate import evaluate_results, evaluate_sequence, find_sequence_pairs


def _write_gt(folder: Path, masks: np.ndarray, tracks: np.ndarray, seg_frames=None) -> Path:
    """A GT folder whose TRA markers are the full masks; SEG holds the same masks for ``seg_frames``."""
    (folder / "TRA").mkdir(parents=True)
    for t, frame in enumerate(masks):
        tifffile.imwrite(folder / "TRA" / f"man_track{t:03d}.tif", frame.astype(np.uint16))
    (folder / "TRA" / "man_track.txt").write_text(format_tracks(tracks))
    if seg_frames is not None:
        (folder / "SEG").mkdir()
        for t in seg_frames:
            tifffile.imwrite(folder / "SEG" / f"man_seg{t:03d}.tif", masks[t].astype(np.uint16))
    return folder


def _one_cell(frames: int = 4) -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((frames, 24, 32), dtype=np.uint16)
    for t in range(frames):
        masks[t, 8:16, 4 + 2 * t:12 + 2 * t] = 1
    return masks, np.array([[1, 0, frames - 1, 0]])


def _division() -> tuple[np.ndarray, np.ndarray]:
    """Parent in frames 0-1, daughters 2 and 3 in frames 2-3: 6 vertices, 5 edges (2 of them parent links)."""
    masks = np.zeros((4, 24, 48), dtype=np.uint16)
    masks[0:2, 8:16, 18:30] = 1
    masks[2:4, 8:16, 8:18] = 2
    masks[2:4, 8:16, 30:40] = 3
    return masks, np.array([[1, 0, 1, 0], [2, 2, 3, 1], [3, 2, 3, 1]])


def test_perfect_result_scores_one(tmp_path):
    masks, tracks = _division()
    gt = _write_gt(tmp_path / "DS" / "01_GT", masks, tracks, seg_frames=[0, 2, 3])
    res = write_ctc_result(tmp_path / "DS" / "01_RES", masks, tracks)
    scores = evaluate_sequence(res, gt)
    assert (scores.seg, scores.det, scores.tra, scores.op_csb, scores.op_ctb) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert scores.name == "01" and scores.frames == 4
    assert scores.details["AOGM"] == 0 and scores.details["AOGM_0"] == 10 * 6 + 1.5 * 5


def test_tracker_output_on_relabelled_gt_scores_one(tmp_path):
    masks, tracks = _division()
    gt = _write_gt(tmp_path / "01_GT", masks, tracks, seg_frames=[1, 3])
    shuffled = np.where(masks > 0, 10 - masks, 0)  # other ids per frame than the GT's track labels
    result = track_sequence(shuffled)
    scores = evaluate_sequence(write_ctc_result(tmp_path / "01_RES", result.masks, result.tracks), gt)
    assert (scores.seg, scores.det, scores.tra) == (1.0, 1.0, 1.0)


def test_missed_object_scores_as_worked_out_by_hand(tmp_path):
    masks, tracks = _one_cell()
    gt = _write_gt(tmp_path / "01_GT", masks, tracks, seg_frames=[0, 1, 2, 3])
    missing = masks.copy()
    missing[2] = 0
    missing[3] *= 2  # the cell comes back as a new track
    res = write_ctc_result(tmp_path / "01_RES", missing, np.array([[1, 0, 1, 0], [2, 3, 3, 0]]))
    scores = evaluate_sequence(res, gt)
    # 4 reference vertices, 3 track links. Missing frame 2: 1 FN vertex; the edges 1->2 and 2->3 are missing.
    assert scores.det == pytest.approx(1 - 10 / 40)
    assert scores.tra == pytest.approx(1 - (10 * 1 + 1.5 * 2) / (10 * 4 + 1.5 * 3))
    assert scores.seg == pytest.approx(3 / 4)  # Jaccard 1, 1, 0, 1
    assert scores.op_csb == pytest.approx((0.75 + 0.75) / 2)
    assert scores.op_ctb == pytest.approx((0.75 + scores.tra) / 2)
    assert (scores.details["AOGM_FN"], scores.details["AOGM_EA"], scores.details["AOGM_ED"]) == (1, 2, 0)


def test_missed_division_costs_a_wrong_and_a_missing_edge(tmp_path):
    masks, tracks = _division()
    gt = _write_gt(tmp_path / "01_GT", masks, tracks)
    result = track_sequence(masks, divisions=False)  # one daughter continues the parent's track
    scores = evaluate_sequence(write_ctc_result(tmp_path / "01_RES", result.masks, result.tracks), gt)
    assert scores.det == 1.0
    assert scores.tra == pytest.approx(1 - (1 * 1 + 1.5 * 1) / (10 * 6 + 1.5 * 5))  # EC 1, EA 1
    assert scores.seg is None and scores.op_csb is None and scores.op_ctb is None  # no GT SEG folder


def test_extra_metrics_are_passed_through(tmp_path):
    masks, tracks = _division()
    gt = _write_gt(tmp_path / "01_GT", masks, tracks)
    res = write_ctc_result(tmp_path / "01_RES", masks, tracks)
    scores = evaluate_sequence(res, gt, extra_metrics=["BC(0)"])
    assert scores.details["BC(0)"] == 1.0 and scores.details["tp_div(0)"] == 1


def _dataset(tmp_path: Path, sequences=("01", "02")) -> Path:
    ds = tmp_path / "DS"
    for k, seq in enumerate(sequences):
        masks, tracks = _one_cell(3 + k)
        _write_gt(ds / f"{seq}_GT", masks, tracks, seg_frames=[0] if seq == "01" else None)
        write_ctc_result(ds / f"{seq}_RES", masks, tracks)
    return ds


def test_dataset_layout_scores_every_sequence(tmp_path):
    ds = _dataset(tmp_path)
    table = evaluate_results(ds, ds)
    assert [(r.name, r.frames, r.tra) for r in table.rows] == [("01", 3, 1.0), ("02", 4, 1.0)]
    assert table.rows[0].seg == 1.0 and table.rows[1].seg is None
    text = table.format()
    lines = text.splitlines()
    assert lines[0].split() == ["sequence", "frames", "SEG", "DET", "TRA", "OP_CSB", "OP_CTB"]
    assert lines[2].split() == ["01", "3", "1.0000", "1.0000", "1.0000", "1.0000", "1.0000"]
    assert lines[3].split() == ["02", "4", "-", "1.0000", "1.0000", "-", "-"]
    assert lines[4].split()[0] == "mean"
    data = json.loads(table.write_json(tmp_path / "out" / "scores.json").read_text())
    assert data["sequences"][1]["SEG"] is None and data["mean"]["TRA"] == 1.0


def test_sequence_layouts(tmp_path):
    ds = _dataset(tmp_path)
    assert find_sequence_pairs(ds / "01_RES", ds / "01_GT") == [("01", ds / "01_RES", ds / "01_GT")]
    assert find_sequence_pairs(ds / "02_RES", ds) == [("02", ds / "02_RES", ds / "02_GT")]
    other = tmp_path / "results"
    (other / "03_RES").mkdir(parents=True)
    with pytest.raises(UserInputError, match="03_GT/TRA: not found"):
        find_sequence_pairs(other, ds)


def _message(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_bad_layouts_are_one_line_errors(tmp_path):
    ds = _dataset(tmp_path, sequences=("01",))
    with pytest.raises(UserInputError) as info:
        evaluate_results(tmp_path / "missing", ds)
    assert "missing: result folder not found" in _message(info)
    with pytest.raises(UserInputError) as info:
        evaluate_results(ds / "01_RES", tmp_path / "nogt")
    assert "nogt: ground-truth folder not found" in _message(info)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError) as info:
        evaluate_results(tmp_path / "empty", ds)
    assert "no maskNNN.tif files and no NN_RES folders" in _message(info)


def _result(tmp_path: Path, masks: np.ndarray, track_text: str) -> Path:
    res = tmp_path / "01_RES"
    res.mkdir()
    for t, frame in enumerate(masks):
        tifffile.imwrite(res / f"mask{t:03d}.tif", frame)
    (res / "res_track.txt").write_text(track_text)
    return res


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("fewer", "no mask for frame 3 (3 masks, GT has 4 frames)"),
        ("uint8", "dtype uint8; expected integer labels of at least 16 bits"),
        ("shape", "shape (24, 30) differs from the GT man_track000.tif (24, 32)"),
        ("stray", "extra.tif: unexpected TIFF in a result folder"),
        ("no_track_file", "res_track.txt: missing"),
        ("empty_track_file", "no tracks (an empty result is invalid for the CTC)"),
        ("parent_late", "parent 1 ends at frame 3, not before track 2 begins at 2"),
        ("label_not_in_table", "invalid CTC result (py-ctcmetrics): Label 2 in mask but not in res_track"),
        ("track_missing_from_frame", "invalid CTC result (py-ctcmetrics): Label 1 in res_track but not in mask"),
        ("label_65535", "result labels up to 65535 plus GT labels would overflow uint16 in py-ctcmetrics"),
    ],
)
def test_invalid_results_are_named(tmp_path, change, message):
    masks, tracks = _one_cell()
    gt = _write_gt(tmp_path / "01_GT", masks, tracks)
    text = format_tracks(tracks)
    if change == "fewer":
        masks = masks[:3]
    elif change == "uint8":
        masks = masks.astype(np.uint8)
    elif change == "shape":
        masks = masks[:, :, :30]
    elif change == "empty_track_file":
        text = ""
    elif change == "parent_late":
        text += "2 2 3 1\n"
    elif change == "label_not_in_table":
        masks = masks.copy()
        masks[1, 0, 0] = 2
    elif change == "track_missing_from_frame":
        masks = masks.copy()
        masks[2] = 0
    elif change == "label_65535":
        masks = masks * np.uint16(65535)
        text = "65535 0 3 0\n"
    res = _result(tmp_path, masks, text)
    if change == "stray":
        tifffile.imwrite(res / "extra.tif", masks[0])
    elif change == "no_track_file":
        (res / "res_track.txt").unlink()
    with pytest.raises(UserInputError) as info:
        evaluate_sequence(res, gt)
    assert message in _message(info)


@pytest.fixture
def celltune_main():
    from celltune.platform.cli import main

    return main


def test_cli_prints_the_table_and_writes_json(tmp_path, celltune_main, capsys):
    ds = _dataset(tmp_path)
    out = tmp_path / "scores.json"
    code = celltune_main(["evaluate", "--res", str(ds), "--gt", str(ds), "--json", str(out), "--threads", "1",
                          "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "OP_CTB" in printed and "\n01 " in printed and "\nmean " in printed
    assert [s["sequence"] for s in json.loads(out.read_text())["sequences"]] == ["01", "02"]


def test_cli_missing_gt_folder_is_exit_code_2(tmp_path, celltune_main, capsys):
    ds = _dataset(tmp_path, sequences=("01",))
    code = celltune_main(["evaluate", "--res", str(ds / "01_RES"), "--gt", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("celltune: error: ") and "nope: ground-truth folder not found" in err


def test_cli_empty_result_folder_is_exit_code_2(tmp_path, celltune_main, capsys):
    ds = _dataset(tmp_path, sequences=("01",))
    empty = tmp_path / "01_RES"
    empty.mkdir()
    code = celltune_main(["evaluate", "--res", str(empty), "--gt", str(ds / "01_GT")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "01_RES: no maskNNN.tif files" in err


@pytest.mark.parametrize("flag", ["--json", "--plots"])
def test_an_output_of_the_wrong_kind_is_refused_before_scoring(tmp_path, capsys, monkeypatch, flag):
    import celltune.platform.evaluate as evaluate_module
    from celltune.platform.cli import main

    masks, tracks = _one_cell()
    gt = _write_gt(tmp_path / "01_GT", masks, tracks)
    res = tmp_path / "01_RES"
    res.mkdir()
    wrong = tmp_path / "wrong"
    wrong.mkdir() if flag == "--json" else wrong.write_text("a file")  # a folder for --json, a file for --plots
    monkeypatch.setattr(evaluate_module, "evaluate_results", lambda *a, **k: pytest.fail("scored anyway"))
    assert main(["evaluate", "--res", str(res), "--gt", str(gt), flag, str(wrong), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag} {wrong}: is a " in err, err


def test_written_results_have_the_permissions_of_a_plain_write(tmp_path):
    """Atomic writes go through tempfile (0600 files, 0700 folders); what lands must follow the umask."""
    import os

    from celltune.data_prep.common import write_atomic
    from celltune.platform.ctc_results import write_ctc_result

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "scores.json", "{}\n")
        masks, tracks = _one_cell()
        folder = tmp_path / "01_RES"
        write_ctc_result(folder, masks, tracks)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755
