"""Torch operations on one request's slice of a paged KV cache (the CPU path, and the GPU reference).

A cache is seen as flat regions `[num_blocks, kv_heads, region]`, one per block and head, and an
index map `[block_size, head_dim]` that says where token `t`, dim `d` of a block sits in its
region (backends may store a block transposed or packed). A request's cache position `p` lives at
block `blocks[p // block_size]`, token `p % block_size`.
"""

from __future__ import annotations

import torch


def row_major(block_size: int, head_dim: int) -> torch.Tensor:
    """Index map of a block stored token after token."""
    return torch.arange(block_size * head_dim).view(block_size, head_dim)


def _locate(blocks: torch.Tensor, positions: torch.Tensor, index: torch.Tensor):
    """Block, head and in-region offsets of `positions` `[heads, k]`: broadcastable to `[heads, k, dim]`."""
    block_size = index.shape[0]
    block = blocks.long()[positions // block_size].unsqueeze(-1)
    heads = torch.arange(positions.shape[0], device=positions.device)[:, None, None]
    return block, heads, index[positions % block_size]


def gather(region: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Vectors at cache positions `positions[h]` of each KV head: `[heads, k, dim]`."""
    return region[_locate(blocks, positions, index)]


def scatter_(region: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor, index: torch.Tensor, values) -> None:
    """Write `values` `[heads, k, dim]` to cache positions `positions[h]`, in place."""
    region[_locate(blocks, positions, index)] = values


def read_tokens(region: torch.Tensor, blocks: torch.Tensor, num_tokens: int, index: torch.Tensor) -> torch.Tensor:
    """The request's first `num_tokens` cached vectors: `[heads, num_tokens, dim]`."""
    positions = torch.arange(num_tokens, device=region.device).expand(region.shape[1], -1)
    return gather(region, blocks, positions, index)


def compact_(regions: list[tuple[torch.Tensor, torch.Tensor]], blocks: torch.Tensor, keep: torch.Tensor) -> None:
    """Move positions `keep[h]` (ascending, per KV head) to positions `0..len-1` of each `(region, index)`.

    All sources are gathered before any destination is written, so overlapping moves are safe.
    """
    front = torch.arange(keep.shape[1], device=keep.device).expand(keep.shape[0], -1)
    for region, index in regions:
        scatter_(region, blocks, front, index, gather(region, blocks, keep, index))
