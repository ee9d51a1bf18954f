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

Windows span heads: each head contributes its part of every window's score (and its concentration
share) as `head_statistics`, and `select` combines the rows of all the layer's heads, so tensor-parallel
ranks, each holding some heads, choose the windows one device would.

Budgets are `GroupLayout`'s, the choice of windows `SharedWindows`'; `LayerGroups` shares it in a group.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F

from ..config import WINDOWKV_WINDOW
from .layout import BudgetLayout
from .plan import LayerPlan, PromptView
from .pyramid import _linear_shares
from .scoring import attention_concentration, concentration_shares, top_positions, with_window
from .selector import LayerGroups, PerLayerBudget, ViewSelector

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


def head_window_scores(scores: torch.Tensor, size: int, scoring: str) -> torch.Tensor:
    """Each head's part of each `size`-token window's score (the last may be shorter): `[heads, windows]`.

    "average": the sum of the head's token scores in the window; "max": the mean of its top `size // 2`.
    `combine_heads` turns them into the windows' scores over all heads.
    """
    heads, m = scores.shape
    count = -(-m // size)
    if scoring == "average":
        return F.pad(scores, (0, count * size - m)).view(heads, count, size).sum(-1)
    lengths = (m - torch.arange(count, device=scores.device) * size).clamp(max=size)
    half = max(1, size // 2)
    tiles = F.pad(scores, (0, count * size - m), value=float("-inf")).view(heads, count, size)
    ranked = tiles.sort(dim=-1, descending=True).values[..., :half]
    used = torch.arange(half, device=scores.device) < lengths.clamp(max=half)[:, None]
    return ranked.where(used, torch.zeros((), dtype=scores.dtype, device=scores.device)).sum(-1) / used.sum(-1)


def combine_heads(per_head: torch.Tensor, m: int, size: int, scoring: str) -> torch.Tensor:
    """Window scores over all heads from every head's `head_window_scores` of an `m`-token prefix: `[windows]`.

    "average": the mean of the window's token scores over heads and tokens; "max": the mean over heads.
    """
    if scoring == "average":
        lengths = (m - torch.arange(per_head.shape[1], device=per_head.device) * size).clamp(max=size)
        return per_head.sum(0) / (per_head.shape[0] * lengths)
    return per_head.mean(dim=0)


def take_windows(ranked: torch.Tensor, m: int, k: int, size: int) -> torch.Tensor:
    """`k` positions of an `m`-token prefix from its windows' scores `ranked`, best window first, ascending."""
    order = top_positions(ranked, ranked.shape[0])  # ties go to the earlier window
    lengths = (m - order * size).clamp(max=size)
    before = lengths.cumsum(0) - lengths
    take = torch.empty_like(order).scatter_(0, order, (k - before).clamp(min=0).minimum(lengths))
    offsets = torch.arange(size, device=ranked.device)
    mask = offsets < take[:, None]
    return (torch.arange(take.shape[0], device=ranked.device)[:, None] * size + offsets)[mask]


class GroupLayout(BudgetLayout):
    """The paper's budgets: one per group of `group_size` layers (a tier each), falling with depth."""

    @property
    def group_size(self) -> int:
        return self.config.layer_group(self.num_layers)

    def budget_tier(self, layer: int) -> int:
        return layer // self.group_size

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        budget = super().layer_budget(layer, prompt_len)
        if budget >= prompt_len:  # a prompt within budget is kept whole in every layer
            return prompt_len
        groups = self.num_layers // self.group_size
        return group_budgets(budget, self.config.window, groups, self.group_size, prompt_len)[layer // self.group_size]


class SharedWindows(ViewSelector):
    """The paper's WindowKV choice: windows shared by all heads of a layer, task-chosen scoring."""

    spans_heads = True

    def __init__(self, config):
        self.config = config
        self.observation_window = config.window

    @property
    def window_tiles(self) -> int:
        """Tokens per window (`window_size`, default 8)."""
        return self.config.window_size or WINDOWKV_WINDOW

    def scoring(self, scores: torch.Tensor) -> str:
        """The configured window scoring, or (auto) "max" for concentrated observation attention, else "average"."""
        return self._scoring(attention_concentration(scores))

    def _scoring(self, concentration: float) -> str:
        if self.config.window_scoring != "auto":
            return self.config.window_scoring
        return "max" if concentration >= self.config.concentration_threshold else "average"

    def _observed(self, prompt: PromptView) -> dict[str, int]:
        """Per scoring this layer may use, its observation window (max: `window`, average: half of it)."""
        windows = {"max": self.config.window, "average": max(1, self.config.window // 2)}
        chosen = windows if self.config.window_scoring == "auto" else {self.config.window_scoring: None}
        return {k: min(windows[k], prompt.prompt_len) for k in chosen}

    def head_statistics(self, prompt: PromptView, budget: int) -> torch.Tensor | None:
        """Per head: (auto) its concentration share, then its part of every window's score for each scoring
        it may use ("max" over the `window` queries, then "average" over the last half)."""
        if budget >= prompt.prompt_len:
            return None
        columns = []
        for scoring, w in self._observed(prompt).items():
            scores, _ = prompt.observe(w)
            if self.config.window_scoring == "auto" and scoring == "max":
                columns.append(concentration_shares(scores)[:, None])
            columns.append(head_window_scores(scores, self.window_tiles, scoring))
        return torch.cat(columns, dim=1).float()

    def select(self, prompt: PromptView, budget: int, heads: torch.Tensor | None = None) -> LayerPlan:
        n = prompt.prompt_len
        if budget >= n:
            return LayerPlan(keep=None)
        heads = self.head_statistics(prompt, budget) if heads is None else heads
        size, observed = self.window_tiles, self._observed(prompt)
        auto = self.config.window_scoring == "auto"
        parts, at = {}, int(auto)  # the columns of head_statistics
        for scoring, w in observed.items():
            count = -(-(n - w) // size)
            parts[scoring], at = heads[:, at : at + count], at + count
        scoring = self._scoring(float(heads[:, 0].mean())) if auto else self.config.window_scoring
        w = observed[scoring]
        chosen = take_windows(combine_heads(parts[scoring], n - w, size, scoring), n - w, budget - w, size)
        return LayerPlan(keep=with_window(chosen.expand(prompt.num_kv_heads, -1), n - w, n))


def windowkv(config, num_layers: int) -> tuple[GroupLayout, LayerGroups]:
    """Per-group budgets; each group's first layer chooses the windows, the others reuse them."""
    layout = GroupLayout(config, num_layers)
    return layout, LayerGroups(PerLayerBudget(layout, SharedWindows(config)), layout.group_size)
