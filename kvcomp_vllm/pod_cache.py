"""PoD's compacted layout for a member layer's paged cache, and attention over it.

Member cache positions after compaction, for a prompt with `prox` proximal and `D` distant tokens:

    [0, prox)                      proximal prompt tokens: own key and value
    [prox, prox + ceil(D / 2))     distant values, two per slot: distant[2j] in the key half,
                                   distant[2j + 1] in the value half
    [prox + ceil(D / 2), ...)      tokens after the prompt: own key and value

Distant keys are not stored here at all: attention reads them from the owner layer's cache, where
they sit at their true positions. Caches are `(region, index)` pairs as in `paged`.
"""

from __future__ import annotations

import torch

from .attention import causal_attention
from .paged import gather, scatter_

Cache = tuple[torch.Tensor, torch.Tensor]  # (region, index)


def _span(start: int, length: int, heads: int, device) -> torch.Tensor:
    return torch.arange(start, start + length, device=device).expand(heads, -1)


def pack_member_(key: Cache, value: Cache, blocks, proximal: torch.Tensor, distant: torch.Tensor, later: torch.Tensor) -> None:
    """Rewrite a member layer's prompt cache into the layout above, in place.

    `proximal` and `distant` are prompt positions; `later` are positions after the prompt already in
    the cache (a recomputed request's generated tokens), which move behind the packed values.
    """
    (key_region, key_index), (value_region, value_index) = key, value
    heads = key_region.shape[1]
    at = lambda positions: positions.expand(heads, -1)  # noqa: E731
    prox_k, prox_v = gather(key_region, blocks, at(proximal), key_index), gather(value_region, blocks, at(proximal), value_index)
    later_k, later_v = gather(key_region, blocks, at(later), key_index), gather(value_region, blocks, at(later), value_index)
    dist_v = gather(value_region, blocks, at(distant), value_index)
    pairs = -(-distant.numel() // 2)
    odd = torch.zeros_like(dist_v[:, :pairs])
    odd[:, : dist_v.shape[1] // 2] = dist_v[:, 1::2]
    prox, device = proximal.numel(), key_region.device
    for region, index, front, packed, tail in (
        (key_region, key_index, prox_k, dist_v[:, 0::2], later_k),
        (value_region, value_index, prox_v, odd, later_v),
    ):
        scatter_(region, blocks, _span(0, prox, heads, device), index, front)
        scatter_(region, blocks, _span(prox, pairs, heads, device), index, packed)
        scatter_(region, blocks, _span(prox + pairs, later.numel(), heads, device), index, tail)


def member_attention(
    query: torch.Tensor,
    key: Cache,
    value: Cache,
    blocks,
    owner_key: Cache,
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
    (key_region, key_index), (value_region, value_index) = key, value
    heads, device = key_region.shape[1], key_region.device
    pairs = -(-distant.numel() // 2)
    prox = _span(0, num_proximal, heads, device)
    packed = _span(num_proximal, pairs, heads, device)
    later = _span(num_proximal + pairs, num_later, heads, device)
    dist_v = torch.stack(
        [gather(key_region, blocks, packed, key_index), gather(value_region, blocks, packed, value_index)], dim=2
    ).flatten(1, 2)[:, : distant.numel()]
    keys = torch.cat([
        gather(key_region, blocks, prox, key_index),
        gather(owner_key[0], owner_blocks, distant.expand(heads, -1), owner_key[1]),
        gather(key_region, blocks, later, key_index),
    ], dim=1)
    values = torch.cat([
        gather(value_region, blocks, prox, value_index), dist_v, gather(value_region, blocks, later, value_index),
    ], dim=1)
    return causal_attention(query.transpose(0, 1)[None], keys[None], values[None], scale)[0]
