"""kvcomp's compaction stays inside the memory vLLM planned at the configured utilisation (CUDA).

vLLM sizes the KV pool from the peak of a profiling forward; kvcomp holds its compaction scratch
bound through that forward (`vllm_integration.scratch`). Here the caching allocator is capped at the
configured utilisation, so any allocation vLLM did not plan for fails: one layer's move of a
108000-token prompt needs about 1.8 GB, far more than the slack vLLM leaves (its non-torch memory).
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

UTILISATION = 0.9
MAX_LEN = 131072


def wide_llama(path):
    """A 2-layer Llama with 32 KV heads of 128 (dummy weights): a large cache per token, small weights."""
    path.mkdir(parents=True, exist_ok=True)
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=1024,
                  num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                  vocab_size=2048, max_position_embeddings=MAX_LEN, rms_norm_eps=1e-5, rope_theta=500000.0,
                  torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_compaction_of_the_longest_prompts_fits_the_memory_vllm_planned(tmp_path):
    from vllm import LLM, SamplingParams

    from kvcomp_vllm.testing.engine import drive

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(UTILISATION + 0.004)  # 0.4% of slack: 0.56 GB on an H200
    try:
        llm = LLM(model=str(wide_llama(tmp_path / "wide")), load_format="dummy", skip_tokenizer_init=True,
                  dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=UTILISATION, max_model_len=MAX_LEN,
                  max_num_batched_tokens=8192, additional_config={"kvcomp": dict(policy="snapkv", budget=0.9)})
        generator = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 2048, (120000,), generator=generator).tolist() for _ in range(2)]
        params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, detokenize=False)
        run = drive(llm, prompts, params)
        peak = torch.cuda.max_memory_reserved()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(f"peak reserved {peak / 2**30:.2f} GiB of {total / 2**30:.2f} GiB (cap {UTILISATION + 0.004})")
    assert set(run.finish_reasons.values()) == {"length"}  # an out-of-memory compaction finishes "error"
    assert run.free_blocks_after == run.free_blocks_before
