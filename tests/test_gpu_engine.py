"""Each policy on vLLM's FlashAttention (CUDA, vLLM 0.26) against the oracle generator, float16.

Skipped without a GPU. Both sides run in float16 on the same GPU, where FlashAttention and the
oracle's eager attention round differently (even `full` can flip a near-tied greedy token), so
the stated tolerance is: fed vLLM's tokens, the oracle rates every one of them within
`LOGPROB_TOLERANCE` of its own best token at that step.
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.testing.oracle import largest_logprob_gaps
from kvcomp_vllm.testing import synthetic_text
from kvcomp_vllm.testing.engine import drive

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

POLICIES = [
    dict(policy="full"),
    dict(policy="streaming", budget=64),
    dict(policy="snapkv", budget=96),
    dict(policy="pyramid", budget=0.12),
    dict(policy="windowkv", budget=100, group_size=2),
    dict(policy="windowkv-per-head", budget=100, group_size=2),
    dict(policy="pod", recent=48, group_size=2),
    dict(policy="snapkv", budget=96, prefill_chunk=128),  # compression rounds while the prompt is read
    dict(policy="pyramid", budget=0.12, prefill_chunk=128),
]
NEW_TOKENS = 16
LOGPROB_TOLERANCE = 0.05
# With prefill_chunk the 1034-token prompt goes through 8 selection rounds instead of one, each a top-k
# over float16 scores that FlashAttention and eager attention round differently, so near-tied choices
# flip more often (measured on the H100: largest gaps 0.094 snapkv, 0.156 pyramid; on the H200 against the
# oracle, with the short last chunk keeping its window whole: 0.094 and 0.064). The exact check of
# chunked rounds is the float32 CPU test (tests/test_prefill_chunk.py: identical tokens).
CHUNKED_LOGPROB_TOLERANCE = 0.25


def setting_id(settings: dict) -> str:
    return settings["policy"] + ("-chunked" if "prefill_chunk" in settings else "")


def gaps_on_flash_attention(model_dir, settings: dict, dtype: torch.dtype, eager: bool):
    """Three prompts (one under the budget) through vLLM on FlashAttention at `dtype`; per prompt the largest
    logprob gap to the oracle's best token, and the engine run. The engine is dropped before returning."""
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tokenizer(" ".join(synthetic_text(n, seed))).input_ids for n, seed in [(40, 1), (3, 2), (60, 3)]]
    llm = LLM(model=str(model_dir), dtype=str(dtype).removeprefix("torch."), enforce_eager=eager,
              gpu_memory_utilization=0.05, max_model_len=4096, block_size=32, additional_config={"kvcomp": settings})
    run = drive(llm, prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))
    del llm
    gc.collect()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda()
    return largest_logprob_gaps(model, prompts, list(run.tokens.values()), KVPolicyConfig(**settings), NEW_TOKENS), run


@pytest.mark.parametrize("settings", POLICIES, ids=setting_id)
def test_policy_on_flash_attention_matches_the_oracle(tiny_llama_dir, settings):
    worst, run = gaps_on_flash_attention(tiny_llama_dir, settings, torch.float16, eager=True)
    print(settings["policy"], "largest logprob gap to the oracle's best token, per prompt:", worst)
    assert max(worst) <= (CHUNKED_LOGPROB_TOLERANCE if "prefill_chunk" in settings else LOGPROB_TOLERANCE)
    assert run.free_blocks_after == run.free_blocks_before


def test_engine_start_compiles_the_kernels_so_requests_compile_nothing(tiny_llama_dir):
    """The KV-cache hook warms the Triton kernels up; prompts of any length then reuse them (a first-call
    compile costs about a second inside a prefill)."""
    from vllm import LLM, SamplingParams

    from kvcomp_kernels.warmup import compiled_variants, kernels

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    llm = LLM(model=str(tiny_llama_dir), dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.05,
              max_model_len=4096, block_size=32, additional_config={"kvcomp": dict(policy="snapkv", budget=0.3)})
    compiled = [compiled_variants(kernel) for kernel in kernels()]
    assert min(compiled) >= 1
    prompts = [tokenizer(" ".join(synthetic_text(n, seed))).input_ids for n, seed in [(40, 1), (7, 2), (95, 3), (61, 4)]]
    assert len({len(p) % 16 for p in prompts}) > 1
    drive(llm, prompts, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert [compiled_variants(kernel) for kernel in kernels()] == compiled


@pytest.mark.parametrize("settings", POLICIES[2:4], ids=lambda s: s["policy"])
def test_decode_in_full_cuda_graphs_equals_piecewise(tiny_llama_dir, settings):
    """Decode-only steps replay full CUDA graphs over the compacted cache (shifted `seq_lens` in the
    builder's own buffer); they must give exactly the tokens of graphs that leave attention eager.

    Both runs compile the model the same way, so prefill and selection are identical; the oracle
    test above runs eagerly because compiled and eager float16 layers differ enough to flip near-tied
    selections of the tiny random model.
    """
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = [tokenizer(" ".join(synthetic_text(n, seed))).input_ids for n, seed in [(40, 1), (3, 2), (60, 3)]]
    tokens = {}
    for mode in ("PIECEWISE", "FULL_AND_PIECEWISE"):
        llm = LLM(model=str(tiny_llama_dir), dtype="float16", gpu_memory_utilization=0.05, max_model_len=4096,
                  block_size=32, additional_config={"kvcomp": settings}, compilation_config={"cudagraph_mode": mode})
        assert llm.llm_engine.vllm_config.compilation_config.cudagraph_mode.name == mode
        tokens[mode] = drive(llm, prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)).tokens
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    assert tokens["FULL_AND_PIECEWISE"] == tokens["PIECEWISE"]


def test_pod_decodes_in_full_cuda_graphs_as_the_oracle(tiny_llama_dir, monkeypatch):
    """PoD's member layers decode inside full CUDA graphs: `paged_decode` reads their rows' layouts from
    the runner's member-decode buffers, filled before each replay, and vLLM's attention over them is cut to
    one key. PoD selects nothing, so compiled float16 layers stay within the eager oracle tolerance (an
    exact comparison with piecewise graphs would not hold: a padded graph batch splits keys differently)."""
    from kvcomp_vllm.vllm_integration import backend

    captured = []
    original = backend.CompressingAttention._decode_members

    def recording(self, *args, **kwargs):
        captured.append(backend.full_cudagraph_capture())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(backend.CompressingAttention, "_decode_members", recording)
    worst, run = gaps_on_flash_attention(tiny_llama_dir, POLICIES[6], torch.float16, eager=False)
    print("pod in full CUDA graphs, largest logprob gap to the oracle's best token, per prompt:", worst)
    assert True in captured  # member decode was captured into full graphs, which decode steps replay
    assert max(worst) <= LOGPROB_TOLERANCE
    assert run.free_blocks_after == run.free_blocks_before


@pytest.mark.parametrize(
    "settings,num_blocks",
    [(dict(policy="snapkv", budget=300), 24), (dict(policy="pod", recent=48, group_size=2), 48)],
    ids=["snapkv", "pod"],
)
def test_async_scheduling_gives_the_tokens_of_sync_scheduling_under_preemption(tiny_llama_dir, settings, num_blocks):
    """With async scheduling the scheduler frees a compacted request's blocks (and hands them to other
    requests) while the compaction that reads them may still be queued on the GPU; stream order must make
    that safe. A pool too small for the batch forces block reuse and preemption; with fixed-length outputs
    both modes schedule the same batches, so their tokens must be equal."""
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = [tokenizer(" ".join(synthetic_text(40, 30 + i))).input_ids[:400] for i in range(4)]
    runs = {}
    for mode in (False, True):
        llm = LLM(model=str(tiny_llama_dir), dtype="float16", enforce_eager=True, gpu_memory_utilization=0.05,
                  max_model_len=512, block_size=32, num_gpu_blocks_override=num_blocks, async_scheduling=mode,
                  additional_config={"kvcomp": settings})
        assert llm.llm_engine.vllm_config.scheduler_config.async_scheduling is mode
        from kvcomp_vllm.testing.engine import scheduler_of
        from kvcomp_vllm.vllm_integration.scheduler import KVCompAsyncScheduler, KVCompScheduler

        assert type(scheduler_of(llm)) is (KVCompAsyncScheduler if mode else KVCompScheduler)
        runs[mode] = drive(llm, prompts, SamplingParams(max_tokens=96, temperature=0, ignore_eos=True))
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    assert runs[True].preemptions > 0
    assert runs[True].tokens == runs[False].tokens
    assert runs[True].free_blocks_after == runs[True].free_blocks_before


def test_window_queries_split_across_chunks_wait_on_the_host(tiny_llama_dir, monkeypatch):
    """With 128-token chunks a 906-token prompt's observation window starts in one chunk and ends in
    the next: the first part waits in host memory (outside the pool and the profiled scratch) and
    scoring must still see the whole window, as the oracle does."""
    from vllm import LLM, SamplingParams

    from kvcomp_vllm.vllm_integration.backend import CompressingAttention

    stashed = []
    original = CompressingAttention._stash_window

    def recording(self, step, span, layer_idx, query):
        original(self, step, span, layer_idx, query)
        stashed.extend(part.device.type for part in step.state.requests[span.req_id].window_queries.get(layer_idx, ()))

    monkeypatch.setattr(CompressingAttention, "_stash_window", recording)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = [tokenizer(" ".join(synthetic_text(60, 20))).input_ids[: 7 * 128 + 10]]
    settings = dict(policy="snapkv", budget=96)
    llm = LLM(model=str(tiny_llama_dir), dtype="float16", enforce_eager=True, gpu_memory_utilization=0.05,
              max_model_len=4096, block_size=32, max_num_batched_tokens=128, additional_config={"kvcomp": settings})
    run = drive(llm, prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))
    assert stashed and set(stashed) == {"cpu"}
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16).cuda()
    worst = largest_logprob_gaps(model, prompts, list(run.tokens.values()), KVPolicyConfig(**settings), NEW_TOKENS)
    print("largest logprob gap to the oracle's best token, window split across chunks:", worst)
    assert max(worst) <= CHUNKED_LOGPROB_TOLERANCE


# Gemma 3 runs in bfloat16 (its activations outgrow float16's range), which rounds coarser than float16;
# 0.25 held for all eight cases on the H200 (dc0957e); the gaps of passing runs were not recorded.
HYBRID_LOGPROB_TOLERANCE = 0.25


@pytest.mark.parametrize("settings", [dict(policy="snapkv", budget=96), dict(policy="pyramid", budget=0.12),
                                      dict(policy="windowkv", budget=100, group_size=2),
                                      dict(policy="pod", recent=48, group_size=2)], ids=setting_id)
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "cuda-graphs"])
def test_hybrid_model_on_flash_attention_matches_the_oracle(tiny_gemma3_dir, settings, eager):
    """The tiny Gemma 3: FlashAttention's sliding-window layers untouched, the full-attention ones compressed."""
    worst, run = gaps_on_flash_attention(tiny_gemma3_dir, settings, torch.bfloat16, eager)
    print("hybrid", settings["policy"], "largest logprob gap to the oracle's best token, per prompt:", worst)
    assert max(worst) <= HYBRID_LOGPROB_TOLERANCE
    assert run.free_blocks_after == run.free_blocks_before
