"""Plain eager attention, the semantic reference of the kernels: causal attention (PoD's decode) and the
observation-window scores (window scoring, and the policies' signal)."""

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


def observation_scores(keys: torch.Tensor, queries: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention the window queries pay each prefix token: `[num_kv_heads, prompt_len - window]`.

    keys: `[num_kv_heads, n, d]`; queries: `[num_heads, w, d]`, the queries of positions n-w..n-1.
    Each query row is a causal softmax over all n keys (as in the model's own attention); the
    prefix columns are summed over the window and averaged over the query heads of each KV head (its GQA group).
    """
    num_kv_heads, n, d = keys.shape
    num_heads, w, _ = queries.shape
    dtype = torch.promote_types(keys.dtype, torch.float32)  # at least fp32, whatever the cache dtype
    q = queries.to(dtype).view(num_kv_heads, num_heads // num_kv_heads, w, d)
    logits = torch.einsum("hgwd,hnd->hgwn", q, keys.to(dtype)) * scale
    future = torch.arange(n, device=keys.device) > torch.arange(n - w, n, device=keys.device)[:, None]
    probs = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
    return probs[..., : n - w].sum(dim=2).mean(dim=1)
