"""`windowkv-per-head`: our earlier WindowKV variant, contiguous windows chosen per KV head, exact budget.

Unlike the paper's form (`windowkv`), each KV head picks its own windows, every layer keeps the same
budget, and the task adaptation changes the window *size* rather than the window scoring.

The prefix (the prompt minus the observation window) is tiled into windows of `s` tokens from its
start. A window's score is the sum of its tokens' observation scores; each KV head keeps its
best `(budget - window) // s` windows, then the remaining `< s` tokens as the best-scoring
contiguous run outside the chosen windows, so every layer keeps exactly its budget.

Task-adaptive window size (`window_size="auto"`, the default): the scoring layer measures how concentrated the
observation attention is, as the share of attention mass on its top 5% prefix tokens (mean over
KV heads). Concentrated attention (share >= `concentration_threshold`) points at a few answer
locations, as in retrieval and QA; the budget then goes to large windows around them so each keeps
its surrounding sentence intact. Spread attention (summaries, aggregation over many places) needs
many distinct locations; the budget then goes to small windows so more of them fit. Either way
the adaptive size is capped so that the selection has at least three runs (whole windows plus the
shorter last run): the attention sink at the prompt's start draws attention by itself and takes
one, and recent text tends to take another. On SmolLM2 at a 2.5% budget of 2k-token prompts (20
selectable tokens), one 20-token run kept the needle in no head and two windows of 10 found it in
2 of 12 prompts, while three or more runs (sizes 4-8) found it in 7 of 12; at 5% the uncapped two
windows of 32 plus a 7-token run found it in 9 of 12 (benchmarks/results/eval-smollm2-cpu/windowkv-small-budget).

Layers are grouped `group_size` at a time: the group's first layer scores and selects, and the
other layers of the group reuse its indices.

The adaptive size is one per layer: each head's concentration share is a `head_statistics` row and the
size follows their mean over all the layer's heads, whichever tensor-parallel rank holds them.
"""

from __future__ import annotations

import torch

from .layout import BudgetLayout
from .scoring import concentration_shares, top_positions
from .selector import Chooser, KeepWindow, LayerGroups, PerLayerBudget

MIN_RUNS = 3  # an adaptive window size leaves room for at least this many runs


def select_windows(scores: torch.Tensor, k: int, size: int) -> torch.Tensor:
    """`k` prefix positions per head made of whole `size`-token windows plus one shorter run: `[heads, k]`."""
    heads, m = scores.shape
    whole, rest = divmod(k, size)
    num_windows = m // size
    window_scores = scores[:, : num_windows * size].reshape(heads, num_windows, size).sum(-1)
    best = top_positions(window_scores, whole)
    chosen = (best.unsqueeze(-1) * size + torch.arange(size, device=scores.device)).reshape(heads, -1)
    if rest:
        free = scores.scatter(1, chosen, float("-inf"))
        start = free.unfold(-1, rest, 1).sum(-1).argmax(-1, keepdim=True)
        chosen = torch.cat([chosen, start + torch.arange(rest, device=scores.device)], dim=-1)
    return chosen


class PerHeadWindows(Chooser):
    """Per-KV-head whole-window selection with a task-adaptive window size (`window_size`)."""

    def __init__(self, config):
        self.config = config
        self.spans_heads = config.window_size in (None, "auto")

    def head_statistics(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Each head's concentration share `[kv_heads, 1]` where the window size adapts to it."""
        return concentration_shares(scores)[:, None].float() if self.spans_heads else None

    def window_size(self, scores: torch.Tensor, selectable: int, heads: torch.Tensor | None = None) -> int:
        """Configured window size, or the adaptive choice from the attention pattern for `selectable` tokens
        (`heads`: every head's concentration share; else those of `scores`)."""
        if not self.spans_heads:
            return self.config.window_size
        shares = concentration_shares(scores) if heads is None else heads[:, 0]
        spread, concentrated = self.config.window_sizes
        size = concentrated if float(shares.mean()) >= self.config.concentration_threshold else spread
        return max(1, min(size, (selectable - 1) // (MIN_RUNS - 1)))  # then cdiv(selectable, size) >= MIN_RUNS

    def choose(self, scores, count, heads=None):
        return select_windows(scores, count, self.window_size(scores, count, heads))


def windowkv_per_head(config, num_layers: int) -> tuple[BudgetLayout, LayerGroups]:
    """One budget for all layers; the window plus per-head windows, shared within layer groups."""
    layout = BudgetLayout(config, num_layers)
    windows = KeepWindow(PerHeadWindows(config), config.window)
    return layout, LayerGroups(PerLayerBudget(layout, windows), config.layer_group(num_layers))
