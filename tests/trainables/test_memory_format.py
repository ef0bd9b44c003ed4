"""The default memory format follows what the H200 measured: channels-last where it paid, never on the CPU."""

from __future__ import annotations

import pytest
import torch

from celltune.trainables.architectures import build_model
from celltune.trainables.train_loop import channels_last_pays

CUDA = torch.device("cuda")  # a device object only: nothing is allocated


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("unet", {}, True),                    # BatchNorm: 2.0x faster in bf16 on the H200
    ("unet", {"norm": "group"}, False),
    ("xbnet", {}, False),                  # GroupNorm throughout: 0.73x
])
def test_channels_last_on_cuda_only_for_models_without_group_norm(name, options, expected):
    model = build_model(name, width=8, **options)
    assert channels_last_pays(model, CUDA) is expected
    assert channels_last_pays(model, torch.device("cpu")) is False
