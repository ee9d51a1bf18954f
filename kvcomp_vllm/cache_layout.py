"""Where a layer's kept tokens live in its paged cache after compaction, as inputs of the kernels.

Plain compaction moves each KV head's kept positions `keep[h]` to cache positions `0..k-1`; tokens
already cached past the prompt (a recomputed request's) follow them. A PoD member layer, for a
prompt with `prox` proximal and `D` distant tokens, holds:

    [0, prox)                      proximal prompt tokens: own key and value
    [prox, prox + ceil(D / 2))     distant values, two per slot: distant[2j] in the key cache,
                                   distant[2j + 1] in the value cache
    [prox + ceil(D / 2), ...)      tokens after the prompt: own key and value

Distant keys are not stored there at all: decode reads them from the owner layer's cache, where
they sit at their true positions. `move_sources` describes the compaction for
`kvcomp_kernels.move_tokens_`; `MemberLayout.decode_row` one decode query for `paged_decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .policies import LayerPlan

KEYS, VALUES = 0, 1


def move_sources(plan: LayerPlan, later: torch.Tensor) -> torch.Tensor:
    """Move codes `[2, kv_heads, slots]` (int32) that compact a layer's cache under `plan`.

    `later` are positions past the prompt already in the cache. A code `2 * pos + cache` reads
    position `pos` of the key (0) or value (1) cache; `-1` writes zeros.
    """
    heads = plan.keep.shape[0]
    tail = later.expand(heads, -1)
    if plan.shared is None:
        keep = torch.cat([plan.keep, tail], dim=1)
        return torch.stack([2 * keep + KEYS, 2 * keep + VALUES]).int()
    prox, distant = plan.keep, plan.shared.expand(heads, -1)
    pad = torch.full((heads, distant.shape[1] % 2), -1, device=prox.device, dtype=prox.dtype)
    keys = torch.cat([2 * prox + KEYS, 2 * distant[:, 0::2] + VALUES, 2 * tail + KEYS], dim=1)
    values = torch.cat([2 * prox + VALUES, 2 * distant[:, 1::2] + VALUES, pad, 2 * tail + VALUES], dim=1)
    return torch.stack([keys, values]).int()


@dataclass(frozen=True)
class MemberLayout:
    """A PoD member layer's compacted prompt: its owner layer, proximal count and distant run."""

    owner: int
    proximal: int
    distant_start: int
    distant: int

    def decode_row(self, num_later: int) -> list[int]:
        """`paged_decode` layout of a query that sees the prompt and `num_later` tokens after it."""
        return [self.proximal + self.distant + num_later, self.proximal, self.distant_start, self.distant]

