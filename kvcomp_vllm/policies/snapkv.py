"""`snapkv` (SnapKV): keep the prefix tokens the observation window attends to most, per KV head."""

from __future__ import annotations

from .base import ObservedSelection
from .scoring import pool_scores, top_positions


class SnapKVPolicy(ObservedSelection):
    """Top-(budget - window) pooled observation scores per KV head, plus the window itself."""

    name = "snapkv"

    def choose(self, scores, count, heads=None):
        return top_positions(pool_scores(scores, self.config.pool_size, self.config.pooling), count)
