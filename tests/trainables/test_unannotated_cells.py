"""Sparse GT (``data.ignore_unannotated``): cells that GT TRA marks but GT SEG leaves out are ignored by the loss
instead of being taught as background."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from celltune.trainables.data import unannotated_region
from celltune.trainables.losses import build_loss


def test_the_region_covers_the_unannotated_cell_and_spares_the_annotated_one():
    markers = np.zeros((40, 60), np.int32)
    markers[10:20, 10:20] = 1
    markers[10:20, 40:50] = 2
    labels = np.zeros_like(markers)
    labels[8:22, 8:22] = 7  # cell 1 annotated (under another id), cell 2 not
    region = unannotated_region(markers, labels)
    assert region[15, 45] and region[9, 45]  # the marker and a ring around it
    assert not region[labels > 0].any() and not region[15, 30]
    labels[8:22, 38:52] = 8
    assert unannotated_region(markers, labels) is None  # everything marked is annotated
    assert unannotated_region(np.zeros_like(markers), labels) is None


@pytest.mark.real_data
def test_gowt1_gt_frames_ignore_their_unannotated_nuclei(ctc_data_dir):
    """Fluo-N2DH-GOWT1 01, frame 2: GT SEG annotates 2 of the 23 nuclei that TRA marks."""
    folder = ctc_data_dir / "Fluo-N2DH-GOWT1" / "01_GT"
    labels = tifffile.imread(folder / "SEG" / "man_seg002.tif")
    markers = tifffile.imread(folder / "TRA" / "man_track002.tif")
    region = unannotated_region(markers, labels)
    missing = [i for i in np.unique(markers)[1:] if (labels[markers == i] > 0).mean() < 0.5]
    assert len(missing) >= 15
    assert all(region[markers == i].mean() > 0.95 for i in missing)
    assert not region[labels > 0].any()


def test_the_loss_ignores_what_the_valid_mask_leaves_out():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8)
    target = torch.full((1, 8, 8), 2)
    valid = torch.ones(1, 1, 8, 8)
    valid[..., :, 4:] = 0
    loss = build_loss("ce", class_weights=[1, 10, 5])
    changed = target.clone()
    changed[..., :, 4:] = 0  # only where the mask is 0
    assert loss(logits, target, valid=valid).total == pytest.approx(loss(logits, changed, valid=valid).total.item())
    assert loss(logits, target).total != pytest.approx(loss(logits, changed).total.item())
