"""Budget layouts: where a request's tokens live, per layer, for a prompt length (no tensors, no scores).

A layout says how many tokens each layer keeps (`layer_budget`) and how many cache slots that takes
(`layer_slots`), which layers share a budget (a tier: one KV cache group in vLLM), where the prompt is
compressed (`next_compression_point`), how many tokens a layer has dropped by then (`evicted_after`)
and the most slots it holds at once (`peak_slots`). The scheduler, admission and the KV cache spec read
only this; which tokens are kept is the selector's job (`selector.py`).
"""

from __future__ import annotations

from ..config import POLICY_FIELDS, KVPolicyConfig


class BudgetLayout:
    """One budget for every layer, one tier: `budget` tokens (at least the observation window), at most all."""

    def __init__(self, config: KVPolicyConfig, num_layers: int):
        self.config = config
        self.num_layers = num_layers

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        """Tokens per KV head that `layer` keeps (own key and value) for a prompt of this length.

        Policies with an observation window never keep fewer tokens than the window.
        """
        floor = self.config.window if "window" in POLICY_FIELDS[self.config.policy] else 1
        return min(prompt_len, max(self.config.resolve_budget(prompt_len), floor))

    def layer_slots(self, layer: int, prompt_len: int) -> int:
        """Cache positions `layer` holds for the prompt after compaction (what its blocks must cover)."""
        return self.layer_budget(layer, prompt_len)

    def next_compression_point(self, prompt_len: int, position: int) -> int:
        """First prompt position after `position` at which the cache is compressed.

        Points lie every `prefill_chunk` tokens (when set) and at the prompt's end.
        """
        chunk = self.config.prefill_chunk
        return prompt_len if not chunk else min(prompt_len, (position // chunk + 1) * chunk)

    def evicted_after(self, layer: int, prompt_len: int, processed: int) -> int:
        """Prompt tokens `layer`'s cache has dropped once the first `processed` tokens are processed."""
        chunk = self.config.prefill_chunk
        point = prompt_len if processed >= prompt_len else (processed // chunk * chunk if chunk else 0)
        return point - min(point, self.layer_slots(layer, prompt_len))

    def peak_slots(self, layer: int, prompt_len: int, max_tokens: int) -> int:
        """Most cache positions `layer` holds at once for this prompt and `max_tokens` generated tokens."""
        slots = self.layer_slots(layer, prompt_len)
        decode = slots + max(max_tokens - 1, 0)  # the last token is sampled, never cached
        chunk = self.config.prefill_chunk
        if not chunk or prompt_len <= chunk:
            return max(prompt_len, decode)
        chunks = -(-prompt_len // chunk)
        interior = min((chunks - 2) * chunk, slots) + chunk
        last = min((chunks - 1) * chunk, slots) + prompt_len - (chunks - 1) * chunk
        return max(interior, last, decode)

    def budget_tier(self, layer: int) -> int:
        """`layer`'s tier: the layers of one tier keep the same number of tokens for every prompt, so vLLM
        holds them in one KV cache group (one block table). One tier for all layers by default."""
        return 0

    def tier_layers(self) -> dict[int, list[int]]:
        """Each tier's layers, ascending, tiers in order of their first layer."""
        tiers: dict[int, list[int]] = {}
        for layer in range(self.num_layers):
            tiers.setdefault(self.budget_tier(layer), []).append(layer)
        return tiers


class FullLayout(BudgetLayout):
    """Every layer keeps the whole prompt (policy `full`)."""

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        return prompt_len
