"""`pod` (PoD): proximal tokens keep per-layer keys; distant tokens share one key per layer group.

Proximal tokens are the first `sink` and the last `recent` prompt tokens. In each layer group
(`groups`, e.g. from `kvcomp-vllm pod-calibrate`, or consecutive runs of `group_size`) the lowest
layer (the owner) keeps its keys for every token; the other layers keep keys only for proximal
tokens and attend to distant tokens with the owner's keys, while every layer keeps its own values.
Tokens generated after prefill are proximal by definition.

With `select: snapkv` (PoD combined with token selection) the owner keeps, of the distant tokens,
only the SnapKV choice within `budget` (per KV head: the top pooled observation-window scores, its
budget counting the proximal tokens), and its members keep values of exactly those tokens, reading
their keys from the owner's compacted cache, where they lie in order right after the sink.

`PoDLayout` holds the slots of owners and members; `DistantTopK` an owner's choice of distant tokens;
`SharedKeys` derives a member's plan from its owner's.
"""

from __future__ import annotations

import torch

from .layout import BudgetLayout
from .plan import LayerPlan, PromptView
from .scoring import top_positions
from .selector import KeepAll, PerLayerBudget, Selector, TopK, ViewSelector


class PoDLayout(BudgetLayout):
    """Owners keep every token (or, with selection, the proximal and the chosen distant ones); members keep
    proximal K/V and distant values. Two tiers: owners and members."""

    def __init__(self, config, num_layers: int):
        super().__init__(config, num_layers)
        self._owners = {layer: group[0] for group in config.pod_groups(num_layers) for layer in group}

    def owner_layer(self, layer: int) -> int:
        """Lowest layer of `layer`'s group: the one whose keys the group shares."""
        return self._owners[layer]

    @property
    def selects(self) -> bool:
        """Whether owners choose their distant tokens (`select: snapkv`) rather than keep them all."""
        return self.config.select == "snapkv"

    def budget_tier(self, layer: int) -> int:
        """Two tiers: the owner layers (tier 0, every token) and the member layers (tier 1)."""
        return 0 if self.owner_layer(layer) == layer else 1

    def distant_span(self, prompt_len: int) -> tuple[int, int]:
        """First distant position and the number of distant tokens kept (all of them without selection).

        They form one run: in the prompt without selection, in the owner's compacted cache with it."""
        sink = min(self.config.sink, prompt_len)
        distant = max(prompt_len - sink - self.config.recent, 0)
        if not self.selects:
            return sink, distant
        proximal = prompt_len - distant
        return sink, min(distant, max(self.config.resolve_budget(prompt_len) - proximal, 0))

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        sink, kept = self.distant_span(prompt_len)
        proximal = min(prompt_len, self.config.sink + self.config.recent)
        return proximal + kept if self.owner_layer(layer) == layer else proximal

    def layer_slots(self, layer: int, prompt_len: int) -> int:
        """Members hold proximal K/V plus distant values packed two per slot (see `cache_layout`)."""
        proximal = self.layer_budget(layer, prompt_len)
        if self.owner_layer(layer) == layer:
            return proximal
        return proximal + -(-self.distant_span(prompt_len)[1] // 2)

    def proximal(self, n: int, device) -> torch.Tensor:
        """The proximal positions of an `n`-token prompt: the sink, then the recent tokens."""
        positions = torch.arange(n, device=device)
        start, count = min(self.config.sink, n), max(n - min(self.config.sink, n) - self.config.recent, 0)
        return torch.cat([positions[:start], positions[start + count :]])


class DistantTopK(ViewSelector):
    """An owner's plan with selection: the proximal tokens and the top pooled scores of the distant ones."""

    def __init__(self, layout: PoDLayout, ranking: TopK, window: int):
        self.layout, self.ranking, self.observation_window = layout, ranking, window

    def select(self, prompt: PromptView, budget: int, heads=None) -> LayerPlan:
        n = prompt.prompt_len
        if budget >= n:
            return LayerPlan(keep=None)
        start, count = self.layout.distant_span(n)
        scores, _ = prompt.observe(self.observation_window)  # the window lies inside the recent tokens
        distant = self.ranking.pooled(scores)[:, start : n - self.layout.config.recent]
        chosen = top_positions(distant, count).sort(dim=-1).values + start
        proximal = self.layout.proximal(n, prompt.device).expand(prompt.num_kv_heads, -1)
        return LayerPlan(keep=torch.cat([proximal[:, :start], chosen, proximal[:, start:]], dim=-1))


class SharedKeys(Selector):
    """PoD key sharing: owners plan with `owners`; a member keeps proximal K/V and the values of the distant
    tokens its owner keeps, attending to them with the owner's keys. With `follow` (selection) a member's
    plan is derived from its owner's; else members share every distant token."""

    def __init__(self, layout: PoDLayout, owners: Selector, follow: bool):
        self.layout, self.owners, self.follow = layout, owners, follow
        self.observation_window, self.spans_heads = owners.observation_window, owners.spans_heads

    def source_layer(self, layer: int) -> int:
        """With selection a member's plan follows its owner's choice of distant tokens."""
        return self.layout.owner_layer(layer) if self.follow else layer

    def head_statistics(self, layer, prompt):
        return self.owners.head_statistics(layer, prompt) if self.layout.owner_layer(layer) == layer else None

    def select(self, layer: int, prompt: PromptView, heads=None) -> LayerPlan:
        """An owner's plan, or (without selection) a member's sharing every distant token."""
        if self.layout.owner_layer(layer) == layer:
            return self.owners.select(layer, prompt, heads)
        return self.derive(layer, prompt, None)

    def derive(self, layer: int, prompt: PromptView, plan: LayerPlan | None) -> LayerPlan:
        """A member's plan from its owner's: proximal K/V, and values of the distant tokens the owner kept
        (`[kv_heads, kept]`, per head in the owner's order, with selection), keys read from the owner."""
        n = prompt.prompt_len
        if self.layout.layer_budget(layer, n) >= n:
            return LayerPlan(keep=None)
        start, count = self.layout.distant_span(n)
        if plan is None or plan.keep is None:  # the owner kept every token (None: so its caller skipped it)
            shared = torch.arange(start, start + count, device=prompt.device)
        else:
            shared = plan.keep[:, start : start + count]
        proximal = self.layout.proximal(n, prompt.device).expand(prompt.num_kv_heads, -1)
        return LayerPlan(keep=proximal, key_owner=self.layout.owner_layer(layer), shared=shared)


def pod(config, num_layers: int) -> tuple[PoDLayout, SharedKeys]:
    """PoD's layout; owners keep all tokens, or with `select: snapkv` choose the distant ones."""
    layout = PoDLayout(config, num_layers)
    if layout.selects:
        owners = PerLayerBudget(layout, DistantTopK(layout, TopK(config.pool_size, config.pooling), config.window))
    else:
        owners = PerLayerBudget(layout, KeepAll())
    return layout, SharedKeys(layout, owners, follow=layout.selects)
