"""`pod` (PoD): proximal tokens keep per-layer keys; distant tokens share one key per layer group.

Proximal tokens are the first `sink` and the last `recent` prompt tokens. In each layer group
(`groups`, e.g. from `kvcomp-vllm pod-calibrate`, or consecutive runs of `group_size`) the lowest
layer (the owner) keeps its keys for every token; the other layers keep keys only for proximal
tokens and attend to distant tokens with the owner's keys, while every layer keeps its own values.
Tokens generated after prefill are proximal by definition.
"""

from __future__ import annotations

import torch

from .base import KVPolicy, LayerPlan, PromptView


class PoDPolicy(KVPolicy):
    """Shares distant tokens' key state across each layer group."""

    name = "pod"

    def __init__(self, config, num_layers: int):
        super().__init__(config, num_layers)
        self._owners = {layer: group[0] for group in config.pod_groups(num_layers) for layer in group}

    def owner_layer(self, layer: int) -> int:
        """Lowest layer of `layer`'s group: the one whose keys the group shares."""
        return self._owners[layer]

    def budget_tier(self, layer: int) -> int:
        """Two tiers: the owner layers (tier 0, every token) and the member layers (tier 1)."""
        return 0 if self.owner_layer(layer) == layer else 1

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        if self.owner_layer(layer) == layer:
            return prompt_len
        return min(prompt_len, self.config.sink + self.config.recent)

    def layer_slots(self, layer: int, prompt_len: int) -> int:
        """Members hold proximal K/V plus distant values packed two per slot (see `cache_layout`)."""
        proximal = self.layer_budget(layer, prompt_len)
        return proximal + -(-(prompt_len - proximal) // 2)

    def distant_span(self, prompt_len: int) -> tuple[int, int]:
        """First distant position and the number of distant tokens: they form one contiguous run."""
        sink = min(self.config.sink, prompt_len)
        return sink, max(prompt_len - sink - self.config.recent, 0)

    def select(self, layer: int, prompt: PromptView, heads=None) -> LayerPlan:
        n = prompt.prompt_len
        if self.layer_budget(layer, n) >= n:
            return LayerPlan(keep=None)
        start, count = self.distant_span(n)
        positions = torch.arange(n, device=prompt.device)
        proximal = torch.cat([positions[:start], positions[start + count :]])
        return LayerPlan(
            keep=proximal.expand(prompt.num_kv_heads, -1),
            key_owner=self.owner_layer(layer),
            shared=positions[start : start + count],
        )
