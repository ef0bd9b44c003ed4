"""Round trip on real GT: labels -> target -> perfect prediction -> post-processing -> labels, scored by SEG.

A perfect network output must give the annotation back; this catches targets and post-processing that
disagree (wrong class order, markers that merge cells, boundaries that eat cells). Only ``min_area`` is
lowered (GT has cells cut by the image edge smaller than the generic default); everything else is the
default of :data:`DEFAULT_POSTPROCESS_PARAMS`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from celltune.data_prep.targets import marker_erosion_for, mask_marker_target, tertiary_target
from celltune.trainables.metrics import seg_counts, seg_score
from celltune.trainables.postprocess import one_hot
from celltune.trainables.target_kinds import postprocess

DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+")


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_perfect_prediction_round_trip_reaches_seg_095(ctc_data_dir, dataset):
    frames = sorted((ctc_data_dir / dataset).glob("0?_GT/SEG/man_seg*.tif"))
    assert frames, f"no GT SEG frames under {ctc_data_dir / dataset}"
    erosion = marker_erosion_for(dataset)
    tertiary, mask_marker = [], []
    for frame in frames:
        gt = tifffile.imread(frame)
        probs = one_hot(tertiary_target(gt), 3)
        tertiary.append(seg_counts(gt, postprocess("tertiary", probs, min_area=1)))
        probs = mask_marker_target(gt, erosion).astype(np.float32)
        mask_marker.append(seg_counts(gt, postprocess("mask_marker", probs, min_area=1)))
    scores = {"tertiary": seg_score(tertiary), "mask_marker": seg_score(mask_marker)}
    assert min(scores.values()) >= 0.95, f"{dataset} ({len(frames)} frames): {scores}"
