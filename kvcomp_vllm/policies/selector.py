"""Selectors: which prompt positions each KV head of a layer keeps (a `PromptView` in, a `LayerPlan` out).

Selection composes from small pieces. A `Chooser` picks `count` prefix positions per head from
observation scores (`TopK`: SnapKV's pooled top-k). A `ViewSelector` plans one view for a given budget
(`KeepWindow` force-keeps the observation window around a chooser; `KeepAll`). A `Selector` plans a
layer: `PerLayerBudget` gives a view selector the layer's budget from a budget layout (`layout.py`),
`LayerGroups` makes each group of layers reuse its first layer's plan; PoD's key sharing is in `pod.py`.

Tensor parallelism: a view holds this rank's KV heads only. Head-local rules (SnapKV's per-head top-k)
need nothing more; a rule that spans the layer's heads (windowkv's windows shared by all heads, the
attention-concentration statistics) puts what it needs of each head into `head_statistics`, rows that
the caller gathers from every rank in head order (`RequestCompressor.plan`'s `gather`) and hands to
`select`, so every rank decides as one device holding all heads would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .layout import BudgetLayout
from .plan import LayerPlan, PromptView
from .scoring import pool_scores, top_positions, with_window


class Chooser(ABC):
    """Picks prefix positions per KV head from observation-window scores."""

    spans_heads = False  # whether `choose` combines `head_statistics` over all the layer's KV heads

    def head_statistics(self, scores: torch.Tensor) -> torch.Tensor | None:
        """This view's rows `[kv_heads, width]` that `choose` combines over all heads, from its scores."""
        return None

    @abstractmethod
    def choose(self, scores: torch.Tensor, count: int, heads: torch.Tensor | None = None) -> torch.Tensor:
        """`count` prefix positions per KV head, `[kv_heads, count]`, from `[kv_heads, prefix]` scores
        (and `heads`, the layer's `head_statistics` over all its KV heads, where the chooser has them)."""


class TopK(Chooser):
    """SnapKV's choice: the `count` highest pooled scores per KV head."""

    def __init__(self, pool_size: int, pooling: str):
        self.pool_size, self.pooling = pool_size, pooling

    def pooled(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores smoothed along positions, as ranked."""
        return pool_scores(scores, self.pool_size, self.pooling)

    def choose(self, scores, count, heads=None):
        return top_positions(self.pooled(scores), count)


class ViewSelector(ABC):
    """Plans one layer's view for a budget: the tokens per KV head it keeps of those in the view."""

    observation_window = 0  # prompt queries it scores with; 0 where it never scores
    spans_heads = False  # whether `select` combines `head_statistics` over all KV heads of the layer

    def head_statistics(self, prompt: PromptView, budget: int) -> torch.Tensor | None:
        """This view's rows `[kv_heads, width]` of what `select` combines over all the layer's heads, or None
        where it needs none (head-local rules, a layer kept whole). `width` follows from the prompt length
        and the config alone, so every tensor-parallel rank gathers rows of one shape."""
        return None

    @abstractmethod
    def select(self, prompt: PromptView, budget: int, heads: torch.Tensor | None = None) -> LayerPlan:
        """Plan keeping `budget` tokens per KV head; `heads` holds `head_statistics` of every KV head."""


class KeepAll(ViewSelector):
    """Keeps every token (policy `full`)."""

    def select(self, prompt, budget, heads=None):
        return LayerPlan(keep=None)


class KeepWindow(ViewSelector):
    """SnapKV's frame: keep the last `window` tokens and let `chooser` pick the rest of the budget from
    the window's scores of the prefix."""

    def __init__(self, chooser: Chooser, window: int):
        self.chooser, self.observation_window = chooser, window
        self.spans_heads = chooser.spans_heads

    def head_statistics(self, prompt, budget):
        if not self.spans_heads or budget >= prompt.prompt_len:
            return None
        return self.chooser.head_statistics(prompt.observe(self.observation_window)[0])

    def select(self, prompt, budget, heads=None):
        n = prompt.prompt_len
        if budget >= n:
            return LayerPlan(keep=None)
        scores, w = prompt.observe(self.observation_window)
        return LayerPlan(keep=with_window(self.chooser.choose(scores, budget - w, heads), n - w, n))


class Selector(ABC):
    """Plans one layer of a request; `RequestCompressor` calls it layer by layer."""

    observation_window = 0  # prompt queries it scores with; 0 where it never scores
    spans_heads = False  # whether `select` combines statistics over all KV heads of a layer (`head_statistics`)

    def source_layer(self, layer: int) -> int:
        """Layer whose plan `layer` reuses (see `derive`); itself unless plans are shared across layers."""
        return layer

    def head_statistics(self, layer: int, prompt: PromptView) -> torch.Tensor | None:
        """This view's rows of what `select` combines over all `layer`'s KV heads (`ViewSelector.head_statistics`)."""
        return None

    @abstractmethod
    def select(self, layer: int, prompt: PromptView, heads: torch.Tensor | None = None) -> LayerPlan:
        """Plan for `layer` of one request; `heads` holds `head_statistics` of every KV head of the layer."""

    def derive(self, layer: int, prompt: PromptView, plan: LayerPlan | None) -> LayerPlan:
        """`layer`'s plan from its source layer's `plan`: the same plan, unless the selector derives another
        (PoD with selection: a member's from its owner's). `plan` is None where the source layer was not
        planned at this point (its caller plans only layers that evict)."""
        if plan is None:
            src = self.source_layer(layer)
            raise RuntimeError(f"layer {layer} reuses layer {src}'s plan, which was not computed first")
        return plan


class PerLayerBudget(Selector):
    """`inner` with each layer's budget from `layout`, for the whole prompt, at most the view's tokens."""

    def __init__(self, layout: BudgetLayout, inner: ViewSelector):
        self.layout, self.inner = layout, inner
        self.observation_window, self.spans_heads = inner.observation_window, inner.spans_heads

    def budget(self, layer: int, prompt: PromptView) -> int:
        """Tokens `layer` keeps of those in `prompt`: its budget for the whole prompt, at most all of them."""
        return min(prompt.prompt_len, self.layout.layer_budget(layer, prompt.budget_len))

    def head_statistics(self, layer, prompt):
        return self.inner.head_statistics(prompt, self.budget(layer, prompt))

    def select(self, layer, prompt, heads=None):
        return self.inner.select(prompt, self.budget(layer, prompt), heads)


class LayerGroups(Selector):
    """`inner` on the first layer of each run of `group_size` layers; the others reuse its plan."""

    def __init__(self, inner: Selector, group_size: int):
        self.inner, self.group_size = inner, group_size
        self.observation_window, self.spans_heads = inner.observation_window, inner.spans_heads

    def source_layer(self, layer: int) -> int:
        return layer - layer % self.group_size

    def head_statistics(self, layer, prompt):
        return self.inner.head_statistics(layer, prompt)

    def select(self, layer, prompt, heads=None):
        return self.inner.select(layer, prompt, heads)


def snapkv_selector(layout: BudgetLayout) -> Selector:
    """SnapKV's selection under `layout`'s budgets: the window plus the pooled top-k per KV head."""
    config = layout.config
    return PerLayerBudget(layout, KeepWindow(TopK(config.pool_size, config.pooling), config.window))
