"""A policy is a budget layout (`policy.layout`: how many tokens each layer keeps, and where) plus a
selector (`policy.selector`: which tokens); `RequestCompressor` plans one request's layers with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import KVPolicyConfig
from .layout import BudgetLayout
from .plan import LayerPlan, PromptView
from .selector import Selector


@dataclass(frozen=True, eq=False)
class KVPolicy:
    """One policy on a model of `num_layers` layers: its `layout` and its `selector`."""

    config: KVPolicyConfig
    num_layers: int
    layout: BudgetLayout
    selector: Selector

    @property
    def name(self) -> str:
        return self.config.policy


HeadGather = Callable[[torch.Tensor | None], torch.Tensor | None]


class RequestCompressor:
    """Plans one request's layers in order, reusing the plan of each layer's source layer."""

    def __init__(self, policy: KVPolicy):
        self.policy = policy
        self._plans: dict[int, LayerPlan] = {}

    def gathers(self, layer: int) -> bool:
        """Whether planning `layer` gathers head statistics (it selects, and its rule spans heads)."""
        selector = self.policy.selector
        return selector.spans_heads and selector.source_layer(layer) == layer

    def plan(self, layer: int, prompt: PromptView, gather: HeadGather | None = None) -> LayerPlan:
        """`layer`'s plan. `gather` turns this view's `head_statistics` rows into every KV head's (tensor
        parallelism; it is called exactly once where `gathers(layer)`, even with None); without it the
        view holds all heads."""
        selector = self.policy.selector
        src = selector.source_layer(layer)
        if src == layer:
            heads = selector.head_statistics(layer, prompt) if selector.spans_heads else None
            if gather is not None and selector.spans_heads:
                heads = gather(heads)
            self._plans[layer] = selector.select(layer, prompt, heads)
            return self._plans[layer]
        return selector.derive(layer, prompt, self._plans.get(src))
