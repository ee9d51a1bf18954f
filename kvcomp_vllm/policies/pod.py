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
"""

from __future__ import annotations

import torch

from .base import KVPolicy, LayerPlan, PromptView
from .scoring import pool_scores, top_positions


class PoDPolicy(KVPolicy):
    """Shares distant tokens' key state across each layer group."""

    name = "pod"

    def __init__(self, config, num_layers: int):
        super().__init__(config, num_layers)
        self._owners = {layer: group[0] for group in config.pod_groups(num_layers) for layer in group}

    def owner_layer(self, layer: int) -> int:
        """Lowest layer of `layer`'s group: the one whose keys the group shares."""
        return self._owners[layer]

    @property
    def selects(self) -> bool:
        return self.config.select == "snapkv"

    @property
    def observation_window(self) -> int:
        return self.config.window if self.selects else 0

    def source_layer(self, layer: int) -> int:
        """With selection a member's plan follows its owner's choice of distant tokens."""
        return self.owner_layer(layer) if self.selects else layer

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

    def _proximal(self, n: int, device) -> torch.Tensor:
        positions = torch.arange(n, device=device)
        start, count = min(self.config.sink, n), max(n - min(self.config.sink, n) - self.config.recent, 0)
        return torch.cat([positions[:start], positions[start + count :]])

    def _member(self, layer: int, prompt: PromptView, shared: torch.Tensor) -> LayerPlan:
        proximal = self._proximal(prompt.prompt_len, prompt.device).expand(prompt.num_kv_heads, -1)
        return LayerPlan(keep=proximal, key_owner=self.owner_layer(layer), shared=shared)

    def select(self, layer: int, prompt: PromptView, heads=None) -> LayerPlan:
        """An owner's plan (with selection: proximal and chosen distant tokens), or a member's without selection."""
        n = prompt.prompt_len
        if self.layer_budget(layer, n) >= n:
            return LayerPlan(keep=None)
        start, count = self.distant_span(n)
        if self.owner_layer(layer) != layer:
            return self._member(layer, prompt, torch.arange(start, start + count, device=prompt.device))
        scores, _ = prompt.observe(self.config.window)  # the window lies inside the recent tokens
        distant = pool_scores(scores, self.config.pool_size, self.config.pooling)[:, start : n - self.config.recent]
        chosen = top_positions(distant, count).sort(dim=-1).values + start
        proximal = self._proximal(n, prompt.device).expand(prompt.num_kv_heads, -1)
        return LayerPlan(keep=torch.cat([proximal[:, :start], chosen, proximal[:, start:]], dim=-1))

    def derive(self, layer: int, prompt: PromptView, plan: LayerPlan) -> LayerPlan:
        """With selection, a member's plan from its owner's: proximal K/V, and values of the distant tokens
        the owner kept (`[kv_heads, kept]`, per head in the owner's order), keys read from the owner."""
        n = prompt.prompt_len
        if self.layer_budget(layer, n) >= n:
            return LayerPlan(keep=None)
        start, count = self.distant_span(n)
        if plan is None or plan.keep is None:  # the owner kept every token (None: so its caller skipped it)
            return self._member(layer, prompt, torch.arange(start, start + count, device=prompt.device))
        return self._member(layer, prompt, plan.keep[:, start : start + count])
