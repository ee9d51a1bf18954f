"""A policy applied after a protected prefix: the first `protected` prompt tokens stay raw in every layer.

With vLLM's prefix caching on, a request's first tokens may be shared cache blocks (hit at admission) or
blocks it enters in the cache for later requests (`cache_prefix`); compaction must never rewrite them. The
policy sees only the request's own tokens `[protected, prompt_len)` as its prompt: its budget is that of
the own tokens (a ratio of them, or a count kept of them), its compression points and evictions are
counted from `protected` on, and every layer holds `protected` more positions than the policy alone.
Only the layout changes (`ProtectedPrefix`); the selector plans views of the own tokens as it is.
Scoring still attends over the protected tokens (the caller's `PromptView` scores with them as context).
"""

from __future__ import annotations

import dataclasses

from .base import KVPolicy
from .layout import BudgetLayout


class ProtectedPrefix:
    """The budget layout `inner` for a prompt whose first `protected` tokens are kept raw (prompt coordinates in, out)."""

    def __init__(self, inner: BudgetLayout, protected: int):
        self.inner = inner
        self.protected = protected

    def __getattr__(self, name: str):  # config, num_layers, budget_tier, tier_layers, owner_layer, ...
        return getattr(self.inner, name)

    def own(self, prompt_len: int) -> int:
        """The request's own prompt tokens: those the policy compresses."""
        return prompt_len - self.protected

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        return self.protected + self.inner.layer_budget(layer, self.own(prompt_len))

    def layer_slots(self, layer: int, prompt_len: int) -> int:
        return self.protected + self.inner.layer_slots(layer, self.own(prompt_len))

    def next_compression_point(self, prompt_len: int, position: int) -> int:
        p = self.protected
        return p + self.inner.next_compression_point(prompt_len - p, max(position - p, 0))

    def evicted_after(self, layer: int, prompt_len: int, processed: int) -> int:
        p = self.protected
        return 0 if processed <= p else self.inner.evicted_after(layer, prompt_len - p, processed - p)

    def peak_slots(self, layer: int, prompt_len: int, max_tokens: int) -> int:
        return self.protected + self.inner.peak_slots(layer, self.own(prompt_len), max_tokens)

    def distant_span(self, prompt_len: int) -> tuple[int, int]:
        """PoD: the distant run of the own tokens, in prompt positions."""
        start, count = self.inner.distant_span(self.own(prompt_len))
        return self.protected + start, count


def protected_policy(policy: KVPolicy, protected: int) -> KVPolicy:
    """`policy` with its first `protected` prompt tokens kept raw; the policy itself where none are."""
    if protected <= 0:
        return policy
    return dataclasses.replace(policy, layout=ProtectedPrefix(policy.layout, protected))
