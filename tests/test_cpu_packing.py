"""kvcomp's views of vLLM's CPU KV cache against vLLM's own writer, for every packing it picks.

vLLM 0.32 packs a CPU block per ISA: `vec`/`vec16` (keys dim-major), `amx` (bfloat16 on AMX CPUs:
keys as 16-token rows of dimension pairs, values as 16-dimension rows of token pairs). The packing
op is plain C++, so every layout is checked on any x86 host; `amx` serving itself is tested in
test_vllm_engine where the host has AMX.
"""

import pytest
import torch

from kvcomp_vllm.paged import gather, scatter_, span
from kvcomp_vllm.vllm_integration.compat import cpu_kv_views

pytestmark = pytest.mark.vllm

CASES = [
    (isa, dtype, block_size, head_dim)
    for isa in ("vec", "vec16", "amx")
    for dtype in (torch.float32, torch.bfloat16)
    for block_size, head_dim in ((32, 64), (64, 32), (32, 128))
]


def vllm_write(isa, dtype, keys, values, slots, num_blocks, block_size):
    """A zeroed layer cache `[blocks, kv_heads, block_size, 2 * head_dim]` written by vLLM's CPU op."""
    from vllm import _custom_ops as ops

    _, heads, head_dim = keys.shape
    kv_cache = torch.zeros(num_blocks, heads, block_size, 2 * head_dim, dtype=dtype)
    key_cache, value_cache = kv_cache.view(num_blocks, heads, 2 * block_size, head_dim).chunk(2, dim=2)
    try:
        ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa, k_scale=1.0, v_scale=1.0,
                                       kv_cache_dtype="auto")
    except RuntimeError as err:  # an ISA this vLLM build or host does not pack
        pytest.skip(f"vLLM cannot pack ISA {isa} here: {err}")
    return kv_cache


@pytest.mark.parametrize("isa,dtype,block_size,head_dim", CASES, ids=str)
def test_views_read_and_write_exactly_what_vllm_packs(isa, dtype, block_size, head_dim):
    g = torch.Generator().manual_seed(block_size + head_dim)
    heads, num_blocks, tokens = 2, 6, 3 * block_size + 5
    keys = torch.randn(tokens, heads, head_dim, generator=g).to(dtype)
    values = torch.randn(tokens, heads, head_dim, generator=g).to(dtype)
    blocks = torch.tensor([4, 0, 5, 2])  # the request's block table: position p in blocks[p // block_size]
    positions = torch.arange(tokens)
    slots = blocks[positions // block_size] * block_size + positions % block_size
    written = vllm_write(isa, dtype, keys, values, slots, num_blocks, block_size)

    key_view, value_view = cpu_kv_views(written, isa)
    where = span(0, tokens, heads)
    assert torch.equal(gather(key_view, blocks, where), keys.transpose(0, 1))
    assert torch.equal(gather(value_view, blocks, where), values.transpose(0, 1))

    ours = torch.zeros_like(written)
    key_view, value_view = cpu_kv_views(ours, isa)
    scatter_(key_view, blocks, where, keys.transpose(0, 1))
    scatter_(value_view, blocks, where, values.transpose(0, 1))
    assert torch.equal(ours, written)  # byte for byte where vLLM's kernels will read them
