"""The protected prefix as numbers: how many prompt tokens stay raw, and what the wrapped policy says."""

from __future__ import annotations

from types import SimpleNamespace

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.policies.protected import ProtectedPrefix, protected_policy
from kvcomp_vllm.vllm_integration.prefix_cache import PrefixProtection, protected_prefix


def snapkv(**fields):
    return make_policy(KVPolicyConfig(policy="snapkv", budget=64, **fields), 4)


def test_protected_prefix_is_the_hit_or_whole_blocks_of_cache_prefix_never_the_last_block():
    assert protected_prefix(snapkv(), 1000, 0, 32) == 0
    assert protected_prefix(snapkv(), 1000, 320, 32) == 320  # auto: exactly the hit
    assert protected_prefix(snapkv(cache_prefix=200), 1000, 0, 32) == 192  # rounded down to blocks
    assert protected_prefix(snapkv(cache_prefix=200), 1000, 320, 32) == 320  # a longer hit stays protected
    assert protected_prefix(snapkv(cache_prefix=4096), 1000, 0, 32) == 992  # a token of the last block is own
    assert protected_prefix(snapkv(cache_prefix=4096), 992, 0, 32) == 960


def test_the_wrapped_policy_counts_from_the_prefix():
    inner = make_policy(KVPolicyConfig(policy="snapkv", budget=0.1, prefill_chunk=64), 4)
    policy = protected_policy(inner, 320)
    assert isinstance(policy.layout, ProtectedPrefix) and protected_policy(inner, 0) is inner
    assert policy.layout.layer_slots(0, 1320) == 320 + 100  # 10% of the 1000 own tokens
    assert [policy.layout.next_compression_point(1320, p) for p in (0, 320, 383, 384, 1300)] == [384, 384, 384, 448, 1320]
    assert policy.layout.evicted_after(0, 1320, 320) == 0 and policy.layout.evicted_after(0, 1320, 1320) == 900
    assert policy.layout.peak_slots(0, 1320, 10) == 320 + inner.layout.peak_slots(0, 1000, 10)
    pod = protected_policy(make_policy(KVPolicyConfig(policy="pod", sink=4, recent=48), 4), 64)
    assert pod.layout.distant_span(564) == (68, 500 - 4 - 48)


def test_a_prefix_is_fixed_by_the_allocation_that_succeeds_and_kept_across_preemption():
    request = SimpleNamespace(request_id="r", num_prompt_tokens=1000, sampling_params=SimpleNamespace(extra_args=None),
                              is_finished=lambda: False, block_hashes=[f"h{i}" for i in range(1000 // 32)],
                              prompt_token_ids=list(range(1000)))
    protection = PrefixProtection(snapkv(cache_prefix=128), 32, {"r": request})
    assert protection.admit(request, 0) and protection.protected("r") == 128
    protection.settle("r", False)  # no room this step: nothing fixed
    assert protection.protected("r") == 0 and "r" not in protection.fixed
    assert protection.admit(request, 256)
    protection.settle("r", True)
    assert protection.fixed == {"r": 256} and "r" in protection.compressing
    assert request.sampling_params.extra_args == {"kvcomp_protected": 256}  # what its workers keep raw
    assert not protection.admit(request, 512)  # resumed after preemption: the first prefix holds
    assert protection.cacheable_tokens(request, 900) == 256  # a compressing request caches its prefix only
    protection.forget("r")
    assert protection.fixed == {} and protection.compressing == set()
