"""Compression with vLLM's prefix caching on (CPU engine, float32): shared prefixes hit and stay raw, each
request's own tokens are compressed, and the outputs equal the oracle run with that protected prefix."""

from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.config import request_config
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.testing.engine import cached_blocks, count_prefix_cache, drive, external_id, prefix_counts, scheduler_of
from kvcomp_vllm.testing.oracle import generate
from kvcomp_vllm.vllm_integration.compat import cdiv

pytestmark = pytest.mark.vllm

BLOCK = 32
SHARED = 320  # tokens of the shared system prompt: ten whole blocks

POLICIES = [
    dict(policy="snapkv", budget=64),
    dict(policy="pyramid", budget=0.2, tiers=2),
    dict(policy="windowkv", budget=100, group_size=2),
    dict(policy="streaming", budget=64),
    dict(policy="pod", recent=48, group_size=2),
    dict(policy="pod", select="snapkv", budget=0.3, window=16, recent=48, groups=[[0, 3], [1, 2]]),
    dict(policy="windowkv-per-head", budget=100, group_size=2),
    dict(policy="snapkv", budget=64, prefill_chunk=64),  # rounds every 64 tokens after the protected prefix
]


def make_llm(model_dir, settings, **kwargs):
    from vllm import LLM

    args = dict(dtype="float32", enforce_eager=True, max_model_len=4096, seed=0, block_size=BLOCK,
                enable_prefix_caching=True, disable_log_stats=False)
    return LLM(model=str(model_dir), additional_config={"kvcomp": settings}, **{**args, **kwargs})


def greedy(max_tokens, kvcomp=None, n=1):
    from vllm import SamplingParams

    extra = {"extra_args": {"kvcomp": kvcomp}} if kvcomp is not None else {}
    if n > 1:  # vLLM samples n > 1 (top_k=1 samples the greedy token); the final output holds all n
        from vllm.sampling_params import RequestOutputKind

        extra.update(temperature=1.0, top_k=1, output_kind=RequestOutputKind.FINAL_ONLY)
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, n=n, **{"temperature": 0, **extra})


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def ids(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return lambda sentences, seed, length: tokenizer(" ".join(synthetic_text(sentences, seed))).input_ids[:length]


def one(run) -> list[int]:
    (tokens,) = run.tokens.values()
    return tokens


@pytest.mark.parametrize("settings", POLICIES, ids=lambda s: s["policy"] + ("-chunked" if "prefill_chunk" in s else ""))
def test_second_request_hits_the_shared_system_prompt(tiny_llama_dir, model, ids, settings, release):
    system = ids(40, 1, SHARED)
    first, second = system + ids(20, 2, 150), system + ids(20, 3, 170)
    llm = make_llm(tiny_llama_dir, {**settings, "cache_prefix": SHARED})
    cache = count_prefix_cache(llm)
    config = KVPolicyConfig(**settings)
    protected, compressed = prefix_counts(llm, config.policy)  # counts so far in this process (earlier engines')
    a = drive(llm, [first], greedy(10))
    queries, hits = cache["queries"], cache["hits"]
    assert (queries, hits) == (len(first), 0)
    b = drive(llm, [second], greedy(10))
    assert (cache["queries"], cache["hits"]) == (len(first) + len(second), SHARED)  # the whole shared prompt, no more
    # Both keep the shared prompt raw and compress their own tokens, as the oracle does.
    assert one(a) == generate(model, first, config, 10, protected=SHARED).tokens
    assert one(b) == generate(model, second, config, 10, protected=SHARED).tokens
    counted = prefix_counts(llm, config.policy)
    assert (counted[0] - protected, counted[1] - compressed) == (2 * SHARED, len(first) + len(second) - 2 * SHARED)
    assert a.free_blocks_after == a.free_blocks_before and b.free_blocks_after == b.free_blocks_before


def test_snapkv_blocks_after_compaction_count_the_protected_prefix(tiny_llama_dir, ids, release):
    system = ids(40, 1, SHARED)
    prompt = system + ids(20, 2, 150)
    llm = make_llm(tiny_llama_dir, {"policy": "snapkv", "budget": 64, "cache_prefix": SHARED})
    cache = count_prefix_cache(llm)
    run = drive(llm, [prompt], greedy(10))
    # One KV group: the protected blocks, then the budget and the first generated token.
    assert run.first_decode_blocks["req-0"] == [cdiv(SHARED + 64 + 1, BLOCK)]


def test_compacted_blocks_are_never_hit_as_raw(tiny_llama_dir, model, ids, release):
    """`auto`, one prompt sent twice: an identical prompt is no other sender, so both compress it all."""
    prompt = ids(60, 4, 480)
    settings = {"policy": "snapkv", "budget": 64}
    llm = make_llm(tiny_llama_dir, settings)  # cache_prefix auto: nothing to protect without a hit
    cache = count_prefix_cache(llm)
    first, second = drive(llm, [prompt], greedy(10)), drive(llm, [prompt], greedy(10))
    assert (cache["queries"], cache["hits"]) == (2 * len(prompt), 0) and cached_blocks(llm) == 0
    want = generate(model, prompt, KVPolicyConfig(**settings), 10).tokens
    assert one(first) == want and one(second) == want


def test_auto_keeps_raw_the_prefix_an_earlier_prompt_began_with(tiny_llama_dir, model, ids, release):
    """`auto`: the first sender of a system prompt compresses it all and caches nothing; the second sees that
    an earlier, different prompt began the same way, keeps that prefix raw and caches it; the third hits it."""
    system = ids(40, 1, SHARED)
    prompts = [system + ids(20, 10 + i, 150 + 10 * i) for i in range(3)]
    settings = {"policy": "snapkv", "budget": 64}
    llm = make_llm(tiny_llama_dir, settings)  # cache_prefix auto
    cache = count_prefix_cache(llm)
    seen = record_protected(llm)
    runs = []
    for i, prompt in enumerate(prompts):
        runs.append(drive(llm, [prompt], greedy(10)))
        assert cached_blocks(llm) == [0, SHARED // BLOCK, SHARED // BLOCK][i]
    assert (cache["queries"], cache["hits"]) == (sum(map(len, prompts)), SHARED)
    assert list(seen.values()) == [0, SHARED, SHARED]
    config = KVPolicyConfig(**settings)
    for run, prompt, protected in zip(runs, prompts, [0, SHARED, SHARED]):
        assert one(run) == generate(model, prompt, config, 10, protected=protected).tokens


def test_cache_prefix_makes_the_protected_part_a_hit(tiny_llama_dir, model, ids, release):
    prompt = ids(60, 4, 480)
    settings = {"policy": "snapkv", "budget": 64, "cache_prefix": 200}  # rounded down to 192: six blocks
    llm = make_llm(tiny_llama_dir, settings)
    cache = count_prefix_cache(llm)
    first, second = drive(llm, [prompt], greedy(10)), drive(llm, [prompt], greedy(10))
    assert (cache["queries"], cache["hits"]) == (2 * len(prompt), 192) and cached_blocks(llm) == 192 // BLOCK
    want = generate(model, prompt, KVPolicyConfig(**settings), 10, protected=192).tokens
    assert one(first) == want and one(second) == want


def test_auto_protects_exactly_what_a_full_request_left_in_the_cache(tiny_llama_dir, model, ids, release):
    system = ids(40, 1, SHARED)
    full, compressed = system + ids(20, 5, 100), system + ids(20, 6, 200)
    settings = {"policy": "snapkv", "budget": 64}
    llm = make_llm(tiny_llama_dir, settings)
    cache = count_prefix_cache(llm)
    a = drive(llm, [full], greedy(8, {"policy": "full"}))  # evicts nothing: every full block enters the cache
    b = drive(llm, [compressed], greedy(8))
    assert cache["hits"] == SHARED
    # The full request's blocks (prompt and 7 computed output tokens); the compressed one's hit adds none.
    assert cached_blocks(llm) == (len(full) + 7) // BLOCK
    assert one(a) == generate(model, full, KVPolicyConfig(policy="full"), 8).tokens
    assert one(b) == generate(model, compressed, KVPolicyConfig(**settings), 8, protected=SHARED).tokens


def record_protected(llm) -> dict[str, int]:
    """Each request's protected prefix as the scheduler fixes it (its id as vLLM spells it inside)."""
    protection = scheduler_of(llm).kv_cache_manager.kvcomp_protection
    seen: dict[str, int] = {}
    settle = protection.settle

    def recording(request_id, allocated):
        settle(request_id, allocated)
        if allocated:
            seen[request_id] = protection.fixed[request_id]

    protection.settle = recording
    return seen


@pytest.mark.parametrize("arch, blocks, max_model_len, out", [("llama", 64, 768, 80), ("gemma3", 64, 896, 200)])
def test_mixed_batch_with_chunked_prefill_preemption_and_n2_leaks_nothing(arch, blocks, max_model_len, out, request,
                                                                          release):
    """Also on the tiny Gemma 3, where a resumed request's hit is searched again in both kinds of layer."""
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    model = request.getfixturevalue("model" if arch == "llama" else "gemma3")
    ids = request.getfixturevalue("ids" if arch == "llama" else "gemma3_ids")
    server = {"policy": "pyramid", "budget": 0.25, "tiers": 2, "cache_prefix": SHARED}
    system = ids(40, 1, SHARED)
    own = [ids(30, 10 + i, 120 + 40 * i) for i in range(6)]
    requests = [  # (per-request settings, n); every compressing one protects the shared prompt but one
        (None, 1),
        ({"policy": "full"}, 1),
        ({"policy": "snapkv", "budget": 64}, 2),
        ({"policy": "streaming", "budget": 64}, 1),
        ({"budget": 96}, 1),
        ({"policy": "snapkv", "budget": 48, "cache_prefix": "auto"}, 1),
    ]
    prompts = [system + o for o in own]
    llm = make_llm(model_dir, server, num_gpu_blocks_override=blocks, max_num_batched_tokens=128, max_num_seqs=8,
                   max_model_len=max_model_len)
    cache = count_prefix_cache(llm)
    seen = record_protected(llm)
    run = drive(llm, prompts, [greedy(out, kvcomp, n) for kvcomp, n in requests])
    assert run.preemptions > 0
    assert cache["hits"] > 0
    base = KVPolicyConfig(**server)
    for (req_id, samples), prompt, (kvcomp, n) in zip(run.samples.items(), prompts, requests):
        config = request_config(base, kvcomp)
        protected = {p for r, p in seen.items() if external_id(r, list(run.samples)) == req_id}
        if config.cache_prefix == SHARED:
            assert protected == {SHARED}, req_id
        want = generate(model, prompt, config, out, protected=max(protected)).tokens
        assert samples == [want] * n, (req_id, config.describe(), protected)
    scheduler = scheduler_of(llm)
    assert run.free_blocks_after == run.free_blocks_before
    assert all(not m.req_to_blocks for m in scheduler.kv_cache_manager.coordinator.single_type_managers)
    assert scheduler.kv_cache_manager.kvcomp_protection.fixed == {}



HYBRID_POLICIES = [dict(policy="snapkv", budget=64), dict(policy="pyramid", budget=0.2, tiers=2),
                   dict(policy="pod", recent=48, group_size=2)]


@pytest.fixture(scope="module")
def gemma3(tiny_gemma3_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def gemma3_ids(tiny_gemma3_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma3_dir)
    return lambda sentences, seed, length: tokenizer(" ".join(synthetic_text(sentences, seed))).input_ids[:length]


@pytest.mark.parametrize("settings", HYBRID_POLICIES, ids=lambda s: s["policy"])
def test_hybrid_model_second_request_hits_the_shared_system_prompt(tiny_gemma3_dir, gemma3, gemma3_ids, settings,
                                                                   release):
    """Tiny Gemma 3 (sliding-window layers beside the compressed full-attention ones): the shared prompt is
    a hit in both kinds of layer, and both requests answer as the oracle with it protected."""
    system = gemma3_ids(40, 1, SHARED)
    first, second = system + gemma3_ids(20, 2, 150), system + gemma3_ids(20, 3, 170)
    llm = make_llm(tiny_gemma3_dir, {**settings, "cache_prefix": SHARED})
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is True
    cache = count_prefix_cache(llm)
    config = KVPolicyConfig(**settings)
    a = drive(llm, [first], greedy(10))
    assert (cache["queries"], cache["hits"]) == (len(first), 0)
    b = drive(llm, [second], greedy(10))
    assert (cache["queries"], cache["hits"]) == (len(first) + len(second), SHARED)
    assert one(a) == generate(gemma3, first, config, 10, protected=SHARED).tokens
    assert one(b) == generate(gemma3, second, config, 10, protected=SHARED).tokens
    assert a.free_blocks_after == a.free_blocks_before and b.free_blocks_after == b.free_blocks_before


def test_hybrid_model_cache_prefix_makes_the_protected_part_a_hit(tiny_gemma3_dir, gemma3, gemma3_ids, release):
    prompt = gemma3_ids(60, 4, 480)
    settings = {"policy": "snapkv", "budget": 64, "cache_prefix": 200}  # rounded down to 192: six blocks
    llm = make_llm(tiny_gemma3_dir, settings)
    cache = count_prefix_cache(llm)
    first, second = drive(llm, [prompt], greedy(10)), drive(llm, [prompt], greedy(10))
    assert (cache["queries"], cache["hits"]) == (2 * len(prompt), 192)
    want = generate(gemma3, prompt, KVPolicyConfig(**settings), 10, protected=192).tokens
    assert one(first) == want and one(second) == want


def test_hybrid_model_resumed_request_hit_is_searched_again_up_to_its_protected_prefix(tiny_gemma3_dir, gemma3_ids,
                                                                                      release):
    """A resumed request whose prompt a later request cached whole hits only its protected prefix, and in
    the sliding-window layers that hit holds the window's blocks before the protected prefix's end (cutting
    the longer hit's list would leave null blocks there: those layers keep blocks only near each junction)."""
    from vllm import SamplingParams
    from vllm.v1.request import Request

    prompt = gemma3_ids(60, 4, 480)
    llm = make_llm(tiny_gemma3_dir, {"policy": "snapkv", "budget": 64, "cache_prefix": 200})  # 192 protected
    drive(llm, [prompt], greedy(4))  # caches its protected prefix, the sliding-window blocks before 192 too
    drive(llm, [prompt], greedy(4, {"policy": "full"}))  # evicts nothing: its prompt enters the cache whole
    core = llm.llm_engine.engine_core.engine_core
    manager = core.scheduler.kv_cache_manager
    resumed = Request("resumed", prompt, SamplingParams(max_tokens=4), None, block_hasher=core.request_block_hasher)
    assert manager.get_computed_blocks(resumed)[1] == 15 * BLOCK - BLOCK  # a new request hits all but the last block
    manager.kvcomp_protection.fixed["resumed"] = 192
    blocks, hit, _ = manager.get_computed_blocks(resumed)
    assert hit == 192
    for group, single in zip(blocks.blocks, manager.coordinator.single_type_managers):
        assert len(group) == 192 // BLOCK
        window = getattr(single.kv_cache_spec, "sliding_window", None)
        needed = group if window is None else group[-cdiv(window, BLOCK):]
        assert not any(block.is_null for block in needed), type(single).__name__


def test_seen_prefixes_count_only_other_prompts_and_keep_the_newest_hashes():
    from kvcomp_vllm.vllm_integration.prefix_cache import SeenPrefixes

    seen = SeenPrefixes(limit=4)
    seen.add(["a", "b", "c"], "first")
    assert seen.prefix_blocks(["a", "b", "x"], "second") == 2
    assert seen.prefix_blocks(["a", "b", "c"], "first") == 0  # the same prompt again is no other sender
    seen.add(["a", "b", "c"], "first")
    assert seen.prefix_blocks(["a", "b", "c"], "first") == 0
    seen.add(["a", "d", "e"], "third")  # "b" is now the oldest and goes
    assert list(seen.owners) == ["c", "a", "d", "e"]
    assert seen.prefix_blocks(["a", "b"], "second") == 1 and seen.prefix_blocks(["a", "b"], "first") == 1


def test_a_clients_protected_prefix_is_dropped_at_admission():
    from vllm import SamplingParams

    from kvcomp_vllm.vllm_integration.settings import PROTECTED_KEY, fixed_protected, resolve, set_protected

    params = SamplingParams(extra_args={PROTECTED_KEY: 4000, "other": 1})
    resolve(params, None)
    assert params.extra_args == {"other": 1} and fixed_protected(params) is None
    set_protected(params, 320)
    assert fixed_protected(params) == 320 and params.extra_args["other"] == 1
