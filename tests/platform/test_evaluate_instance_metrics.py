"""Instance precision/recall, pixel IoU and adapted Rand error next to the CTC measures in `celltune evaluate`,
on a tiny CTC dataset whose numbers are worked out by hand; the precision/recall curve picture.

Dataset (16 x 24 frames):
- sequence 01, two frames, GT SEG on both; cell 1 = rows 2-7 x cols 2-7 (36 px), cell 2 = rows 8-13 x
  cols 12-19 (48 px). Frame 0 is predicted exactly; in frame 1 cell 2 is predicted as cols 12-14 only
  (18 px, IoU 18/48 = 0.375).
- sequence 02, two frames, GT SEG on frame 0 only; one cell rows 2-9 x cols 2-9 (64 px), predicted in frame 0
  as two 32-px halves (IoU 0.5 each) and exactly in frame 1 (not scored: no GT SEG there).

Counts (TP, FP, FN):   t = 0.25       t = 0.5        t = 0.75
  01 frame 0           2, 0, 0        2, 0, 0        2, 0, 0
  01 frame 1           2, 0, 0        1, 1, 1        1, 1, 1
  02 frame 0           1, 1, 0        1, 1, 0        0, 2, 1
  dataset              5, 1, 0        4, 2, 1        3, 3, 2
Pixel IoU: 1, 54/84, 1. Adapted Rand error (1 - 2J / (R + S), pairs(x) = x (x - 1)): 01 frame 0: 0;
01 frame 1: R = pairs(36) + pairs(48) = 3516, S = J = pairs(36) + pairs(18) + pairs(30) = 2436, error 1080/5952;
02: R = pairs(64) = 4032, S = J = 2 pairs(32) = 1984, error 2048/6016.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from celltune.data_prep.common import UserInputError
from celltune.platform.ctc_results import format_tracks, write_ctc_result
from celltune.platform.evaluate import evaluate_results, instance_scores, write_precision_recall_curve

ARE_01 = (0.0 + 1080 / 5952) / 2
ARE_02 = 2048 / 6016


def _write_gt(folder: Path, masks: np.ndarray, tracks: np.ndarray, seg_frames: tuple[int, ...]) -> None:
    """TRA markers are the full masks; SEG holds ``seg_frames``."""
    (folder / "TRA").mkdir(parents=True)
    (folder / "SEG").mkdir()
    for t, frame in enumerate(masks):
        tifffile.imwrite(folder / "TRA" / f"man_track{t:03d}.tif", frame.astype(np.uint16))
    for t in seg_frames:
        tifffile.imwrite(folder / "SEG" / f"man_seg{t:03d}.tif", masks[t].astype(np.uint16))
    (folder / "TRA" / "man_track.txt").write_text(format_tracks(tracks))


def _dataset(root: Path) -> Path:
    ds = root / "DS"
    gt = np.zeros((2, 16, 24), dtype=np.uint16)
    gt[:, 2:8, 2:8], gt[:, 8:14, 12:20] = 1, 2
    res = gt.copy()
    res[1, 8:14, 15:20] = 0
    tracks = np.array([[1, 0, 1, 0], [2, 0, 1, 0]])
    _write_gt(ds / "01_GT", gt, tracks, seg_frames=(0, 1))
    write_ctc_result(ds / "01_RES", res, tracks)
    gt = np.zeros((2, 16, 24), dtype=np.uint16)
    gt[:, 2:10, 2:10] = 1
    res = gt.copy()
    res[0, 2:10, 6:10] = 2
    _write_gt(ds / "02_GT", gt, np.array([[1, 0, 1, 0]]), seg_frames=(0,))
    write_ctc_result(ds / "02_RES", res, np.array([[1, 0, 1, 0], [2, 0, 0, 0]]))
    return ds


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    ds = _dataset(tmp_path_factory.mktemp("instance"))
    return evaluate_results(ds, ds)


def test_sequences_and_dataset_match_hand_counts(table):
    first, second = table.rows
    assert first.seg == pytest.approx(3 / 4)  # the CTC measures are still there: cell 2 of frame 1 is unmatched
    one = first.instance.summary()
    assert (one["frames"], one["precision@0.25"], one["recall@0.25"]) == (2, 1.0, 1.0)
    assert (one["precision@0.5"], one["recall@0.5"], one["precision@0.75"], one["recall@0.75"]) == (0.75,) * 4
    assert one["pixel_iou"] == pytest.approx((1 + 54 / 84) / 2) and one["are"] == pytest.approx(ARE_01)
    two = second.instance.summary()
    assert (two["precision@0.5"], two["recall@0.5"], two["precision@0.75"], two["recall@0.75"]) == (0.5, 1.0, 0, 0)
    assert two["pixel_iou"] == 1.0 and two["are"] == pytest.approx(ARE_02)
    pooled = table.dataset_instance().summary()
    assert pooled["frames"] == 3
    assert (pooled["precision@0.25"], pooled["recall@0.25"]) == (pytest.approx(5 / 6), 1.0)
    assert (pooled["precision@0.5"], pooled["recall@0.5"]) == (pytest.approx(4 / 6), pytest.approx(4 / 5))
    assert (pooled["precision@0.75"], pooled["recall@0.75"]) == (0.5, pytest.approx(3 / 5))
    assert pooled["f1@0.5"] == pytest.approx(8 / 11)  # 2 TP / (2 TP + FP + FN) = 8 / (8 + 2 + 1)
    assert pooled["pixel_iou"] == pytest.approx((2 + 54 / 84) / 3)
    assert pooled["are"] == pytest.approx((1080 / 5952 + 2048 / 6016) / 3)  # mean over frames, not sequences


def test_table_prints_the_instance_block_below_the_ctc_measures(table):
    lines = table.format().splitlines()
    assert lines[0].split() == ["sequence", "frames", "SEG", "DET", "TRA", "OP_CSB", "OP_CTB"]
    start = lines.index("") + 2
    assert lines[start].split() == ["sequence", "frames", "P@0.25", "R@0.25", "P@0.5", "R@0.5", "P@0.75", "R@0.75",
                                    "pixIoU", "ARE"]
    assert lines[start + 2].split() == ["01", "2", "1.0000", "1.0000", "0.7500", "0.7500", "0.7500", "0.7500",
                                        f"{(1 + 54 / 84) / 2:.4f}", f"{ARE_01:.4f}"]
    assert lines[start + 3].split()[:8] == ["02", "1", "0.5000", "1.0000", "0.5000", "1.0000", "0.0000", "0.0000"]
    assert lines[start + 4].split()[:8] == ["dataset", "3", "0.8333", "1.0000", "0.6667", "0.8000", "0.5000",
                                            "0.6000"]


def test_json_and_flat_metrics(table, tmp_path):
    data = json.loads(table.write_json(tmp_path / "scores.json").read_text())
    assert data["sequences"][0]["instance"]["recall@0.5"] == 0.75 and data["sequences"][0]["SEG"] == 0.75
    curve = data["dataset"]["curve"]
    assert 0.25 in curve["threshold"] and len(curve["threshold"]) == len(curve["precision"]) == len(curve["recall"])
    at = curve["threshold"].index(0.5)
    assert (curve["precision"][at], curve["recall"][at]) == (pytest.approx(4 / 6), pytest.approx(4 / 5))
    assert data["dataset"]["are"] == pytest.approx((1080 / 5952 + 2048 / 6016) / 3)
    flat = table.instance_metrics()
    assert flat["01/precision@0.5"] == 0.75 and flat["dataset/recall@0.75"] == pytest.approx(0.6)
    assert flat["02/are"] == pytest.approx(ARE_02) and "dataset/frames" not in flat


def test_without_seg_there_are_no_instance_measures(tmp_path):
    ds = _dataset(tmp_path)
    table = evaluate_results(ds, ds, seg=False)
    assert all(r.instance is None for r in table.rows) and table.dataset_instance() is None
    assert "P@0.5" not in table.format() and table.to_json()["dataset"] is None and table.instance_metrics() == {}
    assert write_precision_recall_curve(table, tmp_path / "pr.png") is None and not (tmp_path / "pr.png").exists()
    assert evaluate_results(ds / "02_RES", ds, instance=False).rows[0].instance is None


def test_curve_picture(table, tmp_path):
    from PIL import Image

    from celltune.platform.plots import precision_recall_figure

    path = write_precision_recall_curve(table, tmp_path / "plots" / "precision_recall.png", title="DS")
    assert path == tmp_path / "plots" / "precision_recall.png"
    assert Image.open(path).format == "PNG" and Image.open(path).size[0] > 300
    assert [p.name for p in path.parent.iterdir()] == ["precision_recall.png"]  # no temp file left behind
    dataset = table.dataset_instance()
    figure = precision_recall_figure({"dataset": dataset.curve()})
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    x, y = lines["dataset precision"].get_data()
    assert y[list(x).index(0.5)] == pytest.approx(4 / 6)
    x, y = lines["dataset recall"].get_data()
    assert y[list(x).index(0.75)] == pytest.approx(3 / 5)


def test_slice_gt_is_compared_with_that_slice(tmp_path):
    res, gt = tmp_path / "01_RES", tmp_path / "01_GT"
    res.mkdir()
    (gt / "SEG").mkdir(parents=True)
    volume = np.zeros((3, 8, 8), dtype=np.uint16)
    volume[1, 0:4, 0:4] = 1  # 16 px in slice 1
    volume[2, 4:8, 4:8] = 2  # only in slice 2
    tifffile.imwrite(res / "mask000.tif", volume, photometric="minisblack")
    reference = np.zeros((8, 8), dtype=np.uint16)
    reference[0:4, 0:2] = 5  # 8 of cell 1's 16 px: IoU 0.5
    tifffile.imwrite(gt / "SEG" / "man_seg_000_001.tif", reference)
    scores = instance_scores(res, gt)
    assert scores.frames == 1 and scores.counts(0.5).tp == 1 and scores.counts(0.75).fp == 1
    assert scores.pixel_iou == pytest.approx(8 / 16)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("float", "man_seg000.tif: label image has float dtype float32"),
        ("no_mask", "man_seg003.tif: no result mask003.tif in"),
        ("shape", "man_seg000.tif: shape (16, 20) differs from the result mask000.tif (16, 24)"),
        ("bad_slice", "man_seg_000_004.tif: slice 4 of frame 0, but mask000.tif has shape (16, 24)"),
    ],
)
def test_bad_gt_seg_files_are_named(tmp_path, change, message):
    ds = _dataset(tmp_path)
    seg = ds / "02_GT" / "SEG"
    frame = tifffile.imread(seg / "man_seg000.tif")
    if change == "float":
        tifffile.imwrite(seg / "man_seg000.tif", frame.astype(np.float32))
    elif change == "no_mask":
        tifffile.imwrite(seg / "man_seg003.tif", frame)
    elif change == "shape":
        tifffile.imwrite(seg / "man_seg000.tif", frame[:, :20])
    else:
        tifffile.imwrite(seg / "man_seg_000_004.tif", frame)
    with pytest.raises(UserInputError) as info:
        instance_scores(ds / "02_RES", ds / "02_GT")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_single_frame_sequence_is_a_one_line_error(tmp_path):
    # py-ctcmetrics fails with a bare numpy ValueError when no track link exists (one frame): name it instead.
    gt = np.zeros((1, 8, 8), dtype=np.uint16)
    gt[0, 2:6, 2:6] = 1
    tracks = np.array([[1, 0, 0, 0]])
    _write_gt(tmp_path / "01_GT", gt, tracks, seg_frames=(0,))
    write_ctc_result(tmp_path / "01_RES", gt, tracks)
    with pytest.raises(UserInputError, match="01_GT/TRA: one GT frame; py-ctcmetrics needs at least two frames"):
        evaluate_results(tmp_path / "01_RES", tmp_path / "01_GT")


def test_cli_prints_instance_measures(tmp_path, capsys):
    from celltune.platform.cli import main

    ds = _dataset(tmp_path)
    assert main(["evaluate", "--res", str(ds), "--gt", str(ds), "--threads", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "P@0.25" in printed and "ARE" in printed and "\ndataset " in printed
