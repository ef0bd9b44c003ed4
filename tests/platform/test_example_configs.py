"""The shipped training configs are valid: typed config, model, loss and thresholds agree."""

from pathlib import Path

import pytest

from celltune.data_prep.common import UserInputError
from celltune.platform.config_io import load_config
from celltune.trainables.compatibility import check_model_and_loss
from celltune.trainables.config import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "platform" / "configs").glob("*.yaml"))


def test_the_paper_setups_and_the_demo_ship():
    assert {p.stem for p in CONFIGS} >= {"xbnet_universal", "unet_baseline", "u_se_resnet_per_dataset",
                                          "demo_train"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_validates(path):
    check_model_and_loss(load_config(TrainConfig, path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.name=edge_bce", "trains mask_marker targets but model 'xbnet' predicts tertiary"),
        ("data.crop=100", "data.crop: 100 is not a multiple of 16"),
        ("postprocess.marker_threshold=0.5", "unknown post-processing parameter .marker_threshold."),
        ("model.options.width=12", "width"),
        ("loss.options.margin=4", "set data.pad instead"),
    ],
)
def test_mismatches_fail_before_training(override, message):
    config = load_config(TrainConfig, CONFIGS[0].parent / "demo_train.yaml", [override])
    with pytest.raises(UserInputError, match=message):
        check_model_and_loss(config)
