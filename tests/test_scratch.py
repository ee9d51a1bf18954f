"""The compaction scratch bound that kvcomp holds through vLLM's memory profiling."""

from __future__ import annotations

from kvcomp_vllm.vllm_integration.scratch import ScratchShape, scratch_bytes


def test_scratch_bound_of_a_llama_8b_worker_at_128k():
    shape = ScratchShape(max_model_len=131072, max_num_batched_tokens=8192, num_heads=32, num_kv_heads=8,
                         head_dim=128, dtype_bytes=2)
    per_token = 2 * 8 * 128 * 2 + 2 * 8 * 8 + 8 * 16 + 16 * 8 * 4  # move buffer, codes, indices, scores
    assert per_token == 4864
    assert scratch_bytes(shape) == 131072 * 4864 + 8192 * 32 * 128 * 6  # 608 MiB + 192 MiB


def test_scratch_grows_with_the_context_and_the_cache_per_token_only():
    base = dict(max_model_len=4096, max_num_batched_tokens=2048, num_heads=8, num_kv_heads=2, head_dim=64, dtype_bytes=2)
    small = scratch_bytes(ScratchShape(**base))
    assert scratch_bytes(ScratchShape(**{**base, "max_model_len": 8192})) - small == 4096 * (2 * 2 * 64 * 2 + 2 * 2 * 8 + 2 * 16 + 16 * 2 * 4)
    assert scratch_bytes(ScratchShape(**{**base, "dtype_bytes": 4})) > small
