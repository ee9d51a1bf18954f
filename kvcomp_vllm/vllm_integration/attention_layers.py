"""Which decoder layers a policy compresses: those under full attention.

Hybrid models (Gemma 3, gpt-oss) interleave sliding-window layers with full-attention ones
(`layer_types` in their config). Sliding-window layers stay under vLLM's own sliding-window KV manager,
untouched; the policy sees only the full-attention layers, its layer `i` being the model's `i`-th such
layer, so budgets, the pyramid's slope and layer groups are taken over them. A model without
`layer_types` is all full attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

FULL_ATTENTION = "full_attention"


@dataclass(frozen=True)
class CompressedLayers:
    """The model's full-attention layers, ascending: policy layer `i` is model layer `layers[i]`."""

    layers: tuple[int, ...]
    num_model_layers: int

    @property
    def count(self) -> int:
        """Layers the policy compresses (its `num_layers`)."""
        return len(self.layers)

    @property
    def hybrid(self) -> bool:
        """Whether some layers stay under vLLM's own KV management."""
        return self.count < self.num_model_layers

    def policy_layer(self, model_layer: int) -> int | None:
        """The policy's index of a model layer, or None where the layer is not compressed."""
        return self._index.get(model_layer)

    def model_layer(self, policy_layer: int) -> int:
        """The model layer of a policy layer."""
        return self.layers[policy_layer]

    @cached_property
    def _index(self) -> dict[int, int]:
        return {layer: i for i, layer in enumerate(self.layers)}


def compressed_layers(hf_text_config: Any) -> CompressedLayers:
    """The full-attention layers of a model, from its (text) config's `layer_types`."""
    total = hf_text_config.num_hidden_layers
    types = getattr(hf_text_config, "layer_types", None)
    if not types:
        return CompressedLayers(tuple(range(total)), total)
    return CompressedLayers(tuple(i for i, kind in enumerate(types[:total]) if kind == FULL_ATTENTION), total)


def other_layer_kinds(hf_text_config: Any) -> list[str]:
    """The kinds of the layers a policy leaves alone (`sliding_attention`, ...), each once, in order."""
    kinds = [k for k in getattr(hf_text_config, "layer_types", None) or () if k != FULL_ATTENTION]
    return list(dict.fromkeys(kinds))
