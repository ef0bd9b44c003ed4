"""Searching against not searching, on the real data, at equal wall time per arm (issue 12).

Three arms on the three CTC training datasets (DIC-C2DH-HeLa, Fluo-N2DH-GOWT1, Fluo-N2DH-SIM+; ``all-gt+st``),
each given the same wall-clock budget on this machine and as many trials at once as it has cores:

* ``default``: the paper's XB-Net configuration (``platform/configs/xbnet_universal.yaml``: width 32, 256 px
  crops, batch 8, AdamW 1e-4 with warm restarts, class weights 1/10/5, min-max normalization) run with
  different seeds side by side, each training for the whole budget;
* ``random``: the shipped ``cpu_universal`` space sampled at random, every trial its full time budget;
* ``tpe+asha``: the same space with seeded TPE and ASHA cutting trials at equal minutes of training.

The search arms stop when their wall budget is spent (trials in flight are cut). The default arm's seeds stop
themselves (``training.max_minutes``) and are never cut, so their closing full-size evaluation always lands: that
evaluation may run past the budget, and the table's ``wall min`` column shows by how much. The table gives each
arm's best validation SEG per dataset and mean, and the trial-minutes (the sum over trials of the minutes each had
trained) it spent before its running best first reached 0.95 x the best arm's best mean. Then the best
checkpoint of the ``tpe+asha`` arm predicts the validation frames once and the space's post-processing study
tunes the thresholds: the gain per dataset over the thresholds the model was trained with.

    .venv/bin/python benchmarks/bench_real_search.py --stores stores [--minutes 60] [--trial-minutes 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TARGET_FRACTION = 0.95
DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Evaluation:
    """One reported evaluation: the trial, the seconds it had trained by then, and its scores."""

    trial_id: str
    seconds: float
    scores: dict[str, float]


def spend_minutes(evaluations: Sequence[Evaluation]) -> list[float]:
    """Trial-minutes spent after each evaluation: the sum over trials of the latest training time each reported."""
    latest: dict[str, float] = {}
    out = []
    for evaluation in evaluations:
        latest[evaluation.trial_id] = max(latest.get(evaluation.trial_id, 0.0), evaluation.seconds)
        out.append(sum(latest.values()) / 60)
    return out


def best_evaluation(evaluations: Sequence[Evaluation]) -> Evaluation | None:
    return max(evaluations, key=lambda e: e.scores["seg_mean"], default=None)


def minutes_to(evaluations: Sequence[Evaluation], target: float) -> float | None:
    """Trial-minutes spent when the running best ``seg_mean`` first reached ``target`` (None: never)."""
    for evaluation, spent in zip(evaluations, spend_minutes(evaluations), strict=True):
        if evaluation.scores["seg_mean"] >= target:
            return spent
    return None


@dataclass
class ArmLog:
    """The evaluations of one arm in arrival order, and its wall clock."""

    minutes: float
    cut_trials: bool = True
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    evaluations: list[Evaluation] = field(default_factory=list)

    def add(self, trial_id: str, result: dict) -> None:
        if "seg_mean" in result and "time_total_s" in result:
            scores = {k: float(v) for k, v in result.items() if k == "seg_mean" or k.startswith("seg/")}
            self.evaluations.append(Evaluation(trial_id, float(result["time_total_s"]), scores))

    @property
    def spent(self) -> bool:
        return self.cut_trials and time.monotonic() - self.started >= self.minutes * 60

    @property
    def wall_minutes(self) -> float:
        return ((self.ended or time.monotonic()) - self.started) / 60


def wall_stopper(log: ArmLog):
    """A Tune ``Stopper`` recording every result and ending the experiment when the arm's wall budget is spent."""
    from ray.tune import Stopper

    class WallStopper(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            log.add(trial_id, result)
            return False

        def stop_all(self) -> bool:
            return log.spent

    return WallStopper()


def default_space(stores: Path, minutes: float, cores: int):
    """The paper's XB-Net config as a 'space' whose only parameter is the seed (one trial per core)."""
    import yaml

    from celltune.search_spaces.space import load_space

    base = yaml.safe_load((REPO / "platform" / "configs" / "xbnet_universal.yaml").read_text())
    base["data"]["stores"] = [str(stores / f"{name}.zarr") for name in DATASETS]
    base["data"]["loader_workers"] = 0
    # The seeds train for the arm's budget less Ray's start and one full-size evaluation, so each ends with its
    # budget's closing evaluation before the arm's wall clock cuts it.
    base["training"].update(epochs=100_000, eval_every=10, max_minutes=max(0.85 * minutes, minutes - 4),
                            precision="fp32")
    base["resources"] = {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}
    space_file = Path(tempfile.mkdtemp(prefix="celltune-bench-default-")) / "default.yaml"
    space_file.write_text(yaml.safe_dump({
        "name": "xbnet_default", "description": "the paper's XB-Net configuration, seeds side by side",
        "base_config": base, "trials": cores, "early_stopping": None,
        "parameters": {"training.seed": {"choice": list(range(cores))}},
    }))
    return load_space(space_file)


def run_arm(arm: str, space, minutes: float, trials: int, storage: Path, cores: int, seed: int) -> ArmLog:
    from celltune.search_spaces.tuner import SearchSettings, build_tuner

    sampler = "tpe" if arm == "tpe+asha" else "random"
    settings = SearchSettings(storage_path=str(storage), name=arm.replace("+", "-"), trials=trials, seed=seed,
                              max_concurrent=cores, sampler=sampler, early_stopping=arm == "tpe+asha", verbose=0)
    log = ArmLog(minutes, cut_trials=arm != "default")
    tuner = build_tuner(space, settings, hooks=None, stop=wall_stopper(log))
    results = tuner.fit()
    log.ended = time.monotonic()
    log.results = results  # type: ignore[attr-defined]
    return log


def threshold_gain(results, space) -> dict[str, tuple[float, float]]:
    """SEG per dataset of the best trial with its training thresholds and with the study's tuned ones."""
    from celltune.search_spaces.postprocess_study import predict_validation, seg_score_for, tune_postprocess
    from celltune.search_spaces.tuner import checkpoint_of
    from celltune.trainables.model_card import BEST_WEIGHTS, load_model_folder

    best = results.get_best_result(metric="seg_mean", mode="max", scope="all")
    model, card = load_model_folder(Path(checkpoint_of(best).to_directory()), weights_names=(BEST_WEIGHTS,))
    config = space.base_config().model_validate(card.train_config)
    probabilities = predict_validation(model, card, config.data)
    kind = probabilities.kind
    choice = tune_postprocess(probabilities, space.postprocess.for_target_kind(kind),
                              trials=space.postprocess.trials, start_params=card.postprocess)
    return {name: (seg_score_for(kind, frames, card.postprocess),
                   seg_score_for(kind, frames, choice.per_dataset[name]))
            for name, frames in probabilities.frames.items() if frames}


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(arms: dict[str, ArmLog], gains: dict[str, tuple[float, float]], args) -> list[str]:
    bests = {arm: best_evaluation(log.evaluations) for arm, log in arms.items()}
    top = max((b.scores["seg_mean"] for b in bests.values() if b), default=None)
    target = None if top is None else TARGET_FRACTION * top
    header = ["arm", "trials", *[f"SEG {name}" for name in DATASETS], "SEG mean",
              f"trial-min to {TARGET_FRACTION} x best", "trial-min spent", "wall min"]
    lines = [f"real-data search benchmark: {args.minutes:g} wall minutes per arm on {args.cores} cores, "
             f"cpu_universal trials of {args.trial_minutes:g} min, seed {args.seed}",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for arm, log in arms.items():
        best = bests[arm]
        scores = best.scores if best else {}
        spent = spend_minutes(log.evaluations)
        segs = [_fmt(scores.get(f"seg/{name}")) for name in DATASETS]
        lines.append(f"| {arm} | {len({e.trial_id for e in log.evaluations})} | {' | '.join(segs)} | "
                     f"{_fmt(scores.get('seg_mean'))} | "
                     f"{_fmt(minutes_to(log.evaluations, target) if target else None, '.1f')} | "
                     f"{_fmt(spent[-1] if spent else None, '.1f')} | {log.wall_minutes:.1f} |")
    if gains:
        lines.append("")
        lines.append("| tuned thresholds (tpe+asha best) | SEG with training thresholds | SEG tuned | gain |")
        lines.append("|---|---|---|---|")
        for name, (before, after) in gains.items():
            lines.append(f"| {name} | {before:.3f} | {after:.3f} | {after - before:+.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=Path, required=True, help="stores of the three datasets (data prep)")
    parser.add_argument("--minutes", type=float, default=60, help="wall minutes per arm")
    parser.add_argument("--trial-minutes", type=float, default=10, help="training budget of a cpu_universal trial")
    parser.add_argument("--cores", type=int, default=2, help="trials at once (one core each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default="default,random,tpe+asha", help="comma-separated arms to run")
    parser.add_argument("--workdir", type=Path, default=None, help="Tune storage (default: temp)")
    args = parser.parse_args()
    stores = args.stores.resolve()
    missing = [name for name in DATASETS if not (stores / f"{name}.zarr").is_dir()]
    if missing:
        parser.error(f"--stores {stores}: no store for {', '.join(missing)} (run `celltune data prep`)")

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from celltune.data_prep.ray_session import ensure_ray
    from celltune.platform.search_run import resolve_stores
    from celltune.search_spaces.space import load_space

    work = args.workdir or Path(tempfile.mkdtemp(prefix="celltune-bench-real-search-"))
    space = resolve_stores(load_space("cpu_universal", stores_dir=stores,
                                      overrides={"training.max_minutes": args.trial_minutes}))
    full_trials = max(1, round(args.minutes / args.trial_minutes * args.cores))
    ensure_ray(None)
    arms: dict[str, ArmLog] = {}
    for arm in args.arms.split(","):
        if arm == "default":
            arms[arm] = run_arm(arm, resolve_stores(default_space(stores, args.minutes, args.cores)), args.minutes,
                                args.cores, work, args.cores, args.seed)
        elif arm in ("random", "tpe+asha"):
            trials = full_trials if arm == "random" else 4 * full_trials  # ASHA frees cores for more trials
            arms[arm] = run_arm(arm, space, args.minutes, trials, work, args.cores, args.seed)
        else:
            parser.error(f"--arms: unknown arm {arm!r} (default, random, tpe+asha)")
    gains = threshold_gain(arms["tpe+asha"].results, space) if "tpe+asha" in arms else {}  # type: ignore[attr-defined]
    import ray

    ray.shutdown()
    sys.stdout.write("\n".join(format_report(arms, gains, args)) + "\n")


if __name__ == "__main__":
    main()
