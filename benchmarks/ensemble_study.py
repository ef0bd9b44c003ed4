"""Single best model vs + TTA vs top-k ensemble (+ TTA) from finished searches, on their validation frames.

Collects every trial checkpoint under the given search folders, ranks the trials by their best validation
seg_mean (from each model card), predicts the validation frames of the top ``--members`` once plainly and once
with test-time augmentation, and scores every (k, TTA) option with thresholds tuned for it
(:mod:`celltune.search_spaces.ensemble_selection`). Prints one table (SEG per dataset and mean, tuned and with the
training thresholds) and writes the chosen model as an ensemble checkpoint folder, which ``celltune predict
--model FOLDER`` and registration take like any checkpoint.

    python benchmarks/ensemble_study.py --search runs/bench-real2/tpe-asha runs/bench-real2/random \\
        --members 4 --out runs/ensemble
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def trial_checkpoints(searches: list[Path]) -> list[tuple[float, Path]]:
    """(best seg_mean, latest checkpoint folder) of every trial under ``searches``, best first."""
    from celltune.trainables.model_card import CARD_FILE, ModelCard

    latest: dict[Path, tuple[int, Path]] = {}
    for search in searches:
        for card_path in search.rglob(CARD_FILE):
            folder = card_path.parent
            card = ModelCard.read(folder)
            trial = folder.parent
            step = card.step or 0
            if trial not in latest or step > latest[trial][0]:
                latest[trial] = (step, folder)
    ranked = []
    for _, folder in latest.values():
        card = ModelCard.read(folder)
        ranked.append((float(card.best.get("seg_mean", 0.0)), folder))
    return sorted(ranked, key=lambda item: -item[0])


def compatible_with_best(ranked: list[tuple[float, Path]]) -> list[tuple[float, Path]]:
    """The trials an ensemble with the best one can hold: one network input, so the same target kind,
    normalization and per-dataset scale (a search may vary them)."""
    from celltune.trainables.model_card import ModelCard

    def contract(folder: Path) -> tuple:
        card = ModelCard.read(folder)
        return card.target_kind, card.normalization, sorted(card.scale.items())

    wanted = contract(ranked[0][1])
    return [(score, folder) for score, folder in ranked if contract(folder) == wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", type=Path, nargs="+", required=True, help="finished search folders")
    parser.add_argument("--members", type=int, default=4, help="largest ensemble tried (default 4)")
    parser.add_argument("--trials", type=int, default=40, help="threshold-study trials per dataset and option")
    parser.add_argument("--no-tta", action="store_true", help="leave out the TTA options (8x faster)")
    parser.add_argument("--out", type=Path, default=None, help="write the chosen ensemble checkpoint here")
    args = parser.parse_args(argv)

    from celltune.search_spaces.ensemble_selection import Candidate, choose_ensemble
    from celltune.search_spaces.postprocess_study import predict_validation
    from celltune.trainables.config import TrainConfig
    from celltune.trainables.ensembles import write_ensemble_checkpoint
    from celltune.trainables.model_card import BEST_WEIGHTS, load_model_folder

    started = time.monotonic()
    ranked = trial_checkpoints(args.search)
    if not ranked:
        print(f"no trial checkpoints under {', '.join(map(str, args.search))}", file=sys.stderr)
        return 2
    top = compatible_with_best(ranked)[: args.members]
    print(f"{len(ranked)} trials; top {len(top)} by validation seg_mean among those sharing the best one's target "
          f"kind, normalization and scale: " + ", ".join(f"{score:.3f}" for score, _ in top), flush=True)
    candidates = []
    for score, folder in top:
        model, card = load_model_folder(folder, weights_names=(BEST_WEIGHTS,))
        data = TrainConfig.model_validate(card.train_config).data
        plain = predict_validation(model, card, data)
        tta = None if args.no_tta else predict_validation(model, card, data, tta=True)
        candidates.append(Candidate(str(folder), plain, tta))
        print(f"  predicted {folder.parent.name[:60]} (seg_mean {score:.3f}), {time.monotonic() - started:.0f} s",
              flush=True)
    first_card = load_model_folder(top[0][1], weights_names=(BEST_WEIGHTS,))[1]
    parameters = _threshold_space(first_card.target_kind)
    best, options = choose_ensemble(candidates, parameters, start_params=first_card.postprocess,
                                    max_members=len(candidates), trials=args.trials)
    datasets = [name for name, frames in candidates[0].plain.frames.items() if frames]
    header = ["option", *[f"SEG {n}" for n in datasets], "SEG mean", "mean, training thresholds"]
    rows = [[o.label, *[f"{o.choice.scores[f'seg/{n}']:.3f}" for n in datasets], f"{o.seg_mean:.3f}",
             f"{o.choice.scores['seg_untuned_mean']:.3f}"] for o in options]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nchosen: {best.label} (tuned seg_mean {best.seg_mean:.3f}); {time.monotonic() - started:.0f} s")
    if args.out is not None:
        members = [Path(c.label) for c in candidates[: best.members]]
        write_ensemble_checkpoint(members, args.out, postprocess=best.choice.default,
                                  postprocess_per_dataset=best.choice.per_dataset, tta=best.tta,
                                  best={k: float(v) for k, v in best.choice.scores.items()})
        print(f"wrote {args.out} (celltune predict --model {args.out} ...)")
    return 0


def _threshold_space(kind: str):
    """The thresholds the shipped real-data space tunes for ``kind``."""
    from celltune.search_spaces.space import load_space

    space = load_space("cpu_universal", stores_dir=Path("."))
    return space.postprocess.for_target_kind(kind)


if __name__ == "__main__":
    raise SystemExit(main())
