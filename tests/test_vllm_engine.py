"""The plugin inside a real vLLM CPU engine (float32): tokens equal the oracle generator's
(`testing.oracle`), memory is really freed."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.testing.oracle import generate
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.testing.engine import cached_blocks, compacted_counts, drive, scheduler_of, worker_state_of

pytestmark = pytest.mark.vllm

BLOCK = 32
POLICIES = [
    dict(policy="snapkv", budget=96),
    dict(policy="pyramid", budget=0.12),
    dict(policy="windowkv", budget=100, group_size=2),
    dict(policy="windowkv", budget=100, window_scoring="average"),
    dict(policy="windowkv-per-head", budget=100, group_size=2),
    dict(policy="streaming", budget=64),
    dict(policy="pod", recent=48, group_size=2),
]


def make_llm(model_dir, settings=None, **kwargs):
    from vllm import LLM

    extra = {"additional_config": {"kvcomp": settings}} if settings else {}
    args = dict(dtype="float32", enforce_eager=True, max_model_len=4096, seed=0, block_size=BLOCK)
    return LLM(model=str(model_dir), **{**args, **kwargs, **extra})


def greedy(max_tokens, logprobs=None, kvcomp=None):
    from vllm import SamplingParams

    extra = {"extra_args": {"kvcomp": kvcomp}} if kvcomp is not None else {}
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, logprobs=logprobs, **extra)


def prompt_ids(model_dir, sentences, seed, length=None):
    ids = AutoTokenizer.from_pretrained(model_dir)(" ".join(synthetic_text(sentences, seed))).input_ids
    return ids[:length] if length else ids


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def served_as_oracle(llm, model, prompts: list[list[int]], settings: dict, max_tokens: int = 12):
    """Serve `prompts` greedily on `llm`: every request must equal the oracle and the free blocks come back
    exactly. Returns the run and the (kept, evicted) prompt tokens the workers counted while serving it."""
    before = compacted_counts(llm, settings["policy"])
    run = drive(llm, prompts, greedy(max_tokens))
    config = KVPolicyConfig(**settings)
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(model, prompt, config, max_tokens).tokens, (req_id, len(prompt))
    assert run.free_blocks_after == run.free_blocks_before
    after = compacted_counts(llm, settings["policy"])
    return run, (after[0] - before[0], after[1] - before[1])


def policy_counts(settings: dict, prompts: list[list[int]], layers: int = 4) -> tuple[int, int]:
    """The (kept, evicted) prompt tokens the policy's slots per layer give `prompts`."""
    policy = make_policy(KVPolicyConfig(**settings), layers)
    kept = sum(policy.layout.layer_slots(layer, len(p)) for p in prompts for layer in range(layers))
    return kept, layers * sum(map(len, prompts)) - kept


@pytest.mark.parametrize("settings", POLICIES, ids=lambda s: s["policy"])
def test_policy_matches_the_oracle_generator(tiny_model_dir, hf_model, settings, release):
    # Long prompts and one shorter than the budget (kept whole), batched together.
    prompts = [prompt_ids(tiny_model_dir, 40, 1), prompt_ids(tiny_model_dir, 3, 2), prompt_ids(tiny_model_dir, 60, 3)]
    _, counted = served_as_oracle(make_llm(tiny_model_dir, settings), hf_model, prompts, settings)
    # The workers' counts of what they compacted equal the slots the policy gives each layer.
    assert counted == policy_counts(settings, prompts)


@pytest.mark.parametrize(
    "settings,distinct",
    [(dict(policy="pyramid", budget=0.1, tiers=4), 4), (dict(policy="pyramid", budget=0.1), 32),
     (dict(policy="snapkv", budget=0.1), 1), (dict(policy="pod", recent=64, group_size=4), 2)],
    ids=["pyramid-tiers", "pyramid-per-layer", "snapkv", "pod"],
)
def test_layers_of_one_budget_tier_get_one_spec(settings, distinct):
    """vLLM 0.26 makes a KV group per distinct layer spec (0.32 also merges equal tiers), so a tier's
    layers must compare equal; their spec's layer must budget like every layer of the tier."""
    from kvcomp_vllm.vllm_integration.compat import FullAttentionSpec
    from kvcomp_vllm.vllm_integration.kv_spec import CompressedAttentionSpec

    policy = make_policy(KVPolicyConfig(**settings), 32)
    base = FullAttentionSpec(block_size=16, num_kv_heads=8, head_size=128, dtype=torch.bfloat16)
    specs = [CompressedAttentionSpec.from_spec(base, policy, layer) for layer in range(32)]
    assert len(set(specs)) == distinct
    for layer, spec in enumerate(specs):
        assert spec.tier == policy.layout.budget_tier(layer)
        assert policy.layout.layer_slots(spec.layer, 4096) == policy.layout.layer_slots(layer, 4096)


def test_evicted_blocks_are_freed_in_the_schedule_after_the_compacting_step():
    """With async scheduling vLLM counts only tokens whose output came back, one step behind; the worker
    compacts in the step that ends the prompt and cuts its rows in the next one, so the manager must free
    then, counting the step in flight (the scheduler's `num_computed_tokens`)."""
    from types import SimpleNamespace

    from vllm import SamplingParams
    from vllm.v1.core.block_pool import BlockPool

    from kvcomp_vllm.vllm_integration.compat import FullAttentionSpec
    from kvcomp_vllm.vllm_integration.kv_spec import CompressedAttentionManager, CompressedAttentionSpec

    policy = make_policy(KVPolicyConfig(policy="snapkv", budget=64), 4)
    base = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.float32)
    pool = BlockPool(num_gpu_blocks=64, enable_caching=False, hash_block_size=16)
    manager = CompressedAttentionManager(CompressedAttentionSpec.from_spec(base, policy, 0), block_pool=pool,
                                         enable_caching=False, kv_cache_group_id=0, scheduler_block_size=16)
    manager.requests = {"r": SimpleNamespace(num_computed_tokens=200, num_prompt_tokens=200, sampling_params=SamplingParams())}
    manager.allocate_new_blocks("r", 200, 200)
    assert len(manager.req_to_blocks["r"]) == 13
    manager.remove_skipped_blocks("r", 0, num_prompt_tokens=200)  # the 200-token prefill is still in flight
    assert len(manager.req_to_blocks["r"]) == 4  # 64 kept tokens
    assert pool.get_num_free_blocks() == 64 - 1 - 4  # block 0 is vLLM's null block
    manager.allocate_new_blocks("r", 201, 201)  # the first decode token lands at cache position 64
    assert len(manager.req_to_blocks["r"]) == 5


@pytest.mark.parametrize("tiers", [None, 2], ids=["per-layer", "two-steps"])
def test_blocks_held_after_prefill_equal_the_budgets(tiny_llama_dir, tiers, release):
    settings = dict(policy="pyramid", budget=0.1, **({} if tiers is None else {"tiers": tiers}))
    prompts = [prompt_ids(tiny_llama_dir, 60, 5, length=1000), prompt_ids(tiny_llama_dir, 40, 6, length=700)]
    llm = make_llm(tiny_llama_dir, settings)
    groups = scheduler_of(llm).kv_cache_config.kv_cache_groups
    assert len(groups) == (tiers or 4)  # one KV cache group per tier (per layer by default)
    run = drive(llm, prompts, greedy(4))
    policy = make_policy(KVPolicyConfig(**settings), 4)
    for req_id, prompt in zip(run.tokens, prompts):
        layers = [int(g.layer_names[0].split(".layers.")[1].split(".")[0]) for g in groups]
        want = [-(-(policy.layout.layer_budget(layer, len(prompt)) + 1) // BLOCK) for layer in layers]
        assert run.first_decode_blocks[req_id] == want
        assert sum(want) < 4 * -(-(len(prompt) + 1) // BLOCK) / 5  # under a fifth of full KV
    assert run.free_blocks_after == run.free_blocks_before


def test_pod_members_hold_proximal_tokens_and_packed_values_only(tiny_llama_dir, release):
    settings = dict(policy="pod", sink=4, recent=60, group_size=2)
    prompts = [prompt_ids(tiny_llama_dir, 60, 7, length=1000)]
    llm = make_llm(tiny_llama_dir, settings)
    groups = scheduler_of(llm).kv_cache_config.kv_cache_groups
    run = drive(llm, prompts, greedy(4))
    owners = [g.kv_cache_spec.tier == 0 for g in groups]
    # Owners (layers 0, 2) keep all 1000 tokens; members keep 64 proximal + 468 packed value slots.
    want = [-(-(1000 + 1) // BLOCK) if owner else -(-(64 + 468 + 1) // BLOCK) for owner in owners]
    assert run.first_decode_blocks["req-0"] == want
    assert run.free_blocks_after == run.free_blocks_before
    # The last decode step: member layers 1 and 3 decode the request from the runner's buffers, built once
    # on the host before the forward (no per-layer inputs).
    state = worker_state_of(llm)
    step = state.step
    assert {layer: len(spans) for layer, spans in step.member_rows.items()} == {1: 1, 3: 1}
    assert step.decode_only and step.member_decode_rows == 1 and not step.member_inputs
    assert state.member_decode.selected[:2].tolist() == [True, False]
    assert state.member_decode.layout[0].tolist() == [64 + 936 + 3, 64, 4, 936]  # the third token after the prompt


def test_pod_member_layers_attend_once(tiny_llama_dir, monkeypatch, release):
    """Member layers' decode rows attend only through `paged_decode`: in decode-only steps vLLM's attention
    does not run for member layers at all; in a step mixing a prefill with decodes it runs with the decode
    rows' `seq_lens` cut to one key, while owners attend over their whole cache. Tokens stay the oracle's."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    settings = dict(policy="pod", recent=48, group_size=2)
    calls = []  # (layer index, seq_lens) of every vLLM attention call
    original = CPUAttentionBackendImpl.forward

    def recording(self, layer, query, key, value, kv_cache, attn_metadata, *args, **kwargs):
        if attn_metadata is not None:
            calls.append((int(layer.layer_name.split(".layers.")[1].split(".")[0]), attn_metadata.seq_lens.tolist()))
        return original(self, layer, query, key, value, kv_cache, attn_metadata, *args, **kwargs)

    monkeypatch.setattr(CPUAttentionBackendImpl, "forward", recording)
    prompts = [prompt_ids(tiny_llama_dir, 60, 7, length=600), prompt_ids(tiny_llama_dir, 60, 8, length=300)]
    # The second prompt waits for the first one's prefill, then is prefilled beside its first decode.
    llm = make_llm(tiny_llama_dir, settings, max_num_batched_tokens=600, max_num_seqs=2)
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    calls.clear()  # engine start-up's dummy runs
    both = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    member_calls = [lens for layer, lens in calls if layer in (1, 3)]
    owner_calls = [lens for layer, lens in calls if layer in (0, 2)]
    # Owners attend in every step (two prefills, five decode steps); members only in the two prefill steps.
    assert len(owner_calls) == 2 * 7 and len(member_calls) == 2 * 2
    for lens in member_calls:
        assert all(n <= 1 or n >= 300 for n in lens)  # prefill rows whole, decode rows one key
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    for prompt, out in zip(prompts, both):
        assert list(out.outputs[0].token_ids) == generate(model, prompt, KVPolicyConfig(**settings), 6).tokens


def test_five_times_more_compressed_requests_run_concurrently(tiny_llama_dir, release):
    prompts = [prompt_ids(tiny_llama_dir, 60, 10 + i, length=1000) for i in range(12)]
    per_request = -(-(1000 + 16) // BLOCK)
    pool = dict(num_gpu_blocks_override=2 * per_request + 2, max_model_len=2048)  # two uncompressed requests
    vanilla = drive(make_llm(tiny_llama_dir, None, **pool), prompts, greedy(16))
    gc.collect()
    compressed = drive(make_llm(tiny_llama_dir, dict(policy="snapkv", budget=64), **pool), prompts, greedy(16))
    assert vanilla.peak_running == 2
    assert compressed.peak_running >= 5 * vanilla.peak_running
    assert compressed.free_blocks_after == compressed.free_blocks_before


def test_chunked_prefill_matches_the_oracle(tiny_llama_dir, release):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    # 7 chunks of 128 and a last chunk of 10: the observation window spans two chunks.
    prompts = [prompt_ids(tiny_llama_dir, 60, 20, length=7 * 128 + 10), prompt_ids(tiny_llama_dir, 60, 21, length=500)]
    settings = dict(policy="snapkv", budget=96)
    run = drive(make_llm(tiny_llama_dir, settings, max_num_batched_tokens=128), prompts, greedy(10))
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(model, prompt, KVPolicyConfig(**settings), 10).tokens
    assert run.free_blocks_after == run.free_blocks_before


@pytest.mark.parametrize("settings", [dict(policy="snapkv", budget=200), dict(policy="pod", recent=48)],
                         ids=["snapkv", "pod"])
def test_requests_compacting_in_one_step_move_in_groups_of_at_most_max_model_len(
    tiny_llama_dir, settings, monkeypatch, release
):
    """The move buffer is the scratch vLLM's profiling counted (`scratch`): three prompts ending in one
    step, whose kept tokens together exceed max_model_len, move in several batched moves."""
    from kvcomp_vllm.vllm_integration.backend import CompressingAttention

    moves = []
    original = CompressingAttention._move

    def recording(state, rows, sources, *args):
        moves.append((len(rows), len(rows) * max(s.shape[-1] for s in sources)))
        return original(state, rows, sources, *args)

    monkeypatch.setattr(CompressingAttention, "_move", staticmethod(recording))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    prompts = [prompt_ids(tiny_llama_dir, 40, 40 + i, length=300) for i in range(3)]
    run = drive(make_llm(tiny_llama_dir, settings, max_model_len=512), prompts, greedy(8))
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(model, prompt, KVPolicyConfig(**settings), 8).tokens
    assert run.free_blocks_after == run.free_blocks_before
    assert max(padded for _, padded in moves) <= 512
    assert sum(rows for rows, _ in moves) % 3 == 0 and min(rows for rows, _ in moves) < 3  # split, none lost


@pytest.mark.parametrize(
    "settings,num_blocks",
    [
        # keeps 300 of 400 prompt tokens and decodes 96 more: 13 blocks each, four of them 52 > 24
        (dict(policy="snapkv", budget=300), 24),
        # owners 13 + members 8 blocks after prefill, +6 while decoding: 27 each, two of them > 48
        (dict(policy="pod", recent=48, group_size=2), 48),
    ],
    ids=["snapkv", "pod"],
)
def test_preempted_requests_are_compressed_again_the_same_way(tiny_llama_dir, settings, num_blocks, release):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    prompts = [prompt_ids(tiny_llama_dir, 40, 30 + i, length=400) for i in range(4)]
    llm = make_llm(tiny_llama_dir, settings, num_gpu_blocks_override=num_blocks, max_model_len=512)
    run = drive(llm, prompts, greedy(96))
    assert run.preemptions > 0
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(model, prompt, KVPolicyConfig(**settings), 96).tokens
    assert run.free_blocks_after == run.free_blocks_before


def test_prefix_caching_stays_on_and_compacted_blocks_are_not_cached(tiny_llama_dir, release):
    # cache_prefix 0 (nothing kept raw for the cache) and no request that evicts nothing: the shared 512
    # tokens are compacted by each request, so none enters the cache and each request compresses its whole
    # prompt (tests/test_prefix_cache.py has the hits, and auto keeping a prefix that repeats).
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    shared = prompt_ids(tiny_llama_dir, 40, 40, length=512)
    prompts = [shared + prompt_ids(tiny_llama_dir, 5, 41 + i, length=40) for i in range(3)]
    settings = dict(policy="pyramid", budget=0.2, cache_prefix=0)
    llm = make_llm(tiny_llama_dir, settings, enable_prefix_caching=True)
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    run = drive(llm, prompts, greedy(8))
    for req_id, prompt in zip(run.tokens, prompts):
        assert run.tokens[req_id] == generate(model, prompt, KVPolicyConfig(**settings), 8).tokens
    assert cached_blocks(llm) == 0


BASELINE = """
import json, sys
from vllm import LLM, SamplingParams
from kvcomp_vllm.testing.engine import drive
prompts = json.loads(sys.argv[2])
llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=4096, seed=0, block_size=32)
run = drive(llm, prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=1))
print("RESULT" + json.dumps([run.tokens, run.logprobs]))
"""


def test_full_policy_equals_vllm_without_the_plugin(tiny_llama_dir, release):
    prompts = [prompt_ids(tiny_llama_dir, 40, 50), prompt_ids(tiny_llama_dir, 10, 51)]
    env = {**os.environ, "VLLM_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-c", BASELINE, str(tiny_llama_dir), json.dumps(prompts)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens, logprobs = json.loads(proc.stdout.split("RESULT")[-1])
    run = drive(make_llm(tiny_llama_dir, dict(policy="full")), prompts, greedy(12, logprobs=1))
    assert run.tokens == tokens
    assert run.logprobs == logprobs


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(policy="nope"), "invalid kvcomp settings: policy: should be 'full', 'streaming', 'snapkv', 'pyramid', 'windowkv', 'windowkv-per-head' or 'pod' (got 'nope')"),
        (dict(policy="snapkv", budget=8192), "budget: 8192 tokens is larger than the model's context (4096 tokens)"),
        (dict(policy="windowkv", budget=64, group_size=3), "group_size: 3 does not divide the model's 4 layers"),
    ],
    ids=["unknown-policy", "budget-over-context", "group-size"],
)
def test_bad_settings_fail_at_engine_start(tiny_llama_dir, settings, message):
    with pytest.raises(ValueError) as err:
        make_llm(tiny_llama_dir, settings)
    assert message in str(err.value)


def test_requests_choose_their_own_policy_in_one_batch(tiny_model_dir, hf_model, release):
    from kvcomp_vllm.config import request_config

    server = dict(policy="pyramid", budget=0.12)
    overrides = [None, {"policy": "snapkv", "budget": 64}, {"budget": 200}, {"policy": "full"}, {"policy": "streaming", "budget": 40}]
    prompts = [prompt_ids(tiny_model_dir, 40, 60 + i) for i in range(len(overrides))]
    run = drive(make_llm(tiny_model_dir, server), prompts, [greedy(10, kvcomp=o) for o in overrides])
    for req_id, prompt, override in zip(run.tokens, prompts, overrides):
        config = request_config(KVPolicyConfig(**server), override)
        assert run.tokens[req_id] == generate(hf_model, prompt, config, 10).tokens, (req_id, config.describe())
    assert run.free_blocks_after == run.free_blocks_before


@pytest.mark.parametrize(
    "server,override,message",
    [
        (dict(policy="pyramid", budget=0.1), {"budget": 2.5}, "kvcomp: invalid settings in request: budget: a ratio must lie in (0, 1], got 2.5"),
        (dict(policy="pyramid", budget=0.1), {"policy": "h2o"}, "kvcomp: invalid settings in request: policy: should be 'full', 'streaming'"),
        (dict(policy="snapkv", budget=64), {"policy": "pyramid", "budget": 0.1}, "policy 'pyramid' needs per-layer budgets that this server's KV groups (policy 'snapkv') cannot hold"),
        (dict(policy="pyramid", budget=0.1), {"policy": "pod"}, "policy 'pod' changes the cache layout and is engine-wide only"),
        (dict(policy="full"), {"policy": "snapkv", "budget": 64}, "this server runs without KV compression"),
    ],
    ids=["bad-budget", "unknown-policy", "tiers", "pod", "no-compression"],
)
def test_bad_request_settings_fail_that_request_only(tiny_llama_dir, server, override, message, release):
    llm = make_llm(tiny_llama_dir, server)
    prompt = prompt_ids(tiny_llama_dir, 10, 70)
    with pytest.raises(ValueError) as err:
        llm.generate([{"prompt_token_ids": prompt}], greedy(4, kvcomp=override), use_tqdm=False)
    assert message in str(err.value)
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(4), use_tqdm=False)  # the engine still serves
    assert len(out[0].outputs[0].token_ids) == 4
