"""`full`: no compression; the baseline every other policy is measured against."""

from __future__ import annotations

from .base import KVPolicy, LayerPlan, PromptView


class FullPolicy(KVPolicy):
    """Keeps every prompt token in every layer."""

    name = "full"

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        return prompt_len

    def select(self, layer: int, prompt: PromptView, heads=None) -> LayerPlan:
        return LayerPlan(keep=None)
