"""`full`: no compression; the baseline every other policy is measured against."""

from __future__ import annotations

import torch

from .base import KVPolicy, LayerPlan


class FullPolicy(KVPolicy):
    """Keeps every prompt token in every layer."""

    name = "full"

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        return prompt_len

    def select(self, layer: int, keys: torch.Tensor, queries: torch.Tensor, scale: float) -> LayerPlan:
        return LayerPlan(keep=None)
