"""Paged-cache ops against the dense semantics they implement, for row-major and packed blocks."""

import pytest
import torch

from kvcomp_vllm.paged import compact_, read_tokens, row_major

BS, D = 8, 4
TRANSPOSED = torch.arange(BS * D).view(D, BS).t()  # a block stored dim-major, as vLLM's CPU keys are


def paged(dense, blocks, num_blocks, index):
    """Scatter dense `[heads, n, d]` into a fresh flat-region cache through `blocks` and `index`."""
    heads, n, d = dense.shape
    region = torch.full((num_blocks, heads, BS * D), float("nan"))
    for p in range(n):
        region[blocks[p // BS], :, index[p % BS]] = dense[:, p]
    return region


@pytest.mark.parametrize("index", [row_major(BS, D), TRANSPOSED], ids=["row-major", "transposed"])
def test_read_tokens_follows_block_table_and_layout(index):
    dense = torch.randn(2, 37, D)
    blocks = torch.tensor([5, 0, 3, 9, 7])
    assert torch.equal(read_tokens(paged(dense, blocks, 10, index), blocks, 37, index), dense)


@pytest.mark.parametrize("index", [row_major(BS, D), TRANSPOSED], ids=["row-major", "transposed"])
def test_compact_moves_each_heads_kept_tokens_to_the_front_in_order(index):
    dense_k, dense_v = torch.randn(3, 45, D), torch.randn(3, 45, D)
    blocks = torch.tensor([2, 6, 1, 4, 0, 3])
    k, v = paged(dense_k, blocks, 8, index), paged(dense_v, blocks, 8, row_major(BS, D))
    g = torch.Generator().manual_seed(0)
    keep = torch.stack([torch.randperm(45, generator=g)[:20].sort().values for _ in range(3)])
    compact_([(k, index), (v, row_major(BS, D))], blocks, keep)
    assert torch.equal(read_tokens(k, blocks, 20, index), torch.stack([dense_k[h, keep[h]] for h in range(3)]))
    assert torch.equal(read_tokens(v, blocks, 20, row_major(BS, D)), torch.stack([dense_v[h, keep[h]] for h in range(3)]))
