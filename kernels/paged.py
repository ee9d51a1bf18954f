"""Triton helpers for reading a paged KV cache laid out as `[blocks, kv_heads, block_size, head_dim]`.

Any strides work (vLLM's FlashAttention cache is token-major with K and V in one tensor); position
`p` of a request lives in block `table[p // BLOCK_SIZE]`, slot `p % BLOCK_SIZE`, as in `paged_torch`.
"""

from __future__ import annotations

import inspect

import triton
import triton.language as tl

# Triton 3.2+ can skip the 16-byte alignment specialisation of chosen pointer arguments.
_ALIGNMENT_OPTION = "do_not_specialize_on_alignment" in inspect.signature(triton.jit).parameters


def jit(varying=(), unaligned=()):
    """`triton.jit` with per-request integers (`varying`) and pointers into a larger tensor (`unaligned`)
    kept out of the specialisation key, so one compiled variant serves every request after warm-up."""
    options = {"do_not_specialize": list(varying)}
    if _ALIGNMENT_OPTION:
        options["do_not_specialize_on_alignment"] = list(unaligned)
    return triton.jit(**options)


@triton.jit
def token_offsets(table_row, pos, mask, BLOCK_SIZE: tl.constexpr, stride_block, stride_token):
    """Element offsets (int64) of the first dim of cache positions `pos` of one request."""
    block = tl.load(table_row + pos // BLOCK_SIZE, mask=mask, other=0).to(tl.int64)
    return block * stride_block + (pos % BLOCK_SIZE).to(tl.int64) * stride_token


def dot_precision(dtype) -> str:
    """fp32 inputs use exact products (tests); fp16/bf16 use tensor cores as usual."""
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"
