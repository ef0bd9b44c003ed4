"""Optuna TPE + ASHA against random search without early stopping, same budget of trial-epochs, same run.

Goal (issue 5): TPE + ASHA reaches the target ``seg_mean`` with at most a third of the trial-epochs random
search needs. Both arms search the shipped ``demo`` space on the demo stores in one Ray session:

* random: Optuna's RandomSampler, every trial runs all its epochs (FIFO), ``budget // epochs`` trials;
* TPE + ASHA: the seeded TPE sampler and the space's ASHA settings, as many trials as the budget allows; the
  experiment stops once the trial-epochs spent (the sum over trials of the ``epoch`` each last reported)
  reach the budget. The random arm runs under the same stopper, where it never cuts anything.

Evaluations are recorded in the order the driver received them, so "trial-epochs to target" is the spend at
the evaluation where the running best ``seg_mean`` first reached the target (by default 0.95 x the best the
random arm reached with the same seed). Best ``seg_mean`` counts evaluations within the budget only.

With the same seed, TPE's random start-up trials (a third of the random arm's trial count) draw the same
configs as the random arm's first trials, so the arms differ by early stopping first and by TPE's model after
that; the default budget leaves TPE room beyond its start-up.

    .venv/bin/python benchmarks/bench_search.py [--budget 128] [--epochs 8] [--steps 4] [--seeds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TARGET_FRACTION = 0.95
GOAL_RATIO = 1 / 3


@dataclass(frozen=True)
class Evaluation:
    """One reported evaluation of one trial, ``epoch`` being the epochs that trial had trained by then."""

    trial_id: str
    epoch: int
    seg_mean: float


def cumulative_spend(evaluations: Iterable[Evaluation]) -> list[int]:
    """Trial-epochs spent after each evaluation: the sum over trials of the latest epoch each reported.

    A trial that restarted from a checkpoint reports epochs it already counted; the latest epoch, not the sum
    of reports, is what it has trained.
    """
    latest: dict[str, int] = {}
    spent, out = 0, []
    for evaluation in evaluations:
        before = latest.get(evaluation.trial_id, 0)
        if evaluation.epoch > before:
            spent += evaluation.epoch - before
            latest[evaluation.trial_id] = evaluation.epoch
        out.append(spent)
    return out


def trial_epochs_spent(evaluations: Sequence[Evaluation]) -> int:
    """All trial-epochs the evaluations account for."""
    spend = cumulative_spend(evaluations)
    return spend[-1] if spend else 0


def best_within(evaluations: Sequence[Evaluation], budget: int) -> float | None:
    """Best ``seg_mean`` among evaluations made while the spend was within ``budget`` (None: there were none)."""
    scores = [e.seg_mean for e, spent in zip(evaluations, cumulative_spend(evaluations), strict=True)
              if spent <= budget]
    return max(scores) if scores else None


def epochs_to_target(evaluations: Sequence[Evaluation], target: float) -> int | None:
    """Trial-epochs spent when the running best ``seg_mean`` first reached ``target`` (None: never)."""
    for evaluation, spent in zip(evaluations, cumulative_spend(evaluations), strict=True):
        if evaluation.seg_mean >= target:
            return spent
    return None


def target_for(random_best: float | None, fraction: float = DEFAULT_TARGET_FRACTION,
               fixed: float | None = None) -> float | None:
    """The target: ``fixed`` when given, else ``fraction`` x the random arm's best (None: random got nothing)."""
    if fixed is not None:
        return fixed
    return None if random_best is None else fraction * random_best


def spend_ratio(spent: int | None, baseline: int | None) -> float | None:
    """``spent / baseline``; None when either arm never reached the target."""
    if spent is None or not baseline:
        return None
    return spent / baseline


@dataclass
class BudgetLog:
    """The evaluations of one arm in arrival order, and whether they have used up the budget."""

    budget: int
    evaluations: list[Evaluation] = field(default_factory=list)

    def add(self, trial_id: str, result: dict) -> None:
        if "seg_mean" in result and "epoch" in result:
            self.evaluations.append(Evaluation(trial_id, int(result["epoch"]), float(result["seg_mean"])))

    @property
    def spent(self) -> int:
        return trial_epochs_spent(self.evaluations)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.budget


def budget_stopper(log: BudgetLog):
    """A Tune ``Stopper`` that records every result into ``log`` and ends the experiment once it is spent."""
    from ray.tune import Stopper

    class BudgetStopper(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            log.add(trial_id, result)
            return False  # single trials stop by finishing or by ASHA

        def stop_all(self) -> bool:
            return log.exhausted

    return BudgetStopper()


@dataclass(frozen=True)
class ArmResult:
    arm: str
    seed: int
    evaluations: list[Evaluation]
    budget: int
    wall_seconds: float

    @property
    def trials(self) -> int:
        return len({e.trial_id for e in self.evaluations})

    @property
    def spent(self) -> int:
        return trial_epochs_spent(self.evaluations)

    @property
    def best(self) -> float | None:
        return best_within(self.evaluations, self.budget)


def run_arm(space, arm: str, seed: int, budget: int, storage: Path, max_concurrent: int) -> ArmResult:
    """One search of ``space`` until it has finished its trials or spent ``budget`` trial-epochs."""
    from celltune.search_spaces.tuner import SearchSettings, build_tuner

    epochs = space.base_config().training.epochs
    if arm == "random":
        settings = SearchSettings(storage_path=str(storage), name=f"random-seed{seed}", trials=budget // epochs,
                                  seed=seed, max_concurrent=max_concurrent, sampler="random",
                                  early_stopping=False, verbose=0)
    else:
        eval_every = space.base_config().training.eval_every
        settings = SearchSettings(storage_path=str(storage), name=f"tpe-asha-seed{seed}",
                                  trials=max(1, budget // min(eval_every, epochs)), seed=seed,
                                  max_concurrent=max_concurrent, sampler="tpe", early_stopping=True, verbose=0,
                                  n_startup_trials=max(2, budget // epochs // 3))
    log = BudgetLog(budget)
    started = time.perf_counter()
    build_tuner(space, settings, hooks=None, stop=budget_stopper(log)).fit()
    return ArmResult(arm, seed, list(log.evaluations), budget, time.perf_counter() - started)


def _fmt(value: float | None, spec: str = ".3f", missing: str = "not reached") -> str:
    return missing if value is None else format(value, spec)


def format_report(pairs: list[tuple[ArmResult, ArmResult, float | None]], args) -> list[str]:
    """The table per seed, the means over seeds, and the goal line."""
    target_text = (f"{args.target:.3f} (fixed)" if args.target is not None
                   else f"{args.target_fraction:.2f} x the random arm's best seg_mean of the same seed")
    header = ("seed", "arm", "trials", "trial-epochs spent", "best seg_mean", "target",
              "trial-epochs to target", "ratio vs random", "wall s")
    lines = [f"search on the '{args.space}' space: budget {args.budget} trial-epochs per arm, full trials of "
             f"{args.epochs} epochs x {args.steps} steps, eval every {args.eval_every} epoch(s), "
             f"up to {args.max_concurrent} trials at once, CPU",
             f"target: {target_text}",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    ratios: list[float | None] = []
    for random_arm, tpe_arm, target in pairs:
        random_hit = epochs_to_target(random_arm.evaluations, target) if target is not None else None
        tpe_hit = epochs_to_target(tpe_arm.evaluations, target) if target is not None else None
        ratios.append(spend_ratio(tpe_hit, random_hit))
        for arm, hit, ratio in ((random_arm, random_hit, spend_ratio(random_hit, random_hit)),
                                (tpe_arm, tpe_hit, ratios[-1])):
            lines.append(f"| {arm.seed} | {arm.arm} | {arm.trials} | {arm.spent} | {_fmt(arm.best)} | "
                         f"{_fmt(target, missing='n/a')} | {_fmt(hit, 'd')} | {_fmt(ratio, '.2f', 'n/a')} | "
                         f"{arm.wall_seconds:.0f} |")
    mean_ratio = _mean_ratio(ratios)
    if len(pairs) > 1:
        for index, name in ((0, "random"), (1, "tpe+asha")):
            arms = [pair[index] for pair in pairs]
            bests = [a.best for a in arms if a.best is not None]
            lines.append(f"| mean | {name} | {statistics.mean(a.trials for a in arms):.1f} | "
                         f"{statistics.mean(a.spent for a in arms):.1f} | "
                         f"{_fmt(statistics.mean(bests) if bests else None)} | | | "
                         f"{_fmt(mean_ratio if index else 1.0, '.2f', 'n/a')} | "
                         f"{statistics.mean(a.wall_seconds for a in arms):.0f} |")
    if mean_ratio is None:
        lines.append("TPE+ASHA did not reach the target in every seed (goal: <= 1/3 of random's trial-epochs): "
                     "not met")
    else:
        lines.append(f"TPE+ASHA reached the target with {mean_ratio:.2f} of random's trial-epochs (goal <= 1/3): "
                     f"{'met' if mean_ratio <= GOAL_RATIO else 'not met'}")
    return lines


def _mean_ratio(ratios: list[float | None]) -> float | None:
    if not ratios or any(r is None for r in ratios):
        return None
    return statistics.mean(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="demo", help="a shipped space name or a space file")
    parser.add_argument("--budget", type=int, default=128, help="trial-epochs per arm")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of a full trial (training.epochs)")
    parser.add_argument("--steps", type=int, default=4, help="training.steps_per_epoch")
    parser.add_argument("--eval-every", type=int, default=1, help="training.eval_every (one ASHA time unit)")
    parser.add_argument("--seeds", type=int, default=1, help="sampler seeds 0..N-1, each running both arms")
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials at once (1 CPU each)")
    parser.add_argument("--target", type=float, default=None, help="fixed target seg_mean (default: fraction)")
    parser.add_argument("--target-fraction", type=float, default=DEFAULT_TARGET_FRACTION,
                        help="target = this x the random arm's best seg_mean")
    parser.add_argument("--grace-period", type=int, default=2,
                        help="ASHA grace period in evaluations (the demo space's 1 leaves trials tied at 0 running)")
    parser.add_argument("--workdir", type=Path, default=None, help="demo data and Tune storage (default: temp)")
    args = parser.parse_args()
    if args.budget < args.epochs:
        parser.error(f"--budget {args.budget} is less than one full random trial of --epochs {args.epochs}")

    # Tune warns about frequent experiment snapshots when short trials checkpoint every epoch; expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from celltune.data_prep.ray_session import ensure_ray
    from celltune.platform.demo import run_demo
    from celltune.platform.search_run import resolve_stores
    from celltune.search_spaces.space import load_space

    work = args.workdir or Path(tempfile.mkdtemp(prefix="celltune-bench-search-"))
    stores = run_demo(work, show_progress=False).stores
    overrides = {"training.epochs": args.epochs, "training.steps_per_epoch": args.steps,
                 "training.eval_every": args.eval_every}
    space = resolve_stores(load_space(args.space, overrides=overrides, stores_dir=stores))
    if space.early_stopping is not None:
        early = space.early_stopping.model_copy(update={"grace_period": args.grace_period})
        space = dataclasses.replace(space, early_stopping=early)
    ensure_ray(None)
    pairs = []
    for seed in range(args.seeds):
        random_arm = run_arm(space, "random", seed, args.budget, work / "tune", args.max_concurrent)
        tpe_arm = run_arm(space, "tpe+asha", seed, args.budget, work / "tune", args.max_concurrent)
        pairs.append((random_arm, tpe_arm, target_for(random_arm.best, args.target_fraction, args.target)))
    report = format_report(pairs, args)
    import ray

    ray.shutdown()  # Ray's tqdm redraws its trial bars around every print while it runs
    sys.stdout.write("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
