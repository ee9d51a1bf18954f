"""Scheduler-side block accounting: one KV cache group per budget tier, blocks freed after prefill.

Each decoder layer's spec becomes a `CompressedAttentionSpec` carrying its budget tier; specs of
different tiers never merge, so vLLM's hybrid allocator gives every tier its own block table, all
drawing on the one shared block pool. `CompressedAttentionManager` then holds, for a request whose
prompt is compressed, only the blocks its kept tokens and decoded tokens need: once the prompt is
processed it drops the blocks past `cdiv(kept + generated, block_size)` back to the pool, and from
then on counts slots as `num_tokens - (prompt_len - kept)`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config import KVPolicyConfig
from ..policies import KVPolicy, make_policy
from .compat import FullAttentionManager, FullAttentionSpec, cdiv
from .settings import request_policy


@dataclass(frozen=True, kw_only=True)
class CompressedAttentionSpec(FullAttentionSpec):
    """Full attention whose prompt KV is compressed to the budget of `layer`'s tier."""

    tier: int = 0
    layer: int = 0  # a layer of this tier: the budget is computed for it
    num_layers: int = 1
    policy_json: str = "{}"

    @classmethod
    def from_spec(cls, spec: FullAttentionSpec, policy: KVPolicy, layer: int) -> CompressedAttentionSpec:
        base = {f.name: getattr(spec, f.name) for f in fields(spec) if f.init}
        return cls(
            **base,
            tier=policy.budget_tier(layer),
            layer=layer,
            num_layers=policy.num_layers,
            policy_json=policy.config.model_dump_json(exclude_unset=True),
        )

    def policy(self) -> KVPolicy:
        return make_policy(KVPolicyConfig.model_validate_json(self.policy_json), self.num_layers)

    @classmethod
    def merge(cls, specs: list[CompressedAttentionSpec]) -> CompressedAttentionSpec:
        tiers = {spec.tier for spec in specs}
        assert all(isinstance(s, cls) for s in specs) and len(tiers) == 1, f"budget tiers {tiers} cannot share a group"
        return specs[0]

    def is_uniform_with_collection(self, kv_cache_specs: dict[str, Any]) -> bool:
        return all(isinstance(s, CompressedAttentionSpec) and s.tier == self.tier for s in kv_cache_specs.values())

    @property
    def prefix_cacheable(self) -> bool:
        # Compacted blocks no longer hold the raw prefix their hash names.
        return False


class CompressedAttentionManager(FullAttentionManager):
    """Frees a compressed request's evicted blocks once its prompt is processed."""

    def __init__(self, kv_cache_spec: CompressedAttentionSpec, **kwargs):
        super().__init__(kv_cache_spec, **kwargs)
        self.policy = kv_cache_spec.policy()
        self.layer = kv_cache_spec.layer
        self.evicted: dict[str, int] = {}  # request id -> prompt tokens evicted in this tier
        self.requests: dict = {}  # the scheduler's requests (set by its hook), for per-request settings

    def remove_skipped_blocks(self, request_id: str, processed_computed_tokens: int, num_prompt_tokens=None) -> None:
        if request_id in self.evicted or num_prompt_tokens is None or processed_computed_tokens < num_prompt_tokens:
            return
        request = self.requests.get(request_id)
        policy = request_policy(self.policy, request.sampling_params) if request is not None else self.policy
        evicted = num_prompt_tokens - policy.layer_slots(self.layer, num_prompt_tokens)
        self.evicted[request_id] = evicted
        if evicted > 0:
            blocks = self.req_to_blocks[request_id]
            keep = cdiv(processed_computed_tokens - evicted, self.block_size)
            freed = blocks[keep:]
            del blocks[keep:]
            self.block_pool.free_blocks(reversed(freed))

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int, *args, **kwargs) -> int:
        evicted = self.evicted.get(request_id, 0)
        return super().get_num_blocks_to_allocate(request_id, num_tokens - evicted, *args, **kwargs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int):
        evicted = self.evicted.get(request_id, 0)
        return super().allocate_new_blocks(request_id, num_tokens - evicted, num_tokens_main_model - evicted)

    def pop_blocks_for_free(self, request_id: str):
        self.evicted.pop(request_id, None)
        return super().pop_blocks_for_free(request_id)

    def cache_blocks(self, request, num_tokens: int, *args, **kwargs) -> None:
        return None
