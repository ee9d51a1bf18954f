"""The GPU memory compaction needs outside the KV pool, held while vLLM profiles so the pool leaves room.

vLLM sizes its pool from the peak of one dummy forward. Compaction runs inside real forwards and
allocates, per layer, the prompt's scores, the plan and a move buffer; a move never spans more than
`max_model_len` tokens (requests compacting in one step are moved in groups of at most that many),
so `scratch_bytes` bounds it. Window queries waiting for a later chunk wait in host memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCORE_COPIES = 16  # fp32 [kv_heads, tokens] arrays a plan may hold at once: scores, pooled, masks, top-k values


@dataclass(frozen=True)
class ScratchShape:
    """What bounds one layer's compaction on one worker: its attention shape and the step sizes."""

    max_model_len: int
    max_num_batched_tokens: int
    num_heads: int  # query heads on this worker
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int


def scratch_bytes(shape: ScratchShape) -> int:
    """Most bytes one layer's compaction (scores, plan, move) and PoD member decode allocate at once."""
    per_token = (
        2 * shape.num_kv_heads * shape.head_dim * shape.dtype_bytes  # move buffer, keys and values
        + 2 * shape.num_kv_heads * (4 + 4)  # move codes: one request's and the padded batch (int32)
        + shape.num_kv_heads * 8 * 2  # kept positions and the top-k indices (int64)
        + SCORE_COPIES * shape.num_kv_heads * 4
    )
    member_decode = shape.max_num_batched_tokens * shape.num_heads * shape.head_dim * (4 + shape.dtype_bytes)
    return shape.max_model_len * per_token + member_decode


def engine_scratch_shape(vllm_config) -> ScratchShape:
    """The scratch shape of an engine's workers, from its model and scheduler configs."""
    model, parallel = vllm_config.model_config, vllm_config.parallel_config
    return ScratchShape(
        max_model_len=model.max_model_len,
        max_num_batched_tokens=vllm_config.scheduler_config.max_num_batched_tokens,
        num_heads=model.get_num_attention_heads(parallel),
        num_kv_heads=model.get_num_kv_heads(parallel),
        head_dim=model.get_head_size(),
        dtype_bytes=torch.empty(0, dtype=model.dtype).element_size(),
    )
