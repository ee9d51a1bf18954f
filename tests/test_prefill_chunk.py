"""Compression while the prompt is read (`prefill_chunk`): schedule, the oracle generator, and a real vLLM CPU engine.

A prompt longer than the whole KV pool is served when every `prefill_chunk` tokens the cache is
compressed back to its budget: the pool need only hold budget + chunk per layer.
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.testing.oracle import generate
from kvcomp_vllm.testing.engine import drive

from test_vllm_engine import BLOCK, greedy, make_llm, prompt_ids

CHUNKED = [
    dict(policy="snapkv", budget=96, prefill_chunk=128),
    dict(policy="pyramid", budget=0.1, prefill_chunk=160),
    dict(policy="windowkv", budget=100, group_size=2, prefill_chunk=128),
    dict(policy="windowkv-per-head", budget=100, group_size=2, prefill_chunk=128),
    dict(policy="streaming", budget=64, prefill_chunk=100),
]


def simulate(policy, layer: int, prompt_len: int, max_tokens: int) -> tuple[list[int], int]:
    """Compression points and peak cache positions, by walking the prompt token by token."""
    slots = policy.layout.layer_slots(layer, prompt_len)
    held, peak, points, evicted = 0, 0, [], 0
    for position in range(prompt_len):
        held += 1
        peak = max(peak, held)
        if policy.layout.next_compression_point(prompt_len, position) == position + 1:
            points.append(position + 1)
            held = min(held, slots)
            evicted = position + 1 - held
            assert policy.layout.evicted_after(layer, prompt_len, position + 1) == evicted
        else:
            assert policy.layout.evicted_after(layer, prompt_len, position + 1) == evicted
    return points, max(peak, held + max_tokens - 1)


@pytest.mark.parametrize("settings", CHUNKED + [dict(policy="snapkv", budget=0.25), dict(policy="pod", recent=8)], ids=str)
@pytest.mark.parametrize("prompt_len", [1, 40, 100, 128, 129, 700, 1000])
def test_schedule_matches_a_token_by_token_walk(settings, prompt_len):
    policy = make_policy(KVPolicyConfig(**settings), 4)
    chunk = policy.config.prefill_chunk
    for layer in range(4):
        points, peak = simulate(policy, layer, prompt_len, 5)
        assert points == ([*range(chunk, prompt_len, chunk), prompt_len] if chunk else [prompt_len])
        assert policy.layout.peak_slots(layer, prompt_len, 5) == peak


def test_chunk_shorter_than_the_window_is_rejected():
    with pytest.raises(ValueError, match=r"prefill_chunk: 16 tokens is less than window \(32\)"):
        KVPolicyConfig(policy="snapkv", budget=64, prefill_chunk=16)
    with pytest.raises(ValueError, match="prefill_chunk: not a parameter of policy 'pod'"):
        KVPolicyConfig(policy="pod", prefill_chunk=256)


@pytest.fixture(scope="module")
def hf_llama(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


def test_oracle_with_one_chunk_equals_compression_after_prefill(tiny_llama_dir, hf_llama):
    prompt = prompt_ids(tiny_llama_dir, 40, 3, length=500)
    once = generate(hf_llama, prompt, KVPolicyConfig(policy="snapkv", budget=96), 12)
    assert generate(hf_llama, prompt, KVPolicyConfig(policy="snapkv", budget=96, prefill_chunk=500), 12) == once
    rounds = generate(hf_llama, prompt, KVPolicyConfig(policy="snapkv", budget=96, prefill_chunk=128), 12)
    assert rounds.kept_per_layer == once.kept_per_layer == [96] * 4
    assert rounds.tokens != once.tokens or rounds.logprobs != once.logprobs  # earlier rounds saw other windows


@pytest.mark.vllm
@pytest.mark.parametrize("settings", CHUNKED, ids=lambda s: s["policy"])
def test_engine_compressing_every_chunk_matches_the_oracle(tiny_llama_dir, hf_llama, settings):
    # Scheduler chunks of 64 split each compression round, so window queries span scheduler steps.
    prompts = [prompt_ids(tiny_llama_dir, 60, 40, length=900), prompt_ids(tiny_llama_dir, 40, 41, length=300),
               prompt_ids(tiny_llama_dir, 4, 42, length=50)]
    run = drive(make_llm(tiny_llama_dir, settings, max_num_batched_tokens=64), prompts, greedy(10))
    config = KVPolicyConfig(**settings)
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(hf_llama, prompt, config, 10).tokens, (req_id, len(prompt))
    assert run.free_blocks_after == run.free_blocks_before
    gc.collect()


POOL = 24  # blocks of 32 tokens; snapkv's four layers share one KV group, so 768 tokens per layer


def long_prompt_engine(tiny_llama_dir, settings):
    return make_llm(tiny_llama_dir, settings, num_gpu_blocks_override=POOL + 1, max_model_len=4096)


@pytest.mark.vllm
def test_prompt_longer_than_the_kv_pool_is_served(tiny_llama_dir, hf_llama):
    settings = dict(policy="snapkv", budget=64, prefill_chunk=96)
    prompts = [prompt_ids(tiny_llama_dir, 200, 50, length=3000), prompt_ids(tiny_llama_dir, 200, 51, length=2500)]
    llm = long_prompt_engine(tiny_llama_dir, settings)
    run = drive(llm, prompts, greedy(4))
    policy = make_policy(KVPolicyConfig(**settings), 4)
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(hf_llama, prompt, policy.config, 4).tokens
        # At most 64 kept + 96 new tokens per layer: 5 blocks, against 94 for the raw 3000-token prompt.
        assert run.peak_blocks[req_id] == -(-policy.layout.peak_slots(0, len(prompt), 4) // BLOCK) == 5
    assert run.free_blocks_after == run.free_blocks_before == POOL
    gc.collect()


@pytest.mark.vllm
def test_requests_that_cannot_fit_the_pool_fail_with_a_clear_message(tiny_llama_dir):
    llm = long_prompt_engine(tiny_llama_dir, dict(policy="snapkv", budget=64, prefill_chunk=96))
    prompt = prompt_ids(tiny_llama_dir, 200, 52, length=3000)
    engine = llm.llm_engine
    # 64 kept + 799 cached output tokens need 27 blocks.
    with pytest.raises(ValueError, match=r"needs 27 KV cache blocks at its peak \(3000 prompt tokens under snapkv .*"
                       r"max_tokens=800\), more than the 24 blocks of the KV pool; lower max_tokens or the budget$"):
        engine.add_request("too-long-output", {"prompt_token_ids": prompt}, greedy(800))
    with pytest.raises(ValueError, match=r"needs 94 KV cache blocks .* under snapkv budget=64 pool_size=7 pooling=avg "
                       r"window=32, max_tokens=4\).*or set prefill_chunk \(--kv-prefill-chunk\)"):
        engine.add_request("no-chunks", {"prompt_token_ids": prompt}, greedy(4, kvcomp={"prefill_chunk": None}))
    assert not engine.has_unfinished_requests()
    gc.collect()


@pytest.mark.vllm
@pytest.mark.parametrize("settings", [None, dict(policy="snapkv", budget=64)], ids=["vanilla", "no-prefill-chunk"])
def test_without_prefill_chunk_a_pool_shorter_than_max_model_len_fails_at_start(tiny_llama_dir, settings):
    with pytest.raises(Exception, match=r"max seq len \(4096\)"):
        long_prompt_engine(tiny_llama_dir, settings)
    gc.collect()


@pytest.mark.vllm
@pytest.mark.parametrize(
    "settings",
    [dict(policy="snapkv", budget=64), dict(policy="pyramid", budget=0.1), dict(policy="pod", group_size=2),
     dict(policy="pod", group_size=4)],
    ids=["snapkv", "pyramid", "pod-2", "pod-4"],
)
def test_front_end_counts_kv_groups_as_the_engine_forms_them(tiny_llama_dir, settings):
    from kvcomp_vllm.vllm_integration.compat import kv_cache_group_sizes
    from kvcomp_vllm.testing.engine import scheduler_of

    policy = make_policy(KVPolicyConfig(**settings), 4)
    tiers = sorted({policy.layout.budget_tier(layer) for layer in range(4)})
    per_tier = [sum(policy.layout.budget_tier(layer) == tier for layer in range(4)) for tier in tiers]
    groups = scheduler_of(make_llm(tiny_llama_dir, settings)).kv_cache_config.kv_cache_groups
    assert kv_cache_group_sizes(per_tier) == [sum(g.kv_cache_spec.tier == tier for g in groups) for tier in tiers]
    gc.collect()
