import math
from collections import Counter

import pytest
import torch

from celltune.trainables.lr_schedules import build_lr_schedule
from celltune.trainables.schemes import POOLED, micro_batches, optimizer_steps_per_epoch


def _draws(scheme, steps, n=3, seed=0, steps_per_epoch=6, epochs=3):
    return [micro_batches(scheme, s, n_datasets=n, seed=seed, steps_per_epoch=steps_per_epoch, epochs=epochs)
            for s in range(steps)]


def test_acc_draws_every_dataset_each_step():
    assert _draws("acc", 4) == [[0, 1, 2]] * 4
    assert optimizer_steps_per_epoch("acc", 3, 20) == 20


def test_single_dataset_schemes_use_n_times_the_steps():
    for scheme in ("mix", "seq", "fix", "shu", "cho"):
        assert optimizer_steps_per_epoch(scheme, 3, 20) == 60


def test_fix_cycles_in_order_and_mix_pools():
    assert [d for (d,) in _draws("fix", 6)] == [0, 1, 2, 0, 1, 2]
    assert _draws("mix", 2) == [[POOLED], [POOLED]]


def test_shu_visits_each_dataset_once_per_round_in_changing_orders():
    draws = [d for (d,) in _draws("shu", 3 * 20)]
    rounds = [tuple(draws[i:i + 3]) for i in range(0, len(draws), 3)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds)
    assert len(set(rounds)) > 1


def test_cho_is_a_pure_function_of_seed_and_step():
    assert _draws("cho", 50, seed=7) == _draws("cho", 50, seed=7)
    assert _draws("cho", 50, seed=7) != _draws("cho", 50, seed=8)
    assert set(Counter(d for (d,) in _draws("cho", 300)).keys()) == {0, 1, 2}


def test_seq_gives_each_dataset_an_equal_share_of_epochs():
    # 3 datasets, 3 epochs of 6 steps: epoch e trains dataset e only.
    draws = [d for (d,) in _draws("seq", 18)]
    assert draws == [0] * 6 + [1] * 6 + [2] * 6


def test_unknown_scheme_names_the_choices():
    with pytest.raises(ValueError, match="unknown training scheme 'foo'.*acc"):
        micro_batches("foo", 0, n_datasets=2, seed=0, steps_per_epoch=1, epochs=1)


def _lrs(name, epochs, **kw):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    schedule = build_lr_schedule(opt, name, epochs=epochs, **kw)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return lrs


def test_warm_restarts_restart_at_100_300_700():
    lrs = _lrs("warm_restarts", 1500, t0=100, t_mult=2, eta_min=1e-6)
    restarts = [e for e in range(1, 1500) if lrs[e] > lrs[e - 1]]
    assert restarts == [100, 300, 700]
    assert lrs[0] == pytest.approx(1e-4)
    assert min(lrs) >= 1e-6 and lrs[699] < 1.1e-6


def test_step_halves_every_30_epochs_and_constant_stays():
    lrs = _lrs("step", 91, step_size=30, gamma=0.5)
    assert lrs[29] == pytest.approx(1e-4) and lrs[30] == pytest.approx(5e-5) and lrs[90] == pytest.approx(1.25e-5)
    assert set(_lrs("constant", 10)) == {1e-4}


def test_cosine_ends_near_eta_min():
    lrs = _lrs("cosine", 50, eta_min=1e-6)
    assert lrs[25] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi * 25 / 50)) / 2)


def test_one_cycle_warms_up_from_a_25th_peaks_then_anneals_to_eta_min():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = build_lr_schedule(opt, "one_cycle", epochs=1, warmup_fraction=0.2, eta_min=1e-5)
    lrs = []
    for step in range(101):
        schedule.set_progress(step / 100)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3 / 25)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 20
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:21], strict=True))  # rising warm-up
    assert all(a >= b for a, b in zip(lrs[20:-1], lrs[21:], strict=True))  # falling after
    assert lrs[-1] == pytest.approx(1e-5)
    schedule.step()  # the per-epoch hook leaves the rate alone
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)

    restored = build_lr_schedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), "one_cycle",
                                 epochs=1, warmup_fraction=0.2, eta_min=1e-5)
    schedule.set_progress(0.5)
    restored.load_state_dict(schedule.state_dict())
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
