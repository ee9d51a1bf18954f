"""`snapkv` (SnapKV): keep the prefix tokens the observation window attends to most, per KV head."""

from __future__ import annotations

from .base import KVPolicy, LayerPlan, PromptView
from .scoring import pool_scores, top_positions, with_window


class SnapKVPolicy(KVPolicy):
    """Top-(budget - window) pooled observation scores per KV head, plus the window itself."""

    name = "snapkv"

    def select(self, layer: int, prompt: PromptView) -> LayerPlan:
        n = prompt.prompt_len
        budget = self.view_budget(layer, prompt)
        if budget >= n:
            return LayerPlan(keep=None)
        scores, w = prompt.observe(self.config.window)
        scores = pool_scores(scores, self.config.pool_size, self.config.pooling)
        return LayerPlan(keep=with_window(top_positions(scores, budget - w), n - w, n))
