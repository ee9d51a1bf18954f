"""Hybrid models in a real vLLM CPU engine (float32): the tiny Gemma 3 interleaves two sliding-window layers
(window 64) with four full-attention ones. The policy compresses the full-attention layers, its layers 0-3
being model layers 1, 2, 4, 5; the sliding-window layers stay vLLM's. Tokens equal the oracle's, which
attends sliding layers to their window; only the full-attention groups free blocks."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.testing import build_tiny_model, tiny_gemma3_spec
from kvcomp_vllm.testing.engine import compacted_counts, drive, scheduler_of
from kvcomp_vllm.testing.oracle import generate
from kvcomp_vllm.testing.tiny_model import GEMMA3_LAYER_TYPES
from kvcomp_vllm.vllm_integration.compat import kv_cache_group_sizes

from test_vllm_engine import BLOCK, greedy, make_llm, prompt_ids

FULL_LAYERS = 4  # of six: model layers 1, 2, 4, 5
POLICIES = [
    dict(policy="snapkv", budget=96),
    dict(policy="pyramid", budget=0.12),
    dict(policy="pyramid", budget=0.12, tiers=2),
    dict(policy="windowkv", budget=100, group_size=2),
    dict(policy="windowkv-per-head", budget=100, group_size=2),
    dict(policy="streaming", budget=64),
    dict(policy="pod", recent=48, group_size=2),
]


@pytest.fixture(scope="module")
def hf_gemma3(tiny_gemma3_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype=torch.float32)


def group_kinds(llm) -> list[str]:
    return [type(g.kv_cache_spec).__name__ for g in scheduler_of(llm).kv_cache_config.kv_cache_groups]


@pytest.mark.vllm
@pytest.mark.parametrize("settings", POLICIES, ids=lambda s: s["policy"] + ("-tiers" if "tiers" in s else ""))
def test_hybrid_model_matches_the_oracle(tiny_gemma3_dir, hf_gemma3, settings, release):
    # Prompts far longer than the window, and one shorter than the budget (kept whole), batched together.
    prompts = [prompt_ids(tiny_gemma3_dir, n, seed) for n, seed in ((40, 1), (3, 2), (60, 3))]
    llm = make_llm(tiny_gemma3_dir, settings)
    # The front end counts the KV cache groups as the engine forms them: the tiers', then the sliding layers'.
    tiers = make_policy(KVPolicyConfig(**settings), FULL_LAYERS).layout.tier_layers()
    groups = scheduler_of(llm).kv_cache_config.kv_cache_groups
    formed = [sum(getattr(g.kv_cache_spec, "tier", None) == tier for g in groups) for tier in tiers]
    formed.append(group_kinds(llm).count("SlidingWindowSpec"))  # vLLM's own manager keeps the sliding layers
    assert kv_cache_group_sizes([len(layers) for layers in tiers.values()] + [2]) == formed
    assert formed[-1] >= 1 and sum(formed) == len(groups)
    before = compacted_counts(llm, settings["policy"])
    run = drive(llm, prompts, greedy(12))
    config = KVPolicyConfig(**settings)
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(hf_gemma3, prompt, config, 12).tokens, (req_id, len(prompt))
    assert run.free_blocks_after == run.free_blocks_before
    # Counts cover the full-attention layers, those the policy compacts.
    policy = make_policy(config, FULL_LAYERS)
    kept = sum(policy.layout.layer_slots(layer, len(p)) for p in prompts for layer in range(FULL_LAYERS))
    counted = compacted_counts(llm, settings["policy"])
    assert (counted[0] - before[0], counted[1] - before[1]) == (kept, FULL_LAYERS * sum(map(len, prompts)) - kept)


def test_the_oracle_compresses_full_attention_layers_only(hf_gemma3, tiny_gemma3_dir):
    prompt = prompt_ids(tiny_gemma3_dir, 60, 5, length=600)
    out = generate(hf_gemma3, prompt, KVPolicyConfig(policy="pyramid", budget=0.12), 2)
    assert out.kept_per_layer == [110, 85, 59, 34]  # 72 tokens on average, over the four full-attention layers


@pytest.mark.vllm
def test_only_the_full_attention_groups_free_blocks(tiny_gemma3_dir, release):
    """Per-layer pyramid: one KV cache group per full-attention layer, holding its budget after prefill; the
    sliding-window layers (two groups of one, vLLM cuts every kind to one size) hold what vanilla vLLM holds.
    Admission's peak, both kinds of group counted, bounds what the request held."""
    from kvcomp_vllm.vllm_integration.admission import peak_blocks, untouched_layers

    settings = dict(policy="pyramid", budget=0.1)
    prompts = [prompt_ids(tiny_gemma3_dir, 60, 5, length=1000), prompt_ids(tiny_gemma3_dir, 40, 6, length=700)]
    vanilla_llm = make_llm(tiny_gemma3_dir)
    vanilla = drive(vanilla_llm, prompts, greedy(4))
    vanilla_kinds = group_kinds(vanilla_llm)
    del vanilla_llm
    gc.collect()
    llm = make_llm(tiny_gemma3_dir, settings)
    groups = scheduler_of(llm).kv_cache_config.kv_cache_groups
    kinds = group_kinds(llm)
    assert kinds.count("CompressedAttentionSpec") == 4 and kinds.count("SlidingWindowSpec") == 2
    run = drive(llm, prompts, greedy(4))
    policy = make_policy(KVPolicyConfig(**settings), FULL_LAYERS)
    vllm_config = llm.llm_engine.vllm_config
    in_flight = vllm_config.scheduler_config.max_num_batched_tokens
    for req_id, prompt in zip(run.tokens, prompts):
        untouched = untouched_layers(vllm_config, len(prompt), 4, in_flight)
        assert run.peak_blocks[req_id] <= peak_blocks(policy, policy, BLOCK, len(prompt), 4, untouched)
        held = vanilla.first_decode_blocks[req_id]
        [sliding] = [blocks for blocks, kind in zip(held, vanilla_kinds) if kind == "SlidingWindowSpec"]
        want = [
            -(-(policy.layout.layer_budget(g.kv_cache_spec.layer, len(prompt)) + 1) // BLOCK)
            if kind == "CompressedAttentionSpec" else sliding
            for g, kind in zip(groups, kinds)
        ]
        assert run.first_decode_blocks[req_id] == want
        # The window's 64 tokens (and the next) over at most 3 blocks, far under the prompt's.
        assert all(b <= 3 for b, k in zip(want, kinds) if k == "SlidingWindowSpec")
    assert [g.kv_cache_spec.layer for g in groups if hasattr(g.kv_cache_spec, "tier")] == [0, 1, 2, 3]
    assert run.free_blocks_after == run.free_blocks_before


def test_admission_counts_the_sliding_window_groups():
    """Peak and decode blocks of a request on the tiny Gemma 3 under snapkv 64: the four full-attention layers
    form two groups of two (vLLM cuts the kinds to the two sliding layers' size), the sliding layers one."""
    from kvcomp_vllm.vllm_integration.admission import held_blocks, peak_blocks, untouched_layers

    text = SimpleNamespace(num_hidden_layers=6, layer_types=list(GEMMA3_LAYER_TYPES), sliding_window=64)
    vllm_config = SimpleNamespace(model_config=SimpleNamespace(hf_text_config=text))
    policy = make_policy(KVPolicyConfig(policy="snapkv", budget=64), FULL_LAYERS)
    peak_untouched = untouched_layers(vllm_config, 1000, 8, in_flight=2048)
    assert peak_untouched == (2, 1008)  # the whole prompt is in flight in one chunk
    # 2 groups x cdiv(1000, 32) raw prompt blocks, then the sliding group: cdiv(1008, 32) + 1.
    assert peak_blocks(policy, policy, BLOCK, 1000, 8, peak_untouched) == 2 * 32 + 33
    held_untouched = untouched_layers(vllm_config, 1000, 8)
    assert held_untouched == (2, 64)  # 63 tokens of the window and the one in flight
    assert held_blocks(policy, policy, BLOCK, 1000, 8, held_untouched) == 2 * 3 + 3


def test_a_model_without_full_attention_layers_is_refused(tmp_path):
    from test_refusals import refused

    model = build_tiny_model(tmp_path / "all-sliding", tiny_gemma3_spec(layer_types=("sliding_attention",) * 6))
    assert refused(model) == (
        "kv policy 'snapkv' has no layer to compress: kvcomp compresses full-attention layers and every layer of "
        "this model is sliding_attention; serve it with --kv-policy full"
    )


@pytest.mark.vllm
def test_chunked_prefill_and_compression_rounds_on_a_hybrid_model(tiny_gemma3_dir, hf_gemma3, release):
    """Scheduler chunks of 128 and compression every 256 prompt tokens: the sliding-window layers free blocks
    behind their window while the full-attention layers are compressed round by round."""
    settings = dict(policy="snapkv", budget=96, prefill_chunk=256)
    prompts = [prompt_ids(tiny_gemma3_dir, 60, 20, length=7 * 128 + 10),
               prompt_ids(tiny_gemma3_dir, 60, 21, length=500)]
    run = drive(make_llm(tiny_gemma3_dir, settings, max_num_batched_tokens=128), prompts, greedy(10))
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(hf_gemma3, prompt, KVPolicyConfig(**settings), 10).tokens
    assert run.free_blocks_after == run.free_blocks_before


@pytest.mark.vllm
def test_vllm_serve_pyramid_on_a_hybrid_model(tiny_gemma3_dir, hf_gemma3, tmp_path):
    """`vllm serve --kv-policy pyramid` (float32, the model's dtype) answers what the oracle generates."""
    from transformers import AutoTokenizer

    from kvcomp_vllm.testing.server import serve
    from test_server import post

    log = tmp_path / "serve.log"
    args = ("--kv-policy", "pyramid", "--kv-budget", "0.1", "--max-model-len", "2048", "--enforce-eager",
            "--dtype", "float32", "--block-size", str(BLOCK))
    prompt = " ".join(["Ka lo mi the ren of tusa vel."] * 60)
    with serve(tiny_gemma3_dir, *args, log=log) as url:
        body = {"model": str(tiny_gemma3_dir), "prompt": prompt, "max_tokens": 8, "temperature": 0}
        completion = post(url + "/v1/completions", body)
        assert completion["usage"]["completion_tokens"] == 8
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma3_dir)
    ids = tokenizer(prompt).input_ids
    assert completion["usage"]["prompt_tokens"] == len(ids) > 4 * 64  # well past the sliding window
    expected = generate(hf_gemma3, ids, KVPolicyConfig(policy="pyramid", budget=0.1), 8).tokens
    assert completion["choices"][0]["text"] == tokenizer.decode(expected)
    text = log.read_text()
    assert "kvcomp: hybrid model: the policy's layers are the full-attention layers [1, 2, 4, 5]; the other 2 " \
           "layers stay under vLLM's own KV management" in text


@pytest.mark.vllm
def test_per_request_overrides_on_a_hybrid_model(tiny_gemma3_dir, hf_gemma3, release):
    """A pyramid server (one tier per full-attention layer) serves other policies per request, each as the oracle."""
    requests = [dict(policy="snapkv", budget=64), dict(policy="streaming", budget=80), dict(budget=0.2), None]
    prompts = [prompt_ids(tiny_gemma3_dir, 50, 30 + i) for i in range(len(requests))]
    llm = make_llm(tiny_gemma3_dir, dict(policy="pyramid", budget=0.12))
    run = drive(llm, prompts, [greedy(8, kvcomp=r) for r in requests])
    for req_id, prompt, asked in zip(run.tokens, prompts, requests):
        config = KVPolicyConfig(**{"policy": "pyramid", "budget": 0.12, **(asked or {})})
        assert run.tokens[req_id] == generate(hf_gemma3, prompt, config, 8).tokens, asked
    assert run.free_blocks_after == run.free_blocks_before


def test_the_hybrid_kv_cache_manager_turned_off_is_refused(tiny_gemma3_dir):
    from test_refusals import refused

    assert refused(tiny_gemma3_dir, disable_hybrid_kv_cache_manager=True) == (
        "kv policy 'snapkv' cannot be combined with vLLM's hybrid KV cache manager turned off on a hybrid model: "
        "scheduler_config.disable_hybrid_kv_cache_manager (--disable-hybrid-kv-cache-manager); vLLM would then hold "
        "the sliding-window layers as full attention, in the compressed layers' KV cache groups"
    )


@pytest.mark.vllm
def test_tp2_on_a_hybrid_model_serves_as_tp1(tiny_gemma3_dir, tmp_path):
    """Each rank holds one of the two KV heads; head-spanning rules (windowkv) gather both, sliding layers split
    their heads as vLLM does."""
    from test_tensor_parallel import prompts_of, results, served, start

    overrides = [None, {"policy": "snapkv", "budget": 64}, {"policy": "windowkv", "budget": 100, "group_size": 2},
                 {"policy": "windowkv-per-head", "budget": 100, "group_size": 2}]
    prompts = prompts_of(tiny_gemma3_dir, [400, 437, 474, 511])
    batch = {"server": dict(policy="pyramid", budget=0.12), "prompts": prompts, "overrides": overrides, "max_tokens": 8}
    tp2 = start(tiny_gemma3_dir, 2, [batch], tmp_path, fault=False)
    [one], _ = results(start(tiny_gemma3_dir, 1, [batch], tmp_path, fault=False))
    [two], _ = results(tp2)
    assert two["tokens"] == one["tokens"]
    assert two["free"][0] == two["free"][1] and one["free"][0] == one["free"][1]
    assert served(two["reports"]) == served(one["reports"]) != {}
