import pytest

from celltune.data_prep.common import UserInputError
from celltune.platform.config_io import apply_overrides, load_config
from celltune.trainables.config import TrainConfig

BASE = """
data:
  stores: [stores/A.zarr, stores/B.zarr]
  crop: 128
model: {name: xbnet, options: {width: 8}}
training: {epochs: 4, scheme: acc}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(BASE)
    return path


def test_overrides_parse_yaml_values_and_create_sections():
    tree = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=1e-4", "d.e=[x, y]", "f=short_side"])
    assert tree == {"a": {"b": 2, "c": 1e-4}, "d": {"e": ["x", "y"]}, "f": "short_side"}


def test_load_resolves_defaults_and_overrides(config_file):
    config = load_config(TrainConfig, config_file, ["training.epochs=7", "data.crop={A: short_side}"])
    assert config.training.epochs == 7
    assert config.data.crop_for("A") == "short_side" and config.data.crop_for("B") == 256
    assert config.optimizer.lr == 1e-4 and config.scheduler.name == "warm_restarts"
    assert config.data.dataset_names == ["A", "B"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.scheme=foo", r"training\.scheme: got 'foo'; input should be 'mix', 'seq'"),
        ("training.epochs=-1", r"training\.epochs: Input should be greater than 0"),
        ("model.colour=red", r"model\.colour: unknown key"),
        ("data.crop={C: 64}", r"data: .*crop names unknown datasets \['C'\]"),
        ("noequals", r"expected key=value"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(config_file, override, expected):
    with pytest.raises(UserInputError, match=expected) as info:
        load_config(TrainConfig, config_file, [override])
    assert "\n" not in str(info.value)


def test_unreadable_or_non_mapping_yaml(tmp_path):
    with pytest.raises(UserInputError, match="missing.yaml: cannot read config"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(UserInputError, match="bad.yaml: line 1: invalid YAML"):
        load_config(TrainConfig, bad)


@pytest.mark.parametrize("data, expected", [
    ({"batch_size": 0}, "data.batch_size: got 0; input should be greater than 0 / input should be a valid dictionary"),
    ({"scale": {"A": 9}}, "data.scale.A: Input should be less than or equal to 4"),
    ({"crop": "big"}, "data.crop: got 'big'; input should be a valid integer"),
])
def test_validation_messages_name_the_users_key_not_pydantic_types(data, expected):
    from pydantic import ValidationError

    from celltune.trainables.config import TrainConfig
    from celltune.trainables.yaml_files import describe_validation_error

    with pytest.raises(ValidationError) as info:
        TrainConfig.model_validate({"data": {"stores": ["s/A.zarr"], **data}})
    message = describe_validation_error(info.value)
    assert message.startswith(expected) and "constrained-" not in message and "dict[" not in message, message


@pytest.mark.parametrize("tree, expected", [
    ({"data": {"stores": ["s/A.zarr"], "crpo": 64}}, "data.crpo: unknown key (did you mean 'crop'?)"),
    ({"data": {"stores": ["s/A.zarr"]}, "training": {"epoch": 3}},
     "training.epoch: unknown key (did you mean 'epochs'?)"),
    ({"data": {"stores": ["s/A.zarr"], "augment": {"rotaton_p": 1}}},
     "data.augment.rotaton_p: unknown key (did you mean 'rotation_p'?)"),
    ({"data": {"stores": ["s/A.zarr"]}, "trainng": {}}, "trainng: unknown key (did you mean 'training'?)"),
])
def test_a_misspelt_key_with_a_default_gets_its_right_spelling(tree, expected):
    """Most keys have defaults, so their right spelling is never "missing": the hint looks at the whole section."""
    from celltune.platform.config_io import validate
    from celltune.trainables.config import TrainConfig

    with pytest.raises(UserInputError) as info:
        validate(TrainConfig, tree, "c.yaml")
    assert str(info.value) == f"c.yaml: {expected}"
