"""PoD's member layout on paged caches against the dense semantics of the reference."""

import pytest
import torch

from kvcomp_vllm.attention import causal_attention
from kvcomp_vllm.paged import read_tokens, scatter_, span
from kvcomp_vllm.pod_cache import member_attention, pack_member_

BS, D, HKV, H = 8, 4, 2, 4


def paged(dense, blocks, dim_major=False):
    cache = torch.full((12, HKV, D, BS) if dim_major else (12, HKV, BS, D), float("nan"), dtype=dense.dtype)
    cache = cache.transpose(2, 3) if dim_major else cache
    scatter_(cache, blocks, span(0, dense.shape[1], HKV), dense)
    return cache


@pytest.mark.parametrize("num_distant", [20, 21])
@pytest.mark.parametrize("q_len", [1, 3])
def test_member_attention_equals_dense_attention_with_owner_keys(num_distant, q_len):
    g = torch.Generator().manual_seed(num_distant + q_len)
    sink, recent, later = 2, 5, 4
    n = sink + num_distant + recent
    k, v, owner_k = (torch.randn(HKV, n + later, D, generator=g, dtype=torch.float64) for _ in range(3))
    positions = torch.arange(n)
    proximal = positions[(positions < sink) | (positions >= n - recent)]
    distant = positions[sink : n - recent]
    blocks, owner_blocks = torch.tensor([7, 2, 9, 0, 4, 11, 5, 1]), torch.tensor([3, 6, 8, 10, 1, 0, 2, 4])
    key_cache, value_cache, owner = paged(k, blocks, dim_major=True), paged(v, blocks), paged(owner_k, owner_blocks)
    pack_member_(key_cache, value_cache, blocks, proximal, distant, torch.arange(n, n + later))
    assert torch.equal(read_tokens(key_cache, blocks, proximal.numel()), k[:, proximal])
    query = torch.randn(q_len, H, D, generator=g, dtype=torch.float64)
    got = member_attention(query, key_cache, value_cache, blocks, owner, owner_blocks, proximal.numel(), distant, later, 0.5)
    # Reference semantics: the member's own keys, with distant positions replaced by the owner's.
    dense_k = k.clone()
    dense_k[:, distant] = owner_k[:, distant]
    want = causal_attention(query.transpose(0, 1)[None], dense_k[None], v[None], 0.5)[0]
    assert torch.allclose(got, want, atol=1e-12)
