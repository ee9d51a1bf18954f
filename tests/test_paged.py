"""Paged-cache ops against the dense semantics they implement, on token-major and dim-major blocks."""

import pytest
import torch

from kvcomp_vllm.paged import read_tokens, scatter_, span

BS, D = 8, 4


def empty_cache(num_blocks, heads, layout, dtype=torch.float32):
    """A NaN-filled cache view `[blocks, heads, BS, D]`, stored token-major or dim-major."""
    if layout == "token-major":
        return torch.full((num_blocks, heads, BS, D), float("nan"), dtype=dtype)
    return torch.full((num_blocks, heads, D, BS), float("nan"), dtype=dtype).transpose(2, 3)


def paged(dense, blocks, num_blocks, layout):
    cache = empty_cache(num_blocks, dense.shape[0], layout, dense.dtype)
    scatter_(cache, blocks, span(0, dense.shape[1], dense.shape[0]), dense)
    return cache


@pytest.mark.parametrize("layout", ["token-major", "dim-major"])
def test_read_tokens_follows_block_table_and_layout(layout):
    dense = torch.randn(2, 37, D)
    blocks = torch.tensor([5, 0, 3, 9, 7])
    assert torch.equal(read_tokens(paged(dense, blocks, 10, layout), blocks, 37), dense)

