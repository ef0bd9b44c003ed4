"""The tracker and the evaluation on the real CTC GT: relabel the GT TRA masks with fresh ids per frame
(track identity destroyed), track them again, write a result folder and score it with py-ctcmetrics.

The tracker's defaults are used unchanged, on the markers and on full cell masks (the HeLa silver truth).
On relabelled markers detection is perfect by construction (DET = 1), so TRA measures the linking alone;
SEG is left out there (HeLa and GOWT1 markers are not cell masks, and the relabelling keeps every pixel).
GOWT1 uses its first 30 frames (1024x1024 frames make py-ctcmetrics slow) against a GT folder trimmed to
the same frames in tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from celltune.data_prep.tracks import parse_man_track
from celltune.platform.cell_tracker import track_sequence
from celltune.platform.ctc_results import format_tracks, write_ctc_result
from celltune.platform.evaluate import evaluate_sequence

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

THREADS = 2  # py-ctcmetrics matches masks in this many processes


def _tra(gt: Path, frames: int | None) -> tuple[np.ndarray, np.ndarray]:
    paths = sorted((gt / "TRA").glob("man_track*.tif"))[:frames]
    table = parse_man_track((gt / "TRA" / "man_track.txt").read_text(), str(gt / "TRA" / "man_track.txt"))
    return np.stack([tifffile.imread(p) for p in paths]), table


def _trimmed_gt(gt: Path, out: Path, frames: int, seg: bool) -> Path:
    """``gt`` cut to its first ``frames`` frames (links to the TIFFs, the table clipped), in ``out``."""
    (out / "TRA").mkdir(parents=True)
    for t in range(frames):
        os.symlink(gt / "TRA" / f"man_track{t:03d}.tif", out / "TRA" / f"man_track{t:03d}.tif")
    _, table = _tra(gt, None)
    table = table[table[:, 1] < frames]  # parents begin before their children, so none is cut off
    table[:, 2] = np.minimum(table[:, 2], frames - 1)
    (out / "TRA" / "man_track.txt").write_text(format_tracks(table))
    if seg:
        (out / "SEG").mkdir()
        for path in sorted((gt / "SEG").glob("man_seg*.tif")):
            if int(path.stem[len("man_seg"):]) < frames:
                os.symlink(path, out / "SEG" / path.name)
    return out


def _relabel(masks: np.ndarray, seed: int) -> np.ndarray:
    """Fresh ids in every frame, in random order, so that no id carries a track's identity."""
    rng = np.random.default_rng(seed)
    out = np.zeros(masks.shape, dtype=np.uint16)
    for t, frame in enumerate(masks):
        ids = np.unique(frame)
        ids = ids[ids > 0]
        lut = np.zeros(int(frame.max()) + 1, dtype=np.uint16)
        lut[ids] = rng.permutation(ids.size) + 1
        out[t] = lut[frame]
    return out


def _divisions(table: np.ndarray) -> int:
    _, counts = np.unique(table[table[:, 3] > 0, 3], return_counts=True)
    return int(np.sum(counts >= 2))


@pytest.mark.parametrize(
    ("dataset", "frames", "min_bc"),
    [
        # HeLa markers are small disks; two daughters lie more than 50 px from their parent's marker and
        # two cells appear beside others like daughters: BC(0) 0.75
        ("DIC-C2DH-HeLa", None, 0.6),
        ("Fluo-N2DH-SIM+", None, 0.9),  # markers are the full cell masks
        ("Fluo-N2DH-GOWT1", 30, None),  # one division in these frames
    ],
)
def test_tracking_relabelled_gt_markers(ctc_data_dir, tmp_path, record_property, dataset, frames, min_bc):
    gt = ctc_data_dir / dataset / "01_GT"
    masks, table = _tra(gt, frames)
    if frames is not None:
        gt = _trimmed_gt(gt, tmp_path / "GT" / "01_GT", frames, seg=False)
        table = parse_man_track((gt / "TRA" / "man_track.txt").read_text(), "trimmed")
    result = track_sequence(_relabel(masks, seed=1))
    assert not np.any((result.masks > 0) != (masks > 0))  # pixels kept, only relabelled
    res = write_ctc_result(tmp_path / dataset / "01_RES", result.masks, result.tracks)

    scores = evaluate_sequence(res, gt, seg=False, extra_metrics=["BC(0)"], threads=THREADS)
    found, expected = result.num_divisions, _divisions(table)
    summary = (f"{dataset} 01 ({len(masks)} frames): DET {scores.det:.4f} TRA {scores.tra:.4f} "
               f"BC(0) {scores.details['BC(0)']:.3f} divisions {found}/{expected} "
               f"ED {scores.details['AOGM_ED']:.0f} EA {scores.details['AOGM_EA']:.0f} "
               f"EC {scores.details['AOGM_EC']:.0f}")
    print(summary)
    record_property("scores", summary)
    assert scores.det == 1.0  # every marker is its own object: detection is perfect by construction
    assert scores.tra >= 0.95
    assert scores.tra >= 0.99  # measured 0.998-0.9999; far below this means linking broke
    if min_bc is not None:
        assert scores.details["BC(0)"] >= min_bc  # divisions found at the right frame with the right daughters


def test_tracking_full_cell_masks_with_defaults(ctc_data_dir, tmp_path, record_property):
    # The HeLa silver truth (full cell masks on every frame, no tracks) stands in for predicted masks.
    # Its missing cells cost DET; linking should add little on top: TRA close to DET.
    dataset = ctc_data_dir / "DIC-C2DH-HeLa"
    masks = np.stack([tifffile.imread(p) for p in sorted((dataset / "01_ST" / "SEG").glob("man_seg*.tif"))])
    result = track_sequence(masks)
    res = write_ctc_result(tmp_path / "01_RES", result.masks, result.tracks)
    scores = evaluate_sequence(res, dataset / "01_GT", extra_metrics=["BC(0)"], threads=THREADS)
    summary = (f"DIC-C2DH-HeLa 01_ST tracked: SEG {scores.seg:.4f} DET {scores.det:.4f} TRA {scores.tra:.4f} "
               f"OP_CTB {scores.op_ctb:.4f} BC(0) {scores.details['BC(0)']:.3f}")
    print(summary)
    record_property("scores", summary)
    assert scores.seg > 0.9  # the silver truth itself; a sanity check of the SEG path
    assert scores.tra >= scores.det - 0.01  # measured DET 0.941, TRA 0.938
    assert scores.details["BC(0)"] >= 0.8  # measured 7 of 8 divisions, no false one


def test_gt_written_as_result_scores_one(ctc_data_dir, tmp_path):
    # SIM+ is the dataset whose TRA markers are its SEG masks, so SEG = 1 as well; first 20 frames
    gt = _trimmed_gt(ctc_data_dir / "Fluo-N2DH-SIM+" / "01_GT", tmp_path / "GT" / "01_GT", 20, seg=True)
    masks, table = _tra(gt, None)
    res = write_ctc_result(tmp_path / "RES" / "01_RES", masks, table)
    scores = evaluate_sequence(res, gt, threads=THREADS)
    assert (scores.seg, scores.det, scores.tra, scores.op_csb, scores.op_ctb) == (1.0, 1.0, 1.0, 1.0, 1.0)
