"""`pyramid` (PyramidKV): SnapKV selection under per-layer budgets that shrink with depth."""

from __future__ import annotations

from functools import lru_cache

from .snapkv import SnapKVPolicy


@lru_cache(maxsize=256)
def pyramid_budgets(budget: int, num_layers: int, window: int, beta: float) -> tuple[int, ...]:
    """Per-layer budgets whose mean is exactly `budget`, non-increasing with depth.

    Each layer keeps `window` tokens plus a share of the `budget - window` selectable tokens; the
    shares form an arithmetic progression from `2s - s/beta` at the bottom to `s/beta` at the top
    (s = budget - window), rounded so they sum to exactly `num_layers * s`.
    """
    if num_layers == 1:
        return (budget,)
    s = max(budget - window, 0)
    top = s / beta
    bottom = 2 * s - top
    step = (top - bottom) / (num_layers - 1)
    raw = [bottom + step * layer for layer in range(num_layers)]
    shares = [int(r) for r in raw]
    missing = num_layers * s - sum(shares)
    # Largest fractional parts first (lower layer on ties) keeps the sequence non-increasing.
    for layer in sorted(range(num_layers), key=lambda i: (shares[i] - raw[i], i))[:missing]:
        shares[layer] += 1
    return tuple(window + share for share in shares)


def tier_of(layer: int, num_layers: int, tiers: int | None) -> int:
    """Budget step of `layer`: consecutive runs of near-equal size, or one per layer when `tiers` is unset."""
    return layer if tiers is None else layer * tiers // num_layers


@lru_cache(maxsize=256)
def staircase(schedule: tuple[int, ...], tiers: int) -> tuple[int, ...]:
    """`schedule` flattened to `tiers` steps: each run of layers keeps the mean of its budgets.

    Means are floored from the bottom up, each run's remainder carried to the run above, so the
    result stays non-increasing and its total falls short of `schedule`'s by less than one run.
    """
    runs: dict[int, list[int]] = {}
    for layer, budget in enumerate(schedule):
        runs.setdefault(tier_of(layer, len(schedule), tiers), []).append(budget)
    steps, carry = [], 0
    for budgets in runs.values():
        total = sum(budgets) + carry
        step = total // len(budgets)
        if steps and step > steps[-1][0]:  # a carried remainder never lifts a step above the one below
            step = steps[-1][0]
        carry = total - step * len(budgets)
        steps.append((step, len(budgets)))
    return tuple(step for step, count in steps for _ in range(count))


class PyramidPolicy(SnapKVPolicy):
    """Lower layers keep more tokens, upper layers fewer; the mean over layers is the budget.

    Every distinct budget is one KV cache group in vLLM, with its own block table and attention
    metadata per step; `tiers` flattens the pyramid to that many steps to cut this per-step cost.
    """

    name = "pyramid"

    def budget_tier(self, layer: int) -> int:
        return tier_of(layer, self.num_layers, self.config.tiers)

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        budget = super().layer_budget(layer, prompt_len)
        if budget >= prompt_len:  # a prompt within budget is kept whole in every layer
            return prompt_len
        window = min(self.config.window, prompt_len)
        schedule = pyramid_budgets(budget, self.num_layers, window, self.config.beta)
        if self.config.tiers is not None:
            schedule = staircase(schedule, self.config.tiers)
        return min(prompt_len, schedule[layer])
