"""Triton helpers for reading a paged KV cache laid out as `[blocks, kv_heads, block_size, head_dim]`.

Any strides work (vLLM's FlashAttention cache is token-major with K and V in one tensor); position
`p` of a request lives in block `table[p // BLOCK_SIZE]`, slot `p % BLOCK_SIZE`, as in `kvcomp_vllm.paged`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def token_offsets(table_row, pos, mask, BLOCK_SIZE: tl.constexpr, stride_block, stride_token):
    """Element offsets (int64) of the first dim of cache positions `pos` of one request."""
    block = tl.load(table_row + pos // BLOCK_SIZE, mask=mask, other=0).to(tl.int64)
    return block * stride_block + (pos % BLOCK_SIZE).to(tl.int64) * stride_token


def dot_precision(dtype) -> str:
    """fp32 inputs use exact products (tests); fp16/bf16 use tensor cores as usual."""
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"
