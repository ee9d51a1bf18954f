"""Compression with prefix caching on vLLM's FlashAttention (CUDA, vLLM 0.26), float16, against the oracle.

Skipped without a GPU. The same two cases as the CPU tests (tests/test_prefix_cache.py): a shared system
prompt made cacheable by the first request (`cache_prefix`) is hit by the second, both within the GPU
tolerance of the oracle run with that prefix protected (also on the hybrid tiny Gemma 3); and a compacted prompt sent again hits nothing,
while with `cache_prefix` exactly its protected blocks hit.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.testing.engine import cached_blocks, count_prefix_cache, drive
from kvcomp_vllm.testing.oracle import largest_logprob_gaps

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BLOCK = 32
SHARED = 320
NEW_TOKENS = 16
LOGPROB_TOLERANCE = 0.05  # as tests/test_gpu_engine.py
POLICIES = [
    dict(policy="snapkv", budget=64),
    dict(policy="pyramid", budget=0.2, tiers=2),
    dict(policy="windowkv", budget=100, group_size=2),
    dict(policy="pod", recent=48, group_size=2),
]


def make_llm(model_dir, settings, dtype="float16", **kwargs):
    from vllm import LLM

    return LLM(model=str(model_dir), dtype=dtype, enforce_eager=True, gpu_memory_utilization=0.05,
               max_model_len=4096, block_size=BLOCK, enable_prefix_caching=True, disable_log_stats=False,
               additional_config={"kvcomp": settings}, **kwargs)


def greedy():
    from vllm import SamplingParams

    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)


def ids(model_dir, sentences, seed, length):
    return AutoTokenizer.from_pretrained(model_dir)(" ".join(synthetic_text(sentences, seed))).input_ids[:length]


# (model fixture, dtype, tolerance): the tiny Gemma 3 (sliding-window layers beside the compressed ones) runs in
# bfloat16 with tests/test_gpu_engine.py's hybrid tolerance.
MODELS = {"llama": ("tiny_llama_dir", torch.float16, LOGPROB_TOLERANCE), "gemma3": ("tiny_gemma3_dir", torch.bfloat16, 0.25)}


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("settings", POLICIES, ids=lambda s: s["policy"])
def test_shared_system_prompt_hits_on_flash_attention(arch, settings, request):
    fixture, dtype, tolerance = MODELS[arch]
    model_dir = request.getfixturevalue(fixture)
    system = ids(model_dir, 40, 1, SHARED)
    prompts = [system + ids(model_dir, 20, 2, 150), system + ids(model_dir, 20, 3, 170)]
    llm = make_llm(model_dir, {**settings, "cache_prefix": SHARED}, dtype=str(dtype).removeprefix("torch."))
    cache = count_prefix_cache(llm)
    runs = [drive(llm, [prompt], greedy()) for prompt in prompts]
    assert (cache["queries"], cache["hits"]) == (sum(map(len, prompts)), SHARED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda()
    outputs = [next(iter(run.tokens.values())) for run in runs]
    worst = largest_logprob_gaps(model, prompts, outputs, KVPolicyConfig(**settings), NEW_TOKENS, protected=SHARED)
    print(arch, settings["policy"], "largest logprob gap to the oracle's best token, per prompt:", worst)
    assert max(worst) <= tolerance
    assert all(run.free_blocks_after == run.free_blocks_before for run in runs)


@pytest.mark.parametrize("cache_prefix,hit", [("auto", 0), (200, 192)])
def test_compacted_prompt_sent_again_hits_only_its_protected_blocks(tiny_llama_dir, cache_prefix, hit):
    prompt = ids(tiny_llama_dir, 60, 4, 480)
    settings = {"policy": "snapkv", "budget": 64, "cache_prefix": cache_prefix}
    llm = make_llm(tiny_llama_dir, settings)
    cache = count_prefix_cache(llm)
    runs = [drive(llm, [prompt], greedy()) for _ in range(2)]
    assert (cache["queries"], cache["hits"]) == (2 * len(prompt), hit) and cached_blocks(llm) == hit // BLOCK
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16).cuda()
    outputs = [next(iter(run.tokens.values())) for run in runs]
    worst = largest_logprob_gaps(model, [prompt] * 2, outputs, KVPolicyConfig(**settings), NEW_TOKENS, protected=hit)
    assert max(worst) <= LOGPROB_TOLERANCE


def test_pod_member_rows_cut_to_one_key_beside_cascade_attention(tiny_llama_dir):
    """Eight requests hitting one cached 512-token system prompt: with a 160-token step budget each step
    prefills one request's own tokens beside the others' decodes, and such mixed steps of 8 requests with a
    common prefix of at least 256 tokens run FlashAttention's cascade attention (the prefix attended once,
    suffix lengths `seq_lens` minus the prefix). PoD's member decode rows, whose `seq_lens` the builder
    cuts to one key past that prefix (`member_decode`), must keep it valid; tokens stay the oracle's."""
    settings = dict(policy="pod", recent=48, group_size=2)
    system = ids(tiny_llama_dir, 120, 1, 512)
    prompts = [system + ids(tiny_llama_dir, 20, 10 + i, 150) for i in range(8)]
    llm = make_llm(tiny_llama_dir, {**settings, "cache_prefix": 512}, max_num_batched_tokens=160)
    drive(llm, prompts[:1], greedy())  # makes the system prompt's blocks cached
    run = drive(llm, prompts, greedy())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16).cuda()
    worst = largest_logprob_gaps(model, prompts, list(run.tokens.values()), KVPolicyConfig(**settings), NEW_TOKENS,
                                 protected=512)
    print("pod beside cascade attention, largest logprob gap to the oracle's best token, per prompt:", worst)
    assert max(worst) <= LOGPROB_TOLERANCE
    assert run.free_blocks_after == run.free_blocks_before
