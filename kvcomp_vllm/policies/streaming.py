"""`streaming` (StreamingLLM): attention sinks plus a recent window, no scoring."""

from __future__ import annotations

import torch

from .base import KVPolicy, LayerPlan, PromptView


class StreamingPolicy(KVPolicy):
    """Keeps the first `sink` tokens and the last `budget - sink` tokens of the prompt."""

    name = "streaming"

    def select(self, layer: int, prompt: PromptView, heads=None) -> LayerPlan:
        n = prompt.prompt_len
        budget = self.view_budget(layer, prompt)
        if budget >= n:
            return LayerPlan(keep=None)
        sink = min(self.config.sink, budget)
        positions = torch.cat(
            [torch.arange(sink), torch.arange(n - (budget - sink), n)]
        ).to(prompt.device)
        return LayerPlan(keep=positions.expand(prompt.num_kv_heads, -1))
