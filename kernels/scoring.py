"""Observation-window scores read straight from the paged cache, without a `[heads, window, prompt]` tensor.

Two passes over the prompt keys: the first finds each window query's softmax normaliser (log-sum-exp)
with an online softmax; the second recomputes each prefix key's logits tile by tile and sums the
normalised probabilities over the window and over the query heads of its KV head (its GQA group). Memory beyond
the output is `[heads, window]` floats. `window_scores_reference` is the torch definition it must match.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention import observation_scores
from .paged import dot_precision, jit, token_offsets
from .paged_torch import read_tokens

BLOCK_W = 16
BLOCK_N = 64


@jit(varying=["n", "w"], unaligned=["table_ptr"])
def _window_lse_kernel(
    q_ptr, k_ptr, table_ptr, lse_ptr, n, w, scale,
    stride_qh, stride_qw, stride_kb, stride_kh, stride_kt,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    head = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + head * stride_qh + rows[:, None] * stride_qw + dims[None, :], mask=rows[:, None] < w, other=0.0)
    q_pos = n - w + rows
    k_base = k_ptr + (head // GROUP) * stride_kh
    m = tl.full([BLOCK_W], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_W], tl.float32)
    for start in range(0, n, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        offsets = token_offsets(table_ptr, pos, pos < n, BLOCK_SIZE, stride_kb, stride_kt)
        k = tl.load(k_base + offsets[:, None] + dims[None, :], mask=pos[:, None] < n, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        s = tl.where((pos[None, :] <= q_pos[:, None]) & (pos[None, :] < n), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m = m_new
    tl.store(lse_ptr + head * w + rows, m + tl.log(total), mask=rows < w)


@jit(varying=["n", "w"], unaligned=["table_ptr"])
def _window_columns_kernel(
    q_ptr, k_ptr, table_ptr, lse_ptr, out_ptr, n, w, scale,
    stride_qh, stride_qw, stride_kb, stride_kh, stride_kt,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    kv_head = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    prefix = n - w  # every window query sees every prefix key: no causal mask here
    dims = tl.arange(0, HEAD_DIM)
    offsets = token_offsets(table_ptr, pos, pos < prefix, BLOCK_SIZE, stride_kb, stride_kt)
    k = tl.load(k_ptr + kv_head * stride_kh + offsets[:, None] + dims[None, :], mask=pos[:, None] < prefix, other=0.0)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for g in range(GROUP):
        head = kv_head * GROUP + g
        for start in range(0, w, BLOCK_W):
            rows = start + tl.arange(0, BLOCK_W)
            q = tl.load(q_ptr + head * stride_qh + rows[:, None] * stride_qw + dims[None, :], mask=rows[:, None] < w, other=0.0)
            lse = tl.load(lse_ptr + head * w + rows, mask=rows < w, other=float("inf"))
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            acc += tl.sum(tl.exp(s - lse[:, None]), 0)
    tl.store(out_ptr + kv_head * prefix + pos, acc / GROUP, mask=pos < prefix)


def window_scores(query: torch.Tensor, key_cache: torch.Tensor, block_table: torch.Tensor, prompt_len: int, scale: float) -> torch.Tensor:
    """Scores `[kv_heads, prompt_len - window]` (fp32) of one request's prefix keys.

    query: `[heads, window, head_dim]`, the queries of positions prompt_len-window..prompt_len-1;
    key_cache: `[blocks, kv_heads, block_size, head_dim]` (last dim contiguous); block_table: the
    request's int32 block ids.
    """
    heads, w, head_dim = query.shape
    kv_heads, block_size = key_cache.shape[1], key_cache.shape[2]
    assert query.stride(-1) == 1 and key_cache.stride(-1) == 1, "head_dim must be contiguous"
    out = torch.empty(kv_heads, prompt_len - w, dtype=torch.float32, device=query.device)
    if prompt_len == w:
        return out
    lse = torch.empty(heads, w, dtype=torch.float32, device=query.device)
    common = dict(
        GROUP=heads // kv_heads, BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_W=BLOCK_W, BLOCK_N=BLOCK_N,
        PRECISION=dot_precision(query.dtype),
    )
    strides = (query.stride(0), query.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2))
    _window_lse_kernel[(heads, triton.cdiv(w, BLOCK_W))](
        query, key_cache, block_table, lse, prompt_len, w, scale, *strides, **common
    )
    _window_columns_kernel[(kv_heads, triton.cdiv(prompt_len - w, BLOCK_N))](
        query, key_cache, block_table, lse, out, prompt_len, w, scale, *strides, **common
    )
    return out


def window_scores_reference(query, key_cache, block_table, prompt_len: int, scale: float) -> torch.Tensor:
    """The torch definition: read the prompt keys, then `observation_scores`."""
    return observation_scores(read_tokens(key_cache, block_table, prompt_len), query, scale)
