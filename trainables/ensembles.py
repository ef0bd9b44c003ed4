"""An ensemble checkpoint made from trained members' checkpoints, so registration, prediction and export treat
it as one model (the ``ensemble`` architecture, :mod:`celltune.trainables.models.ensemble`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import build_model
from celltune.trainables.model_card import (
    BEST_WEIGHTS,
    REGISTERED_WEIGHTS,
    ArchitectureEntry,
    ModelCard,
    load_model_folder,
)


def write_ensemble_checkpoint(members: Sequence[Path], out: Path, *, weights: Sequence[float] | None = None,
                              postprocess: Mapping[str, Any] | None = None,
                              postprocess_per_dataset: Mapping[str, Mapping[str, Any]] | None = None,
                              tta: bool = False, best: Mapping[str, float] | None = None) -> ModelCard:
    """Write ``out`` as a checkpoint folder (best weights + card) of the weighted mean of ``members``.

    The members (checkpoint or model folders, their best weights) must share the target kind, normalization and
    per-dataset scale; the card keeps the first member's training config (list the best member first) and the
    thresholds given here (tuned for the ensemble), and records ``tta``.

    Raises:
        UserInputError: no members, or members that disagree on what the ensemble's card must state once.
    """
    if not members:
        raise UserInputError("an ensemble needs at least one member")
    loaded = [load_model_folder(Path(folder), weights_names=(BEST_WEIGHTS, REGISTERED_WEIGHTS))
              for folder in members]
    first = loaded[0][1]
    for folder, (_, card) in zip(members, loaded, strict=True):
        for field in ("target_kind", "normalization", "scale"):
            if getattr(card, field) != getattr(first, field):
                raise UserInputError(f"{folder}: {field} {getattr(card, field)!r} differs from the first member's "
                                     f"{getattr(first, field)!r}; an ensemble's members must agree on it")
    options = {"members": [card.model.registry_config() for _, card in loaded],
               "weights": [float(w) for w in weights] if weights is not None else None,
               "target_kind": first.target_kind}
    ensemble = build_model("ensemble", **options)
    for slot, (model, _) in zip(ensemble.members, loaded, strict=True):
        slot.load_state_dict(model.state_dict())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in ensemble.state_dict().items()}, str(out / BEST_WEIGHTS))
    card = ModelCard(
        model=ArchitectureEntry(**ensemble.celltune_config, target_kind=first.target_kind,
                                size_multiple=ensemble.spec.size_multiple),
        postprocess=dict(postprocess if postprocess is not None else first.postprocess),
        postprocess_per_dataset={k: dict(v) for k, v in (postprocess_per_dataset or {}).items()},
        normalization=first.normalization, scale=dict(first.scale), train_config=first.train_config,
        best=dict(best or {}), tta=tta,
    )
    card.write(out)
    return card
