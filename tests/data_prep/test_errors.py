"""The "did you mean" hint every unknown-name message carries."""

from __future__ import annotations

from celltune.data_prep.common import did_you_mean


def test_the_closest_choice_is_named_and_nothing_when_none_is_close():
    assert did_you_mean("xbnett", ["unet", "xbnet", "u_se_resnet"]) == "did you mean 'xbnet'?"
    assert did_you_mean("zzz", ["unet", "xbnet"]) == ""
    assert did_you_mean("DIC-C2DH-Hela", ["DIC-C2DH-HeLa", "PhC-C2DH-U373", "DIC-C2DH-HeLb"], n=2) == \
        "did you mean 'DIC-C2DH-HeLa' or 'DIC-C2DH-HeLb'?"
