"""Torch operations on one request's slice of a paged KV cache (the CPU path, and the GPU reference).

A cache is a `[num_blocks, kv_heads, block_size, head_dim]` view, possibly strided (vLLM's CPU
`vec` packing stores a block's keys dim-major; FlashAttention's cache is token-major), or a tiled
`[num_blocks, kv_heads, block_size // tile, tile, head_dim // pack, pack]` view for packings that no
single stride per axis describes (vLLM's CPU `amx` packing interleaves tokens and dimension pairs).
A request's cache position `p` lives at block `blocks[p // block_size]`, token `p % block_size`.
"""

from __future__ import annotations

import torch


def tiled(cache: torch.Tensor) -> torch.Tensor:
    """`cache` in the tiled form; a plain 4-D view has tile = pack = 1."""
    return cache if cache.dim() == 6 else cache[:, :, :, None, :, None]


def block_size(cache: torch.Tensor) -> int:
    """Tokens per block of a plain or tiled cache view."""
    shape = tiled(cache).shape
    return shape[2] * shape[3]


def _locate(cache: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor):
    """Indices into `tiled(cache)` of cache positions `positions` `[heads, k]` of each KV head."""
    size, tile = block_size(cache), tiled(cache).shape[3]
    heads = torch.arange(positions.shape[0], device=positions.device)[:, None]
    slot = positions % size
    return blocks.long()[positions // size], heads, slot // tile, slot % tile


def gather(cache: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Vectors at cache positions `positions[h]` of each KV head: `[heads, k, dim]`."""
    return tiled(cache)[_locate(cache, blocks, positions)].flatten(-2)


def scatter_(cache: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
    """Write `values` `[heads, k, dim]` to cache positions `positions[h]`, in place."""
    view = tiled(cache)
    view[_locate(cache, blocks, positions)] = values.unflatten(-1, view.shape[-2:])


def span(start: int, length: int, heads: int, device=None) -> torch.Tensor:
    """Positions `start..start+length-1` for every head: `[heads, length]`."""
    return torch.arange(start, start + length, device=device).expand(heads, -1)


def read_tokens(cache: torch.Tensor, blocks: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The request's first `num_tokens` cached vectors: `[heads, num_tokens, dim]`."""
    return gather(cache, blocks, span(0, num_tokens, cache.shape[1], cache.device))
