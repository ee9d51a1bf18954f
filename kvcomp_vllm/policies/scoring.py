"""Helpers on observation-window scores shared by the policies: concentration, pooling, top positions.

The scores themselves are `kvcomp_kernels.attention.observation_scores`, also the kernels' reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def concentration_shares(scores: torch.Tensor) -> torch.Tensor:
    """Per head, the share of its observation attention mass on its top 5% of prefix tokens: `[heads]`."""
    top = max(1, math.ceil(0.05 * scores.shape[-1]))
    return scores.topk(top, dim=-1).values.sum(-1) / scores.sum(-1).clamp_min(1e-30)


def attention_concentration(scores: torch.Tensor) -> float:
    """Share of the observation attention mass on the top 5% of prefix tokens, mean over heads (windowkv's auto)."""
    return float(concentration_shares(scores).mean())


def pool_scores(scores: torch.Tensor, pool_size: int, pooling: str) -> torch.Tensor:
    """Smooth `[heads, m]` scores along positions with an odd 1-D pooling of `pool_size` tokens, so
    neighbours of strong tokens survive."""
    if pool_size == 1 or scores.shape[-1] == 0:
        return scores
    x = scores.unsqueeze(1)
    if pooling == "avg":
        x = F.avg_pool1d(x, pool_size, stride=1, padding=pool_size // 2, count_include_pad=True)
    else:
        x = F.max_pool1d(x, pool_size, stride=1, padding=pool_size // 2)
    return x.squeeze(1)


def top_positions(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` highest scores per row; ties go to the earlier position on every device."""
    return scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]


def with_window(chosen: torch.Tensor, prefix_len: int, prompt_len: int) -> torch.Tensor:
    """Chosen prefix positions `[heads, k]` plus the observation window `prefix_len..prompt_len-1`,
    ascending: `[heads, k + prompt_len - prefix_len]`."""
    window = torch.arange(prefix_len, prompt_len, device=chosen.device).expand(chosen.shape[0], -1)
    return torch.cat([chosen, window], dim=-1).sort(dim=-1).values
