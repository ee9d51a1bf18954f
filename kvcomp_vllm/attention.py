"""Plain eager attention, the semantic reference for PoD's decode kernel and its tests."""

from __future__ import annotations

import torch


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Query i of q_len sees keys up to kv_len - q_len + i (queries are the last kv positions).

    query `[B, heads, q_len, d]`, key/value `[B, kv_heads, kv_len, d]` (GQA groups repeat). Returns
    `[B, q_len, heads, d]`.
    """
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    q_len, kv_len = query.shape[2], key.shape[2]
    logits = torch.matmul(query, key.transpose(2, 3)) * scale
    future = torch.arange(kv_len, device=query.device) > torch.arange(
        kv_len - q_len, kv_len, device=query.device
    )[:, None]
    probs = logits.masked_fill(future, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()
