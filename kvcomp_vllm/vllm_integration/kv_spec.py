"""Scheduler-side block accounting: KV cache groups per tier, blocks freed as prompts compress.

A tier is a set of layers sharing one per-layer budget (`BudgetLayout.budget_tier`). Each decoder layer's
spec becomes a `CompressedAttentionSpec` carrying its tier; specs of different tiers never merge, so
vLLM's hybrid allocator gives every tier its own KV cache group (or several of equal size:
`compat.kv_cache_group_sizes`), each with its own block table, all drawing on the one shared block pool. `CompressedAttentionManager` then holds, for a request whose
prompt is compressed, only the blocks its kept tokens and later tokens need: once the prompt is
scheduled up to a compression point (that step may still run) it drops the blocks past
`cdiv(computed - evicted, block_size)` back to the pool, and from then on counts slots as `num_tokens - evicted`
(`BudgetLayout.evicted_after`). Admission reserves a request's peak (`BudgetLayout.peak_slots`), not its
raw length, and start-up asks the pool to hold one compressed prompt of `max_model_len` tokens.
With prefix caching, a request's protected prefix (`prefix_cache`) is counted before the policy's slots,
and only its blocks are entered in the cache by a request that compresses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config import KVPolicyConfig
from ..policies import KVPolicy, make_policy
from .compat import FullAttentionManager, FullAttentionSpec, cdiv
from .settings import request_policy


def kept_blocks(computed: int, evicted: int, block_size: int) -> int:
    """Blocks one KV cache group keeps of a request once `evicted` of its `computed` tokens are gone
    (`BudgetLayout.evicted_after`): the count the scheduler frees down to and the worker cuts its rows to."""
    return cdiv(computed - evicted, block_size)


@dataclass(frozen=True, kw_only=True)
class CompressedAttentionSpec(FullAttentionSpec):
    """Full attention whose prompt KV is compressed to the budget of `layer`'s tier."""

    tier: int = 0
    layer: int = 0  # the tier's first layer: the budget is computed for it
    num_layers: int = 1
    policy_json: str = "{}"

    @classmethod
    def from_spec(cls, spec: FullAttentionSpec, policy: KVPolicy, layer: int) -> CompressedAttentionSpec:
        """`layer`'s spec. Every layer of a tier gets an equal spec: vLLM 0.26 makes one KV group per
        distinct spec (0.32 also merges), and each group costs the scheduler per request and step."""
        base = {f.name: getattr(spec, f.name) for f in fields(spec) if f.init}
        tier = policy.layout.budget_tier(layer)
        return cls(
            **base,
            tier=tier,
            layer=policy.layout.tier_layers()[tier][0],
            num_layers=policy.num_layers,
            policy_json=policy.config.model_dump_json(exclude_unset=True),
        )

    def policy(self) -> KVPolicy:
        return make_policy(KVPolicyConfig.model_validate_json(self.policy_json), self.num_layers)

    def max_memory_usage_bytes(self, vllm_config) -> int:
        """Peak of one `max_model_len` prompt: with `prefill_chunk`, budget + chunk rather than the prompt."""
        slots = self.policy().layout.peak_slots(self.layer, vllm_config.model_config.max_model_len, 1)
        return cdiv(slots, self.block_size) * self.page_size_bytes

    @classmethod
    def merge(cls, specs: list[CompressedAttentionSpec]) -> CompressedAttentionSpec:
        tiers = {spec.tier for spec in specs}
        assert all(isinstance(s, cls) for s in specs) and len(tiers) == 1, f"tiers {tiers} cannot share a KV cache group"
        return specs[0]

    def is_uniform_with_collection(self, kv_cache_specs: dict[str, Any]) -> bool:
        return all(isinstance(s, CompressedAttentionSpec) and s.tier == self.tier for s in kv_cache_specs.values())


class CompressedAttentionManager(FullAttentionManager):
    """Frees a compressed request's evicted blocks at each compression point of its prompt."""

    def __init__(self, kv_cache_spec: CompressedAttentionSpec, **kwargs):
        super().__init__(kv_cache_spec, **kwargs)
        self.policy = kv_cache_spec.policy()
        self.layer = kv_cache_spec.layer
        self.evicted: dict[str, int] = {}  # request id -> prompt tokens evicted in this group's tier
        self.requests: dict = {}  # the scheduler's requests (set by its hook), for per-request settings
        self.request_policies: dict[str, KVPolicy] = {}
        self.settled: set[str] = set()  # requests whose whole prompt is accounted: nothing more to free
        self.protection = None  # the scheduler's `PrefixProtection` (set by its hook) where prefix caching is on

    def _policy(self, request_id: str) -> KVPolicy:
        """The request's own policy, resolved once per request (overrides are parsed only here), after
        its protected prefix."""
        policy = self.request_policies.get(request_id)
        if policy is None:
            request = self.requests.get(request_id)
            if request is None:
                return self.policy
            policy = self.request_policies[request_id] = request_policy(self.policy, request.sampling_params)
        return policy if self.protection is None else self.protection.policy_of(request_id, policy)

    def remove_skipped_blocks(self, request_id: str, processed_computed_tokens: int, num_prompt_tokens=None) -> None:
        """Free the blocks a compression point evicted, in the schedule right after the step that reaches it.

        vLLM passes the tokens whose output came back; the count here also includes the step still in
        flight (async scheduling), because the worker compacts in that step and cuts its block rows in
        the next one. Freed blocks are rewritten only by later kernels on the stream, after the compaction.
        """
        if num_prompt_tokens is None or request_id in self.settled:
            return
        request = self.requests.get(request_id)
        computed = processed_computed_tokens if request is None else request.num_computed_tokens
        if computed >= num_prompt_tokens:
            self.settled.add(request_id)  # decode steps skip the policy from here on
        evicted = self._policy(request_id).layout.evicted_after(self.layer, num_prompt_tokens, computed)
        if evicted > self.evicted.get(request_id, 0):
            self.evicted[request_id] = evicted
            blocks = self.req_to_blocks[request_id]
            keep = kept_blocks(computed, evicted, self.block_size)
            freed = blocks[keep:]
            del blocks[keep:]
            self.block_pool.free_blocks(reversed(freed))

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int, *args, **kwargs) -> int:
        evicted = self.evicted.get(request_id, 0)
        if kwargs.get("apply_admission_cap"):  # admission reserves the request's peak, not its raw length
            request = self.requests.get(request_id)
            if request is not None:
                generated = max(num_tokens - request.num_prompt_tokens, 0) + 1
                peak = self._policy(request_id).layout.peak_slots(self.layer, request.num_prompt_tokens, generated)
                return super().get_num_blocks_to_allocate(request_id, min(num_tokens, peak + evicted) - evicted, *args, **kwargs)
        return super().get_num_blocks_to_allocate(request_id, num_tokens - evicted, *args, **kwargs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int):
        evicted = self.evicted.get(request_id, 0)
        return super().allocate_new_blocks(request_id, num_tokens - evicted, num_tokens_main_model - evicted)

    def pop_blocks_for_free(self, request_id: str):
        self.evicted.pop(request_id, None)
        self.request_policies.pop(request_id, None)
        self.settled.discard(request_id)
        request = self.requests.get(request_id)
        if self.protection is not None and (request is None or request.is_finished()):
            self.protection.forget(request_id)  # a preempted request keeps its prefix for its recompute
        return super().pop_blocks_for_free(request_id)

    def cache_blocks(self, request, num_tokens: int, *args, **kwargs) -> None:
        """Enter a compressing request's protected blocks in the prefix cache, never those compaction
        rewrites; every block of a request that evicts nothing."""
        if self.protection is None:
            return None
        cacheable = self.protection.cacheable_tokens(request, num_tokens)
        if cacheable >= self.block_size:
            super().cache_blocks(request, cacheable, *args, **kwargs)
        return None
