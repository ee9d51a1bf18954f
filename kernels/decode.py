"""Decode attention over compacted paged caches, PoD's shared distant keys included (split-K, GQA).

Each row is one query token. `layout[r] = (length, proximal, distant_start, distant)` describes the
keys it sees, in logical order `j < length`:

    j < proximal                           own key/value at cache position j
    proximal <= j < proximal + distant     key: the owner cache's position distant_start + (j - proximal);
                                           value: packed two per slot at proximal + (j - proximal) // 2,
                                           in the key cache when (j - proximal) is even, else the value cache
    j >= proximal + distant                own key/value at proximal + ceil(distant / 2) + (j - proximal - distant)

A plain (compacted or uncompressed) row is `(length, length, 0, 0)`. The grid is fixed by the batch
size and `max_len`, each row splits its own length evenly over the grid's key splits, and nothing syncs
with the host, so one launch, captured in a CUDA graph with `max_len` the longest length any row may
reach, replays for rows of any length up to it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from typing import NamedTuple

from .attention import causal_attention
from .paged import dot_precision, jit, token_offsets
from .paged_torch import gather


class Tile(NamedTuple):
    """Launch shape: keys per loop step, warps and pipeline stages per program, and how many programs
    (rows x KV heads x key splits) to aim for when splitting long rows."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    target_programs: int = 1056  # eight programs per SM of an H100 (132 SMs)


# From `benchmarks/kernels.py --tiles` on an H100 (results/h100-decode-tiles.md): 69% of copy bandwidth
# at a batch of 64 and 74% at 138 (the earlier 64/4/3/264 tile: 60% and 59%).


TILE = Tile()


@jit(varying=["stride_tr", "stride_otr"], unaligned=["table_ptr", "otable_ptr"])
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, ok_ptr, table_ptr, otable_ptr, layout_ptr, m_ptr, l_ptr, acc_ptr,
    scale,
    stride_qr, stride_qh, stride_kb, stride_kh, stride_kt, stride_ob, stride_oh, stride_ot, stride_tr, stride_otr,
    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    r = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(layout_ptr + r * 4)
    prox = tl.load(layout_ptr + r * 4 + 1)
    dist_start = tl.load(layout_ptr + r * 4 + 2)
    dist = tl.load(layout_ptr + r * 4 + 3)
    pairs = (dist + 1) // 2
    g = tl.arange(0, G_PAD)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + r * stride_qr + (kv_head * GROUP + g)[:, None] * stride_qh + dims[None, :],
                mask=g[:, None] < GROUP, other=0.0)
    table = table_ptr + r * stride_tr
    k_base = k_ptr + kv_head * stride_kh
    v_base = v_ptr + kv_head * stride_kh
    m = tl.full([G_PAD], float("-inf"), tl.float32)
    total = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, HEAD_DIM], tl.float32)
    split_len = tl.cdiv(tl.cdiv(length, tl.num_programs(2)), BLOCK_N) * BLOCK_N  # this row's share, whole tiles
    begin = split * split_len
    end = tl.minimum(begin + split_len, length)
    for start in range(begin, end, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        valid = j < end
        distant = (j >= prox) & (j < prox + dist)
        own = valid & ~distant
        own_pos = tl.where(j < prox, j, prox + pairs + (j - prox - dist))
        k_off = token_offsets(table, own_pos, own, BLOCK_SIZE, stride_kb, stride_kt)
        o_off = token_offsets(otable_ptr + r * stride_otr, dist_start + j - prox, valid & distant,
                              BLOCK_SIZE, stride_ob, stride_ot)
        k = tl.load(k_base + k_off[:, None] + dims[None, :], mask=own[:, None], other=0.0)
        k += tl.load(ok_ptr + kv_head * stride_oh + o_off[:, None] + dims[None, :],
                     mask=(valid & distant)[:, None], other=0.0)
        v_off = token_offsets(table, tl.where(distant, prox + (j - prox) // 2, own_pos), valid,
                              BLOCK_SIZE, stride_kb, stride_kt)
        in_key_cache = distant & ((j - prox) % 2 == 0)
        v = tl.load(k_base + v_off[:, None] + dims[None, :], mask=(valid & in_key_cache)[:, None], other=0.0)
        v += tl.load(v_base + v_off[:, None] + dims[None, :], mask=(valid & ~in_key_cache)[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        total = total * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    part = (r * tl.num_programs(1) + kv_head) * tl.num_programs(2) + split
    tl.store(m_ptr + part * G_PAD + g, m)
    tl.store(l_ptr + part * G_PAD + g, total)
    tl.store(acc_ptr + (part * G_PAD + g)[:, None] * HEAD_DIM + dims[None, :], acc)


def num_splits(rows: int, kv_heads: int, max_len: int, tile: Tile = TILE) -> int:
    """Key splits per (row, KV head): enough programs to fill the GPU, never an empty tile's worth more."""
    return max(1, min(triton.cdiv(tile.target_programs, max(rows * kv_heads, 1)), triton.cdiv(max_len, tile.block_n)))


def paged_decode(
    query, key_cache, value_cache, block_tables, layout, max_len: int, scale: float,
    owner_key_cache=None, owner_block_tables=None, splits: int | None = None, tile: Tile = TILE,
) -> torch.Tensor:
    """Attention output `[rows, heads, dim]` of `query` `[rows, heads, dim]` (module docstring).

    block_tables `[rows, max_blocks]` int32; layout `[rows, 4]` int32; `max_len` bounds every row's
    length (a host int: with the row count it sets the grid, and nothing else reads it). PoD rows read
    distant keys from `owner_key_cache`.
    `tile` sets the launch shape (benchmarks/kernels.py --tiles sweeps it).
    """
    rows, heads, head_dim = query.shape
    kv_heads, block_size = key_cache.shape[1], key_cache.shape[2]
    assert key_cache.stride() == value_cache.stride() and key_cache.stride(-1) == 1 and query.stride(-1) == 1
    if owner_key_cache is None:
        owner_key_cache, owner_block_tables = key_cache, block_tables
    group = heads // kv_heads
    g_pad = max(16, triton.next_power_of_2(group))
    splits = splits or num_splits(rows, kv_heads, max_len, tile)
    f32 = dict(dtype=torch.float32, device=query.device)
    m = torch.empty(rows, kv_heads, splits, g_pad, **f32)
    total = torch.empty(rows, kv_heads, splits, g_pad, **f32)
    acc = torch.empty(rows, kv_heads, splits, g_pad, head_dim, **f32)
    if rows:
        _decode_kernel[(rows, kv_heads, splits)](
            query, key_cache, value_cache, owner_key_cache, block_tables, owner_block_tables, layout, m, total, acc,
            scale,
            query.stride(0), query.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            owner_key_cache.stride(0), owner_key_cache.stride(1), owner_key_cache.stride(2),
            block_tables.stride(0), owner_block_tables.stride(0),
            GROUP=group, G_PAD=g_pad, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_N=tile.block_n,
            PRECISION=dot_precision(query.dtype), num_warps=tile.num_warps, num_stages=tile.num_stages,
        )
    weight = torch.exp(m - m.amax(dim=2, keepdim=True))  # empty splits hold -inf: weight 0
    out = (acc * weight[..., None]).sum(2) / (total * weight).sum(2)[..., None]
    return out[:, :, :group].reshape(rows, heads, head_dim).to(query.dtype)


def logical_positions(layout_row: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one row: key position and whether it is the owner's; value position and whether it is in the key cache."""
    length, prox, dist_start, dist = layout_row
    pairs = -(-dist // 2)
    j = torch.arange(length)
    distant = (j >= prox) & (j < prox + dist)
    own = torch.where(j < prox, j, prox + pairs + (j - prox - dist))
    key_pos = torch.where(distant, dist_start + j - prox, own)
    value_pos = torch.where(distant, prox + (j - prox) // 2, own)
    return key_pos, distant, value_pos, distant & ((j - prox) % 2 == 0)


def paged_decode_reference(
    query, key_cache, value_cache, block_tables, layout, max_len: int, scale: float,
    owner_key_cache=None, owner_block_tables=None,
) -> torch.Tensor:
    """The torch definition of `paged_decode`, one row at a time."""
    if owner_key_cache is None:
        owner_key_cache, owner_block_tables = key_cache, block_tables
    heads = key_cache.shape[1]
    out = []
    for r, row in enumerate(layout.tolist()):
        key_pos, from_owner, value_pos, in_key_cache = (t.to(query.device) for t in logical_positions(row))
        expand = lambda pos: pos.expand(heads, -1)  # noqa: E731
        keys = torch.where(from_owner[:, None], gather(owner_key_cache, owner_block_tables[r], expand(key_pos)),
                           gather(key_cache, block_tables[r], expand(key_pos)))
        values = torch.where(in_key_cache[:, None], gather(key_cache, block_tables[r], expand(value_pos)),
                             gather(value_cache, block_tables[r], expand(value_pos)))
        out.append(causal_attention(query[r][None, :, None], keys[None], values[None], scale)[0, 0])
    return torch.stack(out).to(query.dtype)
