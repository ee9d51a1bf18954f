"""`snapkv` (SnapKV): keep the prefix tokens the observation window attends to most, per KV head."""

from __future__ import annotations

import torch

from .base import KVPolicy, LayerPlan
from .scoring import observation_scores, pool_scores, top_positions, with_window


class SnapKVPolicy(KVPolicy):
    """Top-(budget - window) pooled observation scores per KV head, plus the window itself."""

    name = "snapkv"

    def select(self, layer: int, keys: torch.Tensor, queries: torch.Tensor, scale: float) -> LayerPlan:
        n = keys.shape[1]
        budget = self.layer_budget(layer, n)
        if budget >= n:
            return LayerPlan(keep=None)
        w = min(self.config.window, n)
        scores = observation_scores(keys, queries[:, -w:], scale)
        scores = pool_scores(scores, self.config.kernel, self.config.pooling)
        return LayerPlan(keep=with_window(top_positions(scores, budget - w), n - w, n))
