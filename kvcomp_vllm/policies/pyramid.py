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


class PyramidPolicy(SnapKVPolicy):
    """Lower layers keep more tokens, upper layers fewer; the mean over layers is the budget."""

    name = "pyramid"

    def budget_tier(self, layer: int) -> int:
        return layer

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        budget = super().layer_budget(layer, prompt_len)
        if budget >= prompt_len:  # a prompt within budget is kept whole in every layer
            return prompt_len
        window = min(self.config.window, prompt_len)
        schedule = pyramid_budgets(budget, self.num_layers, window, self.config.beta)
        return min(prompt_len, schedule[layer])
