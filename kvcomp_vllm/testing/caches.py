"""NaN-filled paged caches in every storage order kvcomp addresses, for tests of the paged ops.

Each is a view `[blocks, heads, block_size, dim]` (token- or dim-major storage) or the tiled view
`[blocks, heads, block_size // tile, tile, dim // pack, pack]` of an interleaved storage shaped like
vLLM's CPU `amx` packing: keys as 16-token rows of dimension pairs (VNNI), values as 16-dimension
rows of token pairs. Tile sizes here are scaled to small blocks.
"""

from __future__ import annotations

import torch

LAYOUTS = ("token-major", "dim-major", "amx-key", "amx-value")


def empty_cache(num_blocks: int, heads: int, block_size: int, dim: int, layout: str, dtype=torch.float32) -> torch.Tensor:
    """A cache view of `layout` over fresh NaN storage."""
    nan = float("nan")
    if layout == "token-major":
        return torch.full((num_blocks, heads, block_size, dim), nan, dtype=dtype)
    if layout == "dim-major":
        return torch.full((num_blocks, heads, dim, block_size), nan, dtype=dtype).transpose(2, 3)
    if layout == "amx-key":  # storage [token tile, dim pair, token in tile, dim in pair]
        storage = torch.full((num_blocks, heads, block_size // 4, dim // 2, 4, 2), nan, dtype=dtype)
        return storage.permute(0, 1, 2, 4, 3, 5)
    if layout == "amx-value":  # storage [dim row, token pair, dim in row, token in pair]
        storage = torch.full((num_blocks, heads, dim // 2, block_size // 2, 2, 2), nan, dtype=dtype)
        return storage.permute(0, 1, 3, 5, 2, 4)
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
