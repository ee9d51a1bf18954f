"""`streaming` (StreamingLLM): attention sinks plus a recent window, no scoring."""

from __future__ import annotations

import torch

from .layout import BudgetLayout
from .plan import LayerPlan, PromptView
from .selector import PerLayerBudget, ViewSelector


class SinkAndRecent(ViewSelector):
    """Keeps the first `sink` tokens and the last `budget - sink` tokens of the prompt."""

    def __init__(self, sink: int):
        self.sink = sink

    def select(self, prompt: PromptView, budget: int, heads=None) -> LayerPlan:
        n = prompt.prompt_len
        if budget >= n:
            return LayerPlan(keep=None)
        sink = min(self.sink, budget)
        positions = torch.cat(
            [torch.arange(sink), torch.arange(n - (budget - sink), n)]
        ).to(prompt.device)
        return LayerPlan(keep=positions.expand(prompt.num_kv_heads, -1))


def streaming(config, num_layers: int) -> tuple[BudgetLayout, PerLayerBudget]:
    """One budget for all layers, spent on the sink and the most recent tokens."""
    layout = BudgetLayout(config, num_layers)
    return layout, PerLayerBudget(layout, SinkAndRecent(config.sink))
