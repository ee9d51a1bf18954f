"""kvcomp's metadata builders never take another KV cache group's metadata for a compressed group."""

from __future__ import annotations

import torch

from kvcomp_vllm.vllm_integration.backend import ShiftedSeqLens
from kvcomp_vllm.vllm_integration.compat import FullAttentionSpec
from kvcomp_vllm.vllm_integration.kv_spec import CompressedAttentionSpec


class ReusingBuilder:
    """Stands for vLLM's FlashAttention builder, which lets the runner reuse its metadata across groups."""

    supports_update_block_table = True

    def __init__(self, kv_cache_spec):
        self.kv_cache_spec = kv_cache_spec


class Builder(ShiftedSeqLens, ReusingBuilder):
    pass


def test_a_compressed_group_builds_its_own_metadata_and_others_may_reuse():
    # Reused metadata would point at the other builder's shifted seq_lens buffer, while this group's full
    # CUDA graph reads this builder's: on the H200 a hybrid model's two snapkv groups decoded garbage.
    shape = dict(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    assert Builder(CompressedAttentionSpec(**shape)).supports_update_block_table is False
    assert Builder(FullAttentionSpec(**shape)).supports_update_block_table is True
