"""Batched in-place token moves inside paged K/V caches: compaction and PoD's packed layout.

A move is described per request `r`, destination cache `c` (0 = keys, 1 = values), KV head `h` and
destination position `i < lengths[r]` by a source code `sources[r, c, h, i]`: `2 * pos + s` reads
position `pos` of cache `s` (0 = keys, 1 = values), `-1` writes zeros. Plain compaction moves
`keep` to the front of both caches; PoD members also move distant values into the key cache.
Every source is read (into a scratch buffer) before any destination is written, so moves may
overlap arbitrarily. One launch gathers, one scatters, for the whole batch of requests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .paged import jit, token_offsets
from .paged_torch import gather, scatter_, span

BLOCK_L = 32


@jit(varying=["L", "stride_tr"], unaligned=["table_ptr"])
def _move_kernel(
    k_ptr, v_ptr, table_ptr, src_ptr, len_ptr, buf_ptr, L, H,
    stride_kb, stride_kh, stride_kt, stride_tr,
    GATHER: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr,
):
    r = tl.program_id(0)
    c = tl.program_id(1) // H
    h = tl.program_id(1) % H
    i = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    live = i < tl.load(len_ptr + r)
    dims = tl.arange(0, HEAD_DIM)
    live_2d = live[:, None] & (dims[None, :] < HEAD_DIM)  # stores take a full-shape mask
    table = table_ptr + r * stride_tr
    row = ((r * 2 + c) * H + h) * L + i  # index into sources and (times HEAD_DIM) the buffer
    buf = buf_ptr + row.to(tl.int64)[:, None] * HEAD_DIM + dims[None, :]
    if GATHER:
        code = tl.load(src_ptr + row, mask=live, other=-1)
        pos = tl.maximum(code, 0) // 2
        offsets = h * stride_kh + token_offsets(table, pos, live, BLOCK_SIZE, stride_kb, stride_kt)
        from_k = live & (code >= 0) & (code % 2 == 0)
        from_v = live & (code >= 0) & (code % 2 == 1)
        x = tl.load(k_ptr + offsets[:, None] + dims[None, :], mask=from_k[:, None], other=0.0)
        x += tl.load(v_ptr + offsets[:, None] + dims[None, :], mask=from_v[:, None], other=0.0)
        tl.store(buf, x, mask=live_2d)
    else:
        offsets = h * stride_kh + token_offsets(table, i, live, BLOCK_SIZE, stride_kb, stride_kt)
        x = tl.load(buf, mask=live_2d)
        if c == 0:
            tl.store(k_ptr + offsets[:, None] + dims[None, :], x, mask=live_2d)
        else:
            tl.store(v_ptr + offsets[:, None] + dims[None, :], x, mask=live_2d)


def move_tokens_(key_cache, value_cache, block_tables, sources, lengths) -> None:
    """Apply the moves (module docstring) in place. Caches `[blocks, kv_heads, block_size, dim]` with
    equal strides; block_tables `[R, max_blocks]` int32; sources `[R, 2, kv_heads, L]` int32; lengths `[R]` int32."""
    num_reqs, _, heads, width = sources.shape
    assert key_cache.stride() == value_cache.stride() and key_cache.stride(-1) == 1
    if num_reqs == 0 or width == 0:
        return
    head_dim = key_cache.shape[-1]
    sources = sources.contiguous()
    buffer = torch.empty(num_reqs, 2, heads, width, head_dim, dtype=key_cache.dtype, device=key_cache.device)
    grid = (num_reqs, 2 * heads, triton.cdiv(width, BLOCK_L))
    for gather_phase in (True, False):
        _move_kernel[grid](
            key_cache, value_cache, block_tables, sources, lengths, buffer, width, heads,
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
            GATHER=gather_phase, BLOCK_SIZE=key_cache.shape[2], HEAD_DIM=head_dim, BLOCK_L=BLOCK_L,
        )


def move_tokens_reference_(key_cache, value_cache, block_tables, sources, lengths) -> None:
    """The torch definition of `move_tokens_`, one request at a time."""
    caches = (key_cache, value_cache)
    for r in range(sources.shape[0]):
        n = int(lengths[r])
        codes = sources[r, :, :, :n].long()
        pos = codes.clamp(min=0) // 2
        moved = []
        for c in range(2):
            from_k = gather(key_cache, block_tables[r], pos[c])
            from_v = gather(value_cache, block_tables[r], pos[c])
            which = (codes[c] % 2)[..., None]
            moved.append(torch.where(codes[c][..., None] < 0, 0, torch.where(which == 1, from_v, from_k)))
        front = span(0, n, codes.shape[1], key_cache.device)
        for cache, values in zip(caches, moved):
            scatter_(cache, block_tables[r], front, values)
