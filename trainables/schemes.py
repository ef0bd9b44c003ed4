"""Which dataset each micro-batch of an optimizer step comes from, for the training schemes of Guo et al.

A pure function of (scheme, seed, step), so every DDP rank runs the same number of backward passes in the same
order without talking to the others (if counts differed, gradient sync would hang).

- ``acc``: one minibatch from every dataset, gradients accumulated, then one optimizer step (the default).
- ``mix``: one pooled loader over all datasets (marked by :data:`POOLED`).
- ``seq``: datasets one after another, each for an equal share of the epochs.
- ``fix``: one dataset per step, in turn, fixed order.
- ``shu``: in turn, the order reshuffled every round.
- ``cho``: a random dataset every step.

An epoch holds the same number of minibatches in every scheme: ``minibatches_per_dataset`` per dataset, i.e.
that many optimizer steps under ``acc`` and ``n_datasets`` times as many single-minibatch steps otherwise.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("mix", "seq", "fix", "shu", "cho", "acc")
POOLED = -1


def optimizer_steps_per_epoch(scheme: str, n_datasets: int, minibatches_per_dataset: int) -> int:
    _check(scheme, n_datasets)
    return minibatches_per_dataset if scheme == "acc" else minibatches_per_dataset * n_datasets


def micro_batches(scheme: str, step: int, *, n_datasets: int, seed: int, steps_per_epoch: int,
                  epochs: int) -> list[int]:
    """Dataset indices (or ``[POOLED]``) whose minibatches make optimizer step ``step`` (0-based, global)."""
    _check(scheme, n_datasets)
    if scheme == "acc":
        return list(range(n_datasets))
    if scheme == "mix":
        return [POOLED]
    if scheme == "seq":
        epoch = step // steps_per_epoch
        return [min(epoch * n_datasets // max(epochs, 1), n_datasets - 1)]
    if scheme == "fix":
        return [step % n_datasets]
    if scheme == "shu":
        round_index, position = divmod(step, n_datasets)
        order = np.random.default_rng([seed, round_index]).permutation(n_datasets)
        return [int(order[position])]
    return [int(np.random.default_rng([seed, step]).integers(n_datasets))]  # cho


def _check(scheme: str, n_datasets: int) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown training scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if n_datasets < 1:
        raise ValueError(f"a training scheme needs at least one dataset, got {n_datasets}")
