"""Cost beside quality in a search: what each trial's network costs per frame, the Pareto front of the objective
against that cost, and the best trial within a latency bound.

A user who must segment N frames an hour on given hardware wants the best model that is fast enough, not the
best model. The cost is the convolution GMac per 512x512 frame (counted on the meta device, so free to compute
and the same on every machine); the bound is the space's ``objective.max_gmac``. The search itself still
optimizes the objective alone; the bound decides which trial is registered and the front shows the trade-off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, TypeVar

Key = TypeVar("Key")


def trial_gmac(base_tree: Mapping[str, Any], sample: Mapping[str, Any]) -> float:
    """Convolution GMac per 512x512 frame of the network a trial's sample builds."""
    from celltune.search_spaces.sampling import apply_sample

    model = apply_sample(base_tree, sample, source="trial cost").model
    return _gmac(json.dumps([model.name, model.options], sort_keys=True, default=str))


@lru_cache(maxsize=256)
def _gmac(key: str) -> float:
    import torch

    from celltune.trainables.architectures import build_model
    from celltune.trainables.complexity import model_cost

    name, options = json.loads(key)
    with torch.device("meta"):
        return model_cost(build_model(name, **options))["gmac_512"]


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def pareto_front(points: Sequence[tuple[Key, float, float]], mode: str) -> list[Key]:
    """The keys of ``(key, objective, cost)`` points no other point beats on both (objective by ``mode``, cost
    lower), cheapest first."""
    front = []
    for key, objective, cost in points:
        dominated = any((_better(o, objective, mode) or o == objective) and c <= cost and (o, c) != (objective, cost)
                        for _, o, c in points)
        if not dominated:
            front.append((cost, key))
    return [key for _, key in sorted(front, key=lambda item: item[0])]


def best_within(points: Sequence[tuple[Key, float, float]], mode: str, max_cost: float | None) -> Key | None:
    """The key of the best point whose cost is at most ``max_cost`` (None: no bound), or None if none fits."""
    allowed = [(key, objective) for key, objective, cost in points if max_cost is None or cost <= max_cost]
    if not allowed:
        return None
    pick = max if mode == "max" else min
    return pick(allowed, key=lambda item: item[1])[0]
