"""Compile every kernel for one layer cache's dtype and layout before the first request.

Triton compiles a kernel on its first launch with a new specialisation (about a second each on an
H100), which would otherwise land inside the first prompts' prefill. Per-request integers and
block-table pointers are kept out of the specialisation key (`paged.jit`), so one launch per kernel
here covers every later request on a cache of this layout. The launches read block 0 and move its
first token onto itself: the cache is left as it was.
"""

from __future__ import annotations

import torch

from .compaction import move_tokens_
from .decode import paged_decode
from .scoring import window_scores


def warm_up(key_cache: torch.Tensor, value_cache: torch.Tensor, num_heads: int, scale: float) -> None:
    """Launch scoring, moves and decode once on `key_cache`/`value_cache` `[blocks, kv_heads, block_size, dim]`."""
    kv_heads, block_size, head_dim = key_cache.shape[1:]
    device = key_cache.device
    # Two rows of odd width: row 1 starts 12 bytes past row 0, like a row of vLLM's block-table buffer.
    tables = torch.zeros(2, 3, dtype=torch.int32, device=device)
    window = min(2, block_size)
    query = torch.randn(num_heads, window, head_dim, dtype=key_cache.dtype, device=device)
    for row in tables:  # both alignments, for Triton versions that specialise on them
        window_scores(query, key_cache, row, block_size, scale)
    identity = torch.zeros(1, 2, kv_heads, 1, dtype=torch.int32, device=device)
    identity[:, 1] = 1  # position 0 of the keys to the keys, of the values to the values
    move_tokens_(key_cache, value_cache, tables[:1], identity, torch.ones(1, dtype=torch.int32, device=device))
    layout = torch.tensor([[1, 1, 0, 0]], dtype=torch.int32, device=device)
    paged_decode(query[:, 0][None], key_cache, value_cache, tables[:1], layout, 1, scale,
                 owner_key_cache=key_cache, owner_block_tables=tables[:1])


def compiled_variants(kernel) -> int:
    """Specialisations Triton has compiled for `kernel` in this process (0 in the interpreter): what
    tests count to show that requests after `warm_up` compile nothing."""
    return sum(len(entry[0]) for entry in getattr(kernel, "device_caches", {}).values())


def kernels() -> tuple:
    """The Triton kernels `warm_up` compiles."""
    from .compaction import _move_kernel
    from .decode import _decode_kernel
    from .scoring import _window_columns_kernel, _window_lse_kernel

    return _window_lse_kernel, _window_columns_kernel, _move_kernel, _decode_kernel
