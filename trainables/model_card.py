"""The model card: what a trained celltune model promises its users, in one typed place.

Every checkpoint and every registered version carries ``celltune_model.json`` beside its safetensors weights:
the architecture's registry config (enough to rebuild the network without unpickling anything), the target kind
and size multiple, the normalization and per-dataset resampling it was trained with, the post-processing
thresholds (tuned per dataset by a search), the training config and its scores. Training writes it, registration
completes it (checksum, tuned thresholds), and predict, evaluate, the threshold study and the CLI read it
through :class:`ModelCard`. :func:`load_model_folder` is the one loader: it checks the weights' SHA-256
against the card, so a tampered artifact fails with one line.

Versioning: ``format`` counts incompatible changes of the file. Cards written before the field existed are
format 1 (the current one); a card from a newer celltune is refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from celltune.data_prep.common import UserInputError, one_line, write_atomic

CARD_FILE = "celltune_model.json"
CARD_FORMAT = 1
CHECKPOINT_WEIGHTS = "model.safetensors"  # a training checkpoint's latest weights
BEST_WEIGHTS = "best_model.safetensors"  # a training checkpoint's best weights (what gets registered)
REGISTERED_WEIGHTS = "weights.safetensors"  # the one weights file of a registered version
WEIGHTS_BY_PREFERENCE = (REGISTERED_WEIGHTS, BEST_WEIGHTS)  # what a model folder is loaded from


class ArchitectureEntry(BaseModel):
    """The network as the architecture registry rebuilds it, plus the two facts every consumer needs."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    target_kind: str
    size_multiple: int = Field(gt=0)

    def registry_config(self) -> dict[str, Any]:
        """What :func:`celltune.trainables.architectures.model_from_config` takes."""
        return {"name": self.name, "options": dict(self.options)}


class ModelCard(BaseModel):
    """The contents of ``celltune_model.json``."""

    model_config = ConfigDict(extra="allow")

    format: int = CARD_FORMAT
    model: ArchitectureEntry
    postprocess: dict[str, Any] = Field(default_factory=dict)
    postprocess_per_dataset: dict[str, dict[str, Any]] = Field(default_factory=dict)
    normalization: str = "minmax"
    scale: dict[str, float] = Field(default_factory=dict)  # data.scale per dataset; empty for older models
    train_config: dict[str, Any] = Field(default_factory=dict)
    step: int | None = None
    epoch: int | None = None
    best: dict[str, float] = Field(default_factory=dict)
    validation: dict[str, float] = Field(default_factory=dict)
    weights_sha256: str | None = None
    tta: bool = False  # predict with test-time augmentation unless told otherwise (chosen for ensembles)

    @property
    def target_kind(self) -> str:
        return self.model.target_kind

    @property
    def size_multiple(self) -> int:
        return self.model.size_multiple

    @property
    def architecture(self) -> str:
        return self.model.name

    @property
    def training_stores(self) -> list[str]:
        """The stores the model was trained on, as the training config named them."""
        return [str(s) for s in (self.train_config.get("data") or {}).get("stores") or []]

    def postprocess_params(self, dataset: str | None = None) -> dict[str, Any]:
        """The tuned thresholds of ``dataset`` when a search tuned them, else the model's default ones."""
        if dataset is not None and dataset in self.postprocess_per_dataset:
            return dict(self.postprocess_per_dataset[dataset])
        return dict(self.postprocess)

    def scale_for(self, dataset: str | None = None) -> float:
        """The resampling factor the model was trained at for ``dataset`` (1 for older models); without a
        dataset, the one factor all its datasets share.

        Raises:
            UserInputError: the datasets were trained at different factors and none (or an unknown one) is named.
        """
        if not self.scale:
            return 1.0
        if dataset in self.scale:
            return float(self.scale[dataset])
        if len(set(self.scale.values())) == 1:
            return float(next(iter(self.scale.values())))
        named = f"dataset {dataset!r} is not one of them" if dataset else "no dataset named"
        listed = ", ".join(f"{name}: {value:g}" for name, value in self.scale.items())
        raise UserInputError(f"the model was trained at a scale per dataset ({listed}) and {named}: pass "
                             "--dataset NAME or --scale FACTOR")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)

    def write(self, folder: Path) -> Path:
        """Write the card into ``folder`` atomically (a reader never sees half a card)."""
        return write_atomic(Path(folder) / CARD_FILE, self.to_json())

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = CARD_FILE) -> ModelCard:
        """Validate a card's contents; ``where`` names it in the one-line error.

        Raises:
            UserInputError: a card from a newer celltune, or a missing or mistyped entry (named by its key).
        """
        if not isinstance(data, Mapping):
            raise UserInputError(f"{where}: expected a JSON object, got {type(data).__name__}")
        found = data.get("format", CARD_FORMAT)
        if isinstance(found, int) and not isinstance(found, bool) and found > CARD_FORMAT:
            raise UserInputError(f"{where}: model card format {found} is newer than this celltune reads "
                                 f"(format {CARD_FORMAT}); upgrade celltune to load it")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            raise UserInputError(f"{where}: {key}: {error['msg'].lower()}") from None

    @classmethod
    def read(cls, folder: Path, where: str | None = None) -> ModelCard:
        """The card of a checkpoint or model folder.

        Raises:
            UserInputError: no card, an unreadable one, or one that does not validate (see :meth:`from_mapping`).
        """
        path = Path(folder) / CARD_FILE
        where = where or str(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserInputError(f"{where}: not a celltune model folder (no {CARD_FILE})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserInputError(f"{where}: {CARD_FILE} is unreadable ({one_line(exc)})") from None
        return cls.from_mapping(data, f"{where}: {CARD_FILE}" if where != str(path) else where)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(path: Path, where: str | None = None):
    """A safetensors file read into memory: no pickle, and no mmap of a file someone may replace.

    Raises:
        UserInputError: not a valid safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(Path(path).read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise UserInputError(f"{where or path}: {Path(path).name} is not a valid safetensors file "
                             f"({one_line(exc)})") from None


def load_model_folder(folder: Path, *, where: str | None = None,
                      weights_names: tuple[str, ...] = WEIGHTS_BY_PREFERENCE):
    """Rebuild the network of a model or checkpoint folder and load its weights: the one loader.

    Args:
        folder: holds ``celltune_model.json`` and one of ``weights_names``.
        where: how messages name the model (default: the folder).
        weights_names: weights files to try in order (a checkpoint's latest weights: ``(CHECKPOINT_WEIGHTS,)``).

    Returns:
        ``(model, card)``: the network in eval mode on the CPU, and its card.

    Raises:
        UserInputError: no or a bad card, no weights, weights whose checksum or tensors do not match the card.
    """
    from celltune.trainables.architectures import model_from_config

    folder = Path(folder)
    where = where or str(folder)
    card = ModelCard.read(folder, where)
    weights = next((folder / name for name in weights_names if (folder / name).is_file()), None)
    if weights is None:
        raise UserInputError(f"{where}: no weights file ({' or '.join(weights_names)})")
    if card.weights_sha256 and file_sha256(weights) != card.weights_sha256:
        raise UserInputError(f"{where}: {weights.name} does not match the checksum in {CARD_FILE} "
                             "(modified or corrupted artifact)")
    model = model_from_config(card.model.registry_config())
    state = read_weights(weights, where)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserInputError(f"{where}: the weights do not fit the stored {card.architecture!r} config "
                             f"({one_line(exc)})") from None
    return model.eval(), card
