"""The trial-epoch bookkeeping of benchmarks/bench_search.py: spend, budget, target, ratio (no Ray)."""

from __future__ import annotations

import pytest
from benchmark_scripts import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_search") as module:
        yield module


def _run(bench, *rows):
    return [bench.Evaluation(trial, epoch, score) for trial, epoch, score in rows]


def test_spend_is_the_sum_of_each_trials_latest_epoch_in_arrival_order(bench):
    # a and b run side by side; b is stopped after epoch 1 (ASHA); c starts; a restarts from its epoch-2
    # checkpoint and reports epoch 2 again, which costs nothing new
    evaluations = _run(bench, ("a", 1, 0.1), ("b", 1, 0.2), ("a", 2, 0.3), ("c", 1, 0.1), ("a", 2, 0.3),
                       ("a", 3, 0.5), ("c", 2, 0.4))
    assert bench.cumulative_spend(evaluations) == [1, 2, 3, 4, 4, 5, 6]
    assert bench.trial_epochs_spent(evaluations) == 6
    assert bench.trial_epochs_spent([]) == 0


def test_epochs_to_target_is_the_spend_when_the_running_best_first_reaches_it(bench):
    evaluations = _run(bench, ("a", 1, 0.1), ("b", 1, 0.45), ("a", 2, 0.3), ("b", 2, 0.5), ("a", 3, 0.6))
    assert bench.epochs_to_target(evaluations, 0.45) == 2  # reached exactly counts
    assert bench.epochs_to_target(evaluations, 0.46) == 4
    assert bench.epochs_to_target(evaluations, 0.6) == 5
    assert bench.epochs_to_target(evaluations, 0.61) is None


def test_best_counts_only_evaluations_within_the_budget(bench):
    # the stopper fires at 4 trial-epochs, but c's result was already on its way: it is over budget
    evaluations = _run(bench, ("a", 1, 0.2), ("b", 1, 0.3), ("a", 2, 0.25), ("b", 2, 0.35), ("c", 1, 0.9))
    assert bench.best_within(evaluations, 4) == pytest.approx(0.35)
    assert bench.best_within(evaluations, 5) == pytest.approx(0.9)
    assert bench.best_within(evaluations, 0) is None


def test_budget_log_is_exhausted_once_the_spend_reaches_the_budget(bench):
    log = bench.BudgetLog(budget=3)
    log.add("a", {"epoch": 1, "seg_mean": 0.1, "training_iteration": 1})
    log.add("b", {"epoch": 1, "seg_mean": 0.2})
    assert (log.spent, log.exhausted) == (2, False)
    log.add("a", {"done": True})  # Tune's final bookkeeping result carries no evaluation
    assert (log.spent, log.exhausted) == (2, False)
    log.add("a", {"epoch": 2, "seg_mean": 0.3})
    assert (log.spent, log.exhausted) == (3, True)
    assert [e.trial_id for e in log.evaluations] == ["a", "b", "a"]


def test_target_and_ratio(bench):
    assert bench.target_for(0.8) == pytest.approx(0.76)  # 0.95 x the random arm's best
    assert bench.target_for(0.8, fraction=0.9) == pytest.approx(0.72)
    assert bench.target_for(0.8, fixed=0.5) == 0.5
    assert bench.target_for(None) is None
    assert bench.spend_ratio(12, 36) == pytest.approx(1 / 3)
    assert bench.spend_ratio(None, 36) is None
    assert bench.spend_ratio(12, None) is None


def test_report_compares_the_arms_on_the_random_arms_target(bench):
    from argparse import Namespace

    args = Namespace(space="demo", budget=6, epochs=3, steps=4, eval_every=1, max_concurrent=2, target=None,
                     target_fraction=0.95)
    # random: two full trials of 3 epochs, best 0.8 at spend 6; its target 0.76 is first reached there
    random_arm = bench.ArmResult("random", 0, _run(bench, ("r1", 1, 0.1), ("r1", 2, 0.2), ("r1", 3, 0.3),
                                                   ("r2", 1, 0.5), ("r2", 2, 0.7), ("r2", 3, 0.8)), 6, 10.0)
    # tpe+asha: reaches 0.77 >= 0.76 at spend 2, so 2/6 = 0.33 of random's trial-epochs: the goal is met
    tpe_arm = bench.ArmResult("tpe+asha", 0, _run(bench, ("t1", 1, 0.4), ("t2", 1, 0.77), ("t2", 2, 0.79)), 6, 8.0)
    lines = bench.format_report([(random_arm, tpe_arm, bench.target_for(random_arm.best))], args)
    assert lines[-3] == "| 0 | random | 2 | 6 | 0.800 | 0.760 | 6 | 1.00 | 10 |"
    assert lines[-2] == "| 0 | tpe+asha | 2 | 3 | 0.790 | 0.760 | 2 | 0.33 | 8 |"
    assert lines[-1] == "TPE+ASHA reached the target with 0.33 of random's trial-epochs (goal <= 1/3): met"

    slow = bench.ArmResult("tpe+asha", 0, _run(bench, ("t1", 1, 0.4), ("t1", 2, 0.5), ("t2", 1, 0.77)), 6, 8.0)
    lines = bench.format_report([(random_arm, slow, bench.target_for(random_arm.best))], args)
    assert lines[-1].endswith("with 0.50 of random's trial-epochs (goal <= 1/3): not met")

    never = bench.ArmResult("tpe+asha", 0, _run(bench, ("t1", 1, 0.4)), 6, 8.0)
    lines = bench.format_report([(random_arm, never, bench.target_for(random_arm.best))], args)
    assert "| not reached | n/a |" in lines[-2]
    assert lines[-1].startswith("TPE+ASHA did not reach the target") and lines[-1].endswith("not met")
