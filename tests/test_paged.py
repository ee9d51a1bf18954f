"""Paged-cache ops against the dense semantics they implement, on token-major, dim-major and tiled blocks."""

import pytest
import torch

from kvcomp_kernels.paged_torch import read_tokens, scatter_, span
from kvcomp_vllm.testing.caches import LAYOUTS, empty_cache

BS, D = 8, 4


def paged(dense, blocks, num_blocks, layout):
    cache = empty_cache(num_blocks, dense.shape[0], BS, D, layout, dense.dtype)
    scatter_(cache, blocks, span(0, dense.shape[1], dense.shape[0]), dense)
    return cache


@pytest.mark.parametrize("layout", LAYOUTS)
def test_read_tokens_follows_block_table_and_layout(layout):
    dense = torch.randn(2, 37, D)
    blocks = torch.tensor([5, 0, 3, 9, 7])
    assert torch.equal(read_tokens(paged(dense, blocks, 10, layout), blocks, 37), dense)

