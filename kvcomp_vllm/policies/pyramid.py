"""`pyramid` (PyramidKV): SnapKV selection under per-layer budgets that shrink with depth (`PyramidLayout`)."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

from .layout import BudgetLayout
from .selector import Selector, snapkv_selector


def pyramid_budgets(budget: int, num_layers: int, window: int, beta: float, prompt_len: int) -> tuple[int, ...]:
    """Per-layer budgets for a prompt of `prompt_len > budget` tokens, as KVCache-Factory's PyramidKV sets them.

    With s = budget - window selectable tokens: a prompt shorter than 2s gives every layer `budget`
    (SnapKV's); a longer one gets shares falling linearly from `2s - s/beta` at the bottom (at most
    `prompt_len - window`, the bottom's whole prefix) to 2s minus that at the top. Either way the
    mean over layers is exactly `budget` and no layer's budget exceeds the prompt.
    """
    s = budget - window
    if num_layers == 1 or prompt_len < 2 * s:
        return (budget,) * num_layers
    bottom = min(2 * s - Fraction(s) / Fraction(beta), Fraction(prompt_len - window))
    return tuple(window + share for share in _linear_shares(s, num_layers, bottom))


@lru_cache(maxsize=256)
def _linear_shares(s: int, num_layers: int, bottom: Fraction) -> tuple[int, ...]:
    """`num_layers` integers summing to `num_layers * s`, nearest to the line from `bottom` to `2s - bottom`.

    Floors first, then one more token to the largest fractional parts (the lower layer on ties),
    which keeps the sequence non-increasing; exact rationals, so no float rounding decides.
    """
    step = (2 * s - 2 * bottom) / (num_layers - 1)
    raw = [bottom + step * layer for layer in range(num_layers)]
    shares = [math.floor(r) for r in raw]
    missing = num_layers * s - sum(shares)
    for layer in sorted(range(num_layers), key=lambda i: (shares[i] - raw[i], i))[:missing]:
        shares[layer] += 1
    return tuple(shares)


def tier_of(layer: int, num_layers: int, tiers: int | None) -> int:
    """Tier of `layer`: `tiers` consecutive runs of near-equal size, or one per layer when `tiers` is unset."""
    return layer if tiers is None else layer * tiers // num_layers


@lru_cache(maxsize=256)
def staircase(schedule: tuple[int, ...], tiers: int) -> tuple[int, ...]:
    """`schedule` flattened to a staircase of `tiers` tiers: each tier's layers keep the mean of their budgets.

    Means are floored from the bottom up, each tier's remainder carried to the tier above, so the
    result stays non-increasing. Its total equals `schedule`'s when the runs are of equal length
    (`tiers` divides the layers); otherwise it may fall short by less than the longest run.
    """
    runs: dict[int, list[int]] = {}
    for layer, budget in enumerate(schedule):
        runs.setdefault(tier_of(layer, len(schedule), tiers), []).append(budget)
    steps, carry = [], 0
    for budgets in runs.values():
        total = sum(budgets) + carry
        step = total // len(budgets)
        if steps and step > steps[-1][0]:  # a carried remainder never lifts a tier above the one below
            step = steps[-1][0]
        carry = total - step * len(budgets)
        steps.append((step, len(budgets)))
    return tuple(step for step, count in steps for _ in range(count))


class PyramidLayout(BudgetLayout):
    """Lower layers keep more tokens, upper layers fewer; the mean over layers is the budget.

    Every distinct budget is a tier, one KV cache group in vLLM with its own block table and attention
    metadata per scheduler step; `tiers` flattens the pyramid to that many tiers to cut this per-step cost.
    """

    def budget_tier(self, layer: int) -> int:
        return tier_of(layer, self.num_layers, self.config.tiers)

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        budget = super().layer_budget(layer, prompt_len)
        if budget >= prompt_len:  # a prompt within budget is kept whole in every layer
            return prompt_len
        schedule = pyramid_budgets(budget, self.num_layers, self.config.window, self.config.beta, prompt_len)
        if self.config.tiers is not None:
            schedule = staircase(schedule, self.config.tiers)
        return schedule[layer]


def pyramid(config, num_layers: int) -> tuple[PyramidLayout, Selector]:
    """SnapKV's selection under the pyramid's per-layer budgets."""
    layout = PyramidLayout(config, num_layers)
    return layout, snapkv_selector(layout)
