"""Parameter and convolution-MAC counts, checked by hand and against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from celltune.trainables.architectures import build_model
from celltune.trainables.complexity import count_conv_macs, count_parameters


def test_count_parameters_by_hand():
    conv = nn.Conv2d(3, 8, 3)  # 8 * 3 * 3 * 3 weights + 8 biases
    assert count_parameters(conv) == 224
    shared = nn.Sequential(conv, nn.ReLU(), conv)  # the same weights twice are counted once
    assert count_parameters(shared) == 224
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))  # BN: 8 weights + 8 biases, buffers not counted
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 240
    assert count_parameters(model, trainable_only=True) == 240 - 216


@pytest.mark.parametrize(
    ("module", "shape", "macs"),
    [
        # 4 x 5 x 5 outputs, each 2 input channels x 9 taps
        (nn.Conv2d(2, 4, 3, padding=1), (1, 2, 5, 5), 100 * 18),
        # stride 2, no padding: 4 x 2 x 2 outputs
        (nn.Conv2d(2, 4, 3, stride=2), (1, 2, 5, 5), 16 * 18),
        # groups 2: each output sees 2 of the 4 input channels
        (nn.Conv2d(4, 4, 3, padding=1, groups=2), (1, 4, 5, 5), 100 * 18),
        # dilation changes the output size, not the taps: 4 x 1 x 1 outputs
        (nn.Conv2d(2, 4, 3, dilation=2), (1, 2, 5, 5), 4 * 18),
        # transposed 2x2 stride 2: each of 4 x 3 x 3 inputs meets 2 outputs x 4 taps
        (nn.ConvTranspose2d(4, 2, 2, stride=2), (1, 4, 3, 3), 36 * 8),
        # batch of 2 doubles everything
        (nn.Conv2d(2, 4, 3, padding=1), (2, 2, 5, 5), 2 * 100 * 18),
        (nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 1, 1)), (1, 2, 5, 5), 100 * 2 + 25 * 4),
        (nn.Linear(4, 4), (1, 4), 0),
    ],
)
def test_count_conv_macs_by_hand(module, shape, macs):
    assert count_conv_macs(module, shape) == macs


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unet", {"width": 8, "up": "upconv", "aspp": True}),
        ("unet_xb", {"width": 8, "stages": 6}),
        ("xbnet", {"width": 8}),
        ("u_se_resnet", {"width": 8, "layers": [1, 1, 1, 1]}),
    ],
)
def test_count_conv_macs_agrees_with_torch_flop_counter(name, options):
    model = build_model(name, **options).eval()
    shape = (2, 1, 64, 96)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(shape))
    convolution_flops = sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    assert convolution_flops == counter.get_total_flops()  # no matmuls to confuse the comparison
    assert count_conv_macs(model, shape) == convolution_flops // 2


def test_count_conv_macs_leaves_the_model_alone():
    model = build_model("unet", width=8)  # BatchNorm in training mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Batch 1 at 16x16 leaves a 1x1 bottleneck that BatchNorm rejects in training mode; counting runs in eval.
    assert count_conv_macs(model, (1, 1, 16, 16)) > 0
    assert model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks for m in model.modules())
