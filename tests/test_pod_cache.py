"""PoD's member layout on paged caches against the dense semantics of the reference."""

import pytest
import torch

from kvcomp_vllm.attention import causal_attention
from kvcomp_vllm.paged import read_tokens, row_major, scatter_
from kvcomp_vllm.pod_cache import member_attention, pack_member_

BS, D, HKV, H = 8, 4, 2, 4
TRANSPOSED = torch.arange(BS * D).view(D, BS).t()


def paged(dense, blocks, index):
    region = torch.full((12, HKV, BS * D), float("nan"), dtype=dense.dtype)
    scatter_(region, blocks, torch.arange(dense.shape[1]).expand(HKV, -1), index, dense)
    return region


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
    key, value = (paged(k, blocks, TRANSPOSED), TRANSPOSED), (paged(v, blocks, row_major(BS, D)), row_major(BS, D))
    owner = (paged(owner_k, owner_blocks, row_major(BS, D)), row_major(BS, D))
    pack_member_(key, value, blocks, proximal, distant, torch.arange(n, n + later))
    slots = proximal.numel() + -(-num_distant // 2)
    assert torch.equal(read_tokens(key[0], blocks, proximal.numel(), TRANSPOSED), k[:, proximal])
    query = torch.randn(q_len, H, D, generator=g, dtype=torch.float64)
    got = member_attention(query, key, value, blocks, owner, owner_blocks, proximal.numel(), distant, later, 0.5)
    # Reference semantics: the member's own keys, with distant positions replaced by the owner's.
    dense_k = k.clone()
    dense_k[:, distant] = owner_k[:, distant]
    want = causal_attention(query.transpose(0, 1)[None], dense_k[None], v[None], 0.5)[0]
    assert torch.allclose(got, want, atol=1e-12)
    assert slots + later <= len(blocks) * BS
