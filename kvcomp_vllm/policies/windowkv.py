"""`windowkv` (WindowKV, as its paper and official code define it): one set of whole windows per layer.

The prefix (the prompt minus the observation window) is tiled from its start into windows of
`window_size` tokens, the last one shorter when the prefix does not divide. Each window is scored
over all KV heads of the layer and ranked, the short last window too; the layer keeps the best
windows for every head alike. Scoring: "average" is the mean of the window's token scores over
heads and tokens; "max" is, per head, the mean of its top half (`window_size // 2`) of token scores,
then the mean over heads. "max" suits QA-like prompts (a peak marks the answer) and observes the
last `window` queries; "average" suits summaries and observes the last `window // 2`. The paper picks
between them with a BERT task classifier; `window_scoring: auto` instead picks "max" when the
observation attention is concentrated (top-5% share >= `concentration_threshold`), else "average".

Layers form groups of `group_size`: the group's first layer selects and the others reuse its
windows, and each group has its own budget, falling linearly with depth (see `group_budgets`).
Departure for the paged cache: a layer keeps exactly its budget. Windows are taken best first and
the first one that does not fit keeps only its leading tokens, where the official code keeps a
whole number of windows (a few tokens more or fewer than the budget).
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F

from ..config import WINDOWKV_WINDOW
from .base import KVPolicy, LayerPlan, PromptView
from .pyramid import _linear_shares
from .scoring import attention_concentration, top_positions, with_window

BETA = 14  # the official default: the last group's share is group_size / BETA of the mean share


def group_budgets(budget: int, window: int, groups: int, group_size: int, prompt_len: int) -> tuple[int, ...]:
    """Tokens each group of layers keeps for a prompt of `prompt_len > budget` tokens; their mean is `budget`.

    As the official code's "arithmetic" decay: the selectable share s = budget - window falls
    linearly from 2s - top for the first group to top = s * group_size / 14 for the last (never
    above s), except that the first group keeps at most the whole prefix (the line then flattens,
    its mean unchanged); shares are rounded to integers summing to groups * s.
    """
    s = budget - window
    if groups == 1:
        return (budget,)
    top = Fraction(s * min(group_size, BETA), BETA)
    bottom = min(2 * s - top, Fraction(prompt_len - window))
    return tuple(window + share for share in _linear_shares(s, groups, bottom))


def window_scores(scores: torch.Tensor, size: int, scoring: str) -> torch.Tensor:
    """Score of each `size`-token window of the prefix (the last may be shorter), over all heads: `[windows]`."""
    heads, m = scores.shape
    count = -(-m // size)
    lengths = (m - torch.arange(count, device=scores.device) * size).clamp(max=size)
    if scoring == "average":
        tiles = F.pad(scores, (0, count * size - m)).view(heads, count, size)
        return tiles.sum(dim=(0, 2)) / (heads * lengths)
    half = max(1, size // 2)
    tiles = F.pad(scores, (0, count * size - m), value=float("-inf")).view(heads, count, size)
    ranked = tiles.sort(dim=-1, descending=True).values[..., :half]
    used = torch.arange(half, device=scores.device) < lengths.clamp(max=half)[:, None]
    top_mean = ranked.where(used, torch.zeros((), dtype=scores.dtype, device=scores.device)).sum(-1) / used.sum(-1)
    return top_mean.mean(dim=0)


def select_windows(scores: torch.Tensor, k: int, size: int, scoring: str) -> torch.Tensor:
    """`k` prefix positions, ascending: the best-ranked windows, the last one taken cut to its leading tokens."""
    m = scores.shape[-1]
    ranked = window_scores(scores, size, scoring)
    order = top_positions(ranked, ranked.shape[0])  # ties go to the earlier window
    lengths = (m - order * size).clamp(max=size)
    before = lengths.cumsum(0) - lengths
    take = torch.empty_like(order).scatter_(0, order, (k - before).clamp(min=0).minimum(lengths))
    offsets = torch.arange(size, device=scores.device)
    mask = offsets < take[:, None]
    return (torch.arange(take.shape[0], device=scores.device)[:, None] * size + offsets)[mask]


class WindowKVPolicy(KVPolicy):
    """The paper's WindowKV: windows shared by all heads of a layer, per-group budgets, task-chosen scoring."""

    name = "windowkv"

    @property
    def group_size(self) -> int:
        return self.config.layer_group(self.num_layers)

    def source_layer(self, layer: int) -> int:
        return layer - layer % self.group_size

    def budget_tier(self, layer: int) -> int:
        return layer // self.group_size

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        budget = super().layer_budget(layer, prompt_len)
        if budget >= prompt_len:  # a prompt within budget is kept whole in every layer
            return prompt_len
        groups = self.num_layers // self.group_size
        return group_budgets(budget, self.config.window, groups, self.group_size, prompt_len)[layer // self.group_size]

    def scoring(self, scores: torch.Tensor) -> str:
        """The configured window scoring, or (auto) "max" for concentrated observation attention, else "average"."""
        if self.config.window_scoring != "auto":
            return self.config.window_scoring
        return "max" if attention_concentration(scores) >= self.config.concentration_threshold else "average"

    def select(self, layer: int, prompt: PromptView) -> LayerPlan:
        n = prompt.prompt_len
        budget = self.view_budget(layer, prompt)
        if budget >= n:
            return LayerPlan(keep=None)
        half_window = max(1, self.config.window // 2)
        if self.config.window_scoring == "average":
            scoring, (scores, w) = "average", prompt.observe(half_window)
        else:
            scores, w = prompt.observe(self.config.window)
            scoring = self.scoring(scores)
            if scoring == "average":
                scores, w = prompt.observe(half_window)
        size = self.config.window_size or WINDOWKV_WINDOW
        chosen = select_windows(scores, budget - w, size, scoring)
        return LayerPlan(keep=with_window(chosen.expand(prompt.num_kv_heads, -1), n - w, n))
