"""Compacted cache layouts (plain and PoD member) on paged caches against the dense semantics of the
reference generator, through the torch references of the kernels (the CPU path)."""

import pytest
import torch

from kvcomp_kernels import move_tokens_reference_, paged_decode_reference
from kvcomp_kernels.attention import causal_attention
from kvcomp_kernels.paged_torch import read_tokens, scatter_, span
from kvcomp_vllm.cache_layout import MemberLayout, move_sources
from kvcomp_vllm.policies import LayerPlan, apply_plan
from kvcomp_vllm.testing.caches import empty_cache

BS, D, HKV, H = 8, 4, 2, 4


# (key, value) storage orders: vLLM's CPU `vec` packing, and its `amx` packing (tiled views)
PACKINGS = [("dim-major", "token-major"), ("amx-key", "amx-value")]


def paged(dense, blocks, layout="token-major"):
    """A NaN-filled cache holding `dense` `[heads, n, d]` at positions 0..n-1, stored as `layout`."""
    cache = empty_cache(12, HKV, BS, D, layout, dense.dtype)
    scatter_(cache, blocks, span(0, dense.shape[1], HKV), dense)
    return cache


def compact(key_cache, value_cache, blocks, plan, later):
    sources = move_sources(plan, later)
    lengths = torch.tensor([sources.shape[-1]], dtype=torch.int32)
    move_tokens_reference_(key_cache, value_cache, blocks[None], sources[None], lengths)
    return sources.shape[-1]


@pytest.mark.parametrize("key_layout,value_layout", PACKINGS)
def test_plain_compaction_moves_each_heads_kept_tokens_then_later_tokens_to_the_front(key_layout, value_layout):
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(HKV, 45, D, generator=g), torch.randn(HKV, 45, D, generator=g)
    blocks = torch.tensor([2, 6, 1, 4, 0, 3])
    key_cache, value_cache = paged(k, blocks, key_layout), paged(v, blocks, value_layout)
    keep = torch.stack([torch.randperm(40, generator=g)[:20].sort().values for _ in range(HKV)])
    plan = LayerPlan(keep=keep)
    slots = compact(key_cache, value_cache, blocks, plan, torch.arange(40, 45))
    want_k, want_v = apply_plan(plan, k[:, :40], v[:, :40])
    assert slots == 25
    assert torch.equal(read_tokens(key_cache, blocks, 25), torch.cat([want_k, k[:, 40:]], dim=1))
    assert torch.equal(read_tokens(value_cache, blocks, 25), torch.cat([want_v, v[:, 40:]], dim=1))


@pytest.mark.parametrize("key_layout,value_layout", PACKINGS)
@pytest.mark.parametrize("num_distant", [20, 21])
@pytest.mark.parametrize("q_len", [1, 3])
def test_member_decode_equals_dense_attention_with_owner_keys(num_distant, q_len, key_layout, value_layout):
    g = torch.Generator().manual_seed(num_distant + q_len)
    sink, recent, later = 2, 5, 4
    n = sink + num_distant + recent
    k, v, owner_k = (torch.randn(HKV, n + later, D, generator=g, dtype=torch.float64) for _ in range(3))
    positions = torch.arange(n)
    proximal = torch.cat([positions[:sink], positions[n - recent :]])
    plan = LayerPlan(keep=proximal.expand(HKV, -1), key_owner=0, shared=positions[sink : n - recent])
    blocks, owner_blocks = torch.tensor([7, 2, 9, 0, 4, 11, 5, 1]), torch.tensor([3, 6, 8, 10, 1, 0, 2, 4])
    key_cache, value_cache = paged(k, blocks, key_layout), paged(v, blocks, value_layout)
    owner = paged(owner_k, owner_blocks, key_layout)
    slots = compact(key_cache, value_cache, blocks, plan, torch.arange(n, n + later))
    assert slots == proximal.numel() + -(-num_distant // 2) + later
    assert torch.equal(read_tokens(key_cache, blocks, proximal.numel()), k[:, proximal])
    layout = MemberLayout(owner=0, proximal=proximal.numel(), distant_start=sink, distant=num_distant)
    query = torch.randn(q_len, H, D, generator=g, dtype=torch.float64)
    rows = torch.tensor([layout.decode_row(later - q_len + 1 + t) for t in range(q_len)], dtype=torch.int32)
    got = paged_decode_reference(query, key_cache, value_cache, blocks.expand(q_len, -1), rows, int(rows[:, 0].max()),
                                 0.5, owner_key_cache=owner, owner_block_tables=owner_blocks.expand(q_len, -1))
    # Reference semantics: the member's own keys, with distant positions replaced by the owner's.
    dense_k, dense_v = apply_plan(plan, k, v, owner_keys=owner_k)
    want = causal_attention(query.transpose(0, 1)[None], dense_k[None], dense_v[None], 0.5)[0]
    assert torch.allclose(got, want, atol=1e-12)
