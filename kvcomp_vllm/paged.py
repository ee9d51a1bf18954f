"""Torch operations on one request's slice of a paged KV cache (the CPU path, and the GPU reference).

A cache is a `[num_blocks, kv_heads, block_size, head_dim]` view, possibly strided (vLLM's CPU
backend stores a block's keys dim-major; FlashAttention's cache is token-major). A request's cache
position `p` lives at block `blocks[p // block_size]`, token `p % block_size`.
"""

from __future__ import annotations

import torch


def _locate(cache: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor):
    """Indices of cache positions `positions` `[heads, k]` of each KV head."""
    block_size = cache.shape[2]
    heads = torch.arange(positions.shape[0], device=positions.device)[:, None]
    return blocks.long()[positions // block_size], heads, positions % block_size


def gather(cache: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Vectors at cache positions `positions[h]` of each KV head: `[heads, k, dim]`."""
    return cache[_locate(cache, blocks, positions)]


def scatter_(cache: torch.Tensor, blocks: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
    """Write `values` `[heads, k, dim]` to cache positions `positions[h]`, in place."""
    cache[_locate(cache, blocks, positions)] = values


def span(start: int, length: int, heads: int, device=None) -> torch.Tensor:
    """Positions `start..start+length-1` for every head: `[heads, length]`."""
    return torch.arange(start, start + length, device=device).expand(heads, -1)


def read_tokens(cache: torch.Tensor, blocks: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The request's first `num_tokens` cached vectors: `[heads, num_tokens, dim]`."""
    return gather(cache, blocks, span(0, num_tokens, cache.shape[1], cache.device))

