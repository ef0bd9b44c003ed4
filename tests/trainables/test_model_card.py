"""The model card: cards written before it was typed still load, newer or broken ones fail in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import model_from_config
from celltune.trainables.model_card import (
    CARD_FILE,
    CARD_FORMAT,
    REGISTERED_WEIGHTS,
    ModelCard,
    file_sha256,
    load_model_folder,
)

OLD_CARD = Path(__file__).parent / "data" / "celltune_model_format0.json"  # as registered before the typed card


def _model_folder(tmp_path: Path, card: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    torch.manual_seed(0)
    model = model_from_config(card["model"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / REGISTERED_WEIGHTS))
    card = {**card, "weights_sha256": file_sha256(folder / REGISTERED_WEIGHTS)}
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


def test_a_card_written_before_the_format_field_loads_with_its_facts(tmp_path):
    folder = _model_folder(tmp_path, json.loads(OLD_CARD.read_text()))
    model, card = load_model_folder(folder)
    assert card.format == CARD_FORMAT == 1
    assert (card.architecture, card.target_kind, card.size_multiple) == ("unet", "mask_marker", 16)
    assert card.normalization == "log" and card.scale_for("Fluo-N2DH-SIM+") == 0.5
    assert card.postprocess_params("Fluo-N2DH-SIM+")["min_area"] == 80  # tuned for SIM+
    assert card.postprocess_params("Fluo-N2DH-GOWT1")["min_area"] == 100  # the default ones
    assert card.training_stores == ["stores/Fluo-N2DH-GOWT1.zarr", "stores/Fluo-N2DH-SIM+.zarr"]
    assert card.model.model_extra == {"init_options": {}}  # unknown entries survive a round trip
    assert not model.training and model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_a_card_round_trips_through_its_file(tmp_path):
    card = ModelCard.from_mapping(json.loads(OLD_CARD.read_text()))
    card.write(tmp_path)
    assert ModelCard.read(tmp_path) == card
    assert not list(tmp_path.glob(".*"))  # written through a temporary file, nothing left beside it


@pytest.mark.parametrize(("change", "message"), [
    ({"format": CARD_FORMAT + 1}, "format 2 is newer than this celltune reads"),
    ({"model": {"name": "unet", "options": {}}}, "model.target_kind: field required"),
    ({"model": {"name": "unet", "target_kind": "binary", "size_multiple": 0}}, "model.size_multiple: input should be"),
    ({"scale": {"A": "half"}}, "scale.A: input should be a valid number"),
])
def test_a_card_that_cannot_be_read_fails_in_one_line_naming_the_key(tmp_path, change, message):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / CARD_FILE).write_text(json.dumps({**json.loads(OLD_CARD.read_text()), **change}))
    with pytest.raises(UserInputError, match=message) as raised:
        ModelCard.read(folder)
    assert "\n" not in str(raised.value) and str(folder) in str(raised.value)


def test_the_loader_refuses_a_missing_card_tampered_weights_and_weights_of_another_model(tmp_path):
    with pytest.raises(UserInputError, match="not a celltune model folder"):
        load_model_folder(tmp_path)
    folder = _model_folder(tmp_path, json.loads(OLD_CARD.read_text()))
    data = bytearray((folder / REGISTERED_WEIGHTS).read_bytes())
    data[-1] ^= 1
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    (tampered / REGISTERED_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="does not match the checksum"):
        load_model_folder(tampered)
    other = json.loads((folder / CARD_FILE).read_text())
    other["model"]["options"]["width"] = 16
    del other["weights_sha256"]
    (folder / CARD_FILE).write_text(json.dumps(other))
    with pytest.raises(UserInputError, match="the weights do not fit the stored 'unet' config"):
        load_model_folder(folder, where="models:/x@y")
