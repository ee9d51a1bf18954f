"""PoD's compacted layout for a member layer's paged cache, and attention over it.

Member cache positions after compaction, for a prompt with `prox` proximal and `D` distant tokens:

    [0, prox)                      proximal prompt tokens: own key and value
    [prox, prox + ceil(D / 2))     distant values, two per slot: distant[2j] in the key cache,
                                   distant[2j + 1] in the value cache
    [prox + ceil(D / 2), ...)      tokens after the prompt: own key and value

Distant keys are not stored here at all: attention reads them from the owner layer's cache, where
they sit at their true positions. Caches are `[blocks, kv_heads, block_size, dim]` views as in `paged`.
"""

from __future__ import annotations

import torch

from .attention import causal_attention
from .paged import gather, scatter_, span


def pack_member_(key_cache, value_cache, blocks, proximal: torch.Tensor, distant: torch.Tensor, later: torch.Tensor) -> None:
    """Rewrite a member layer's prompt cache into the layout above, in place.

    `proximal` and `distant` are prompt positions; `later` are positions after the prompt already in
    the cache (a recomputed request's generated tokens), which move behind the packed values.
    """
    heads, device = key_cache.shape[1], key_cache.device
    prox_k, prox_v = (gather(c, blocks, proximal.expand(heads, -1)) for c in (key_cache, value_cache))
    later_k, later_v = (gather(c, blocks, later.expand(heads, -1)) for c in (key_cache, value_cache))
    dist_v = gather(value_cache, blocks, distant.expand(heads, -1))
    pairs = -(-distant.numel() // 2)
    odd = torch.zeros_like(dist_v[:, :pairs])
    odd[:, : dist_v.shape[1] // 2] = dist_v[:, 1::2]
    prox = proximal.numel()
    for cache, front, packed, tail in ((key_cache, prox_k, dist_v[:, 0::2], later_k), (value_cache, prox_v, odd, later_v)):
        scatter_(cache, blocks, span(0, prox, heads, device), front)
        scatter_(cache, blocks, span(prox, pairs, heads, device), packed)
        scatter_(cache, blocks, span(prox + pairs, later.numel(), heads, device), tail)


def member_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    blocks,
    owner_key_cache: torch.Tensor,
    owner_blocks,
    num_proximal: int,
    distant: torch.Tensor,
    num_later: int,
    scale: float,
) -> torch.Tensor:
    """Attention of `query` `[q_len, heads, d]`, the last `q_len` of the `num_later` post-prompt tokens.

    Keys: own proximal, the owner's distant, own later; values: own proximal, packed distant, own
    later. Returns `[q_len, heads, d]`.
    """
    heads, device = key_cache.shape[1], key_cache.device
    pairs = -(-distant.numel() // 2)
    prox = span(0, num_proximal, heads, device)
    packed = span(num_proximal, pairs, heads, device)
    later = span(num_proximal + pairs, num_later, heads, device)
    dist_v = torch.stack([gather(key_cache, blocks, packed), gather(value_cache, blocks, packed)], dim=2)
    keys = torch.cat([
        gather(key_cache, blocks, prox),
        gather(owner_key_cache, owner_blocks, distant.expand(heads, -1)),
        gather(key_cache, blocks, later),
    ], dim=1)
    values = torch.cat([
        gather(value_cache, blocks, prox), dist_v.flatten(1, 2)[:, : distant.numel()], gather(value_cache, blocks, later),
    ], dim=1)
    return causal_attention(query.transpose(0, 1)[None], keys[None], values[None], scale)[0]
