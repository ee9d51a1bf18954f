"""Training attention in PoD's serving-time geometry, as a transformers attention function.

A training sequence is a prompt (its first `prompt_len` tokens) and a continuation. Prompt queries
attend causally with every layer's own keys, as vLLM's prefill does. Continuation queries attend as
decode does after compaction: proximal tokens (the prompt's first `sink` and last `recent`, and the
continuation) with the layer's own keys, distant tokens with the owner layer's keys (from this same
forward), values always the layer's own. Rows of a batch share `prompt_len`; no padding.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

TRAIN_ATTENTION = "kvcomp_pod_train"


@dataclass
class PoDGeometry:
    """Owner of each layer, and the proximal token counts."""

    owners: list[int]
    sink: int
    recent: int

    @classmethod
    def from_config(cls, config, num_layers: int) -> PoDGeometry:
        owners = {layer: group[0] for group in config.pod_groups(num_layers) for layer in group}
        return cls([owners[layer] for layer in range(num_layers)], config.sink, config.recent)


@dataclass
class _Forward:
    geometry: PoDGeometry
    prompt_len: int
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # owner layer -> its keys in this forward


_FORWARD: contextvars.ContextVar[_Forward] = contextvars.ContextVar("kvcomp_pod_train")


def mixed_keys(own: torch.Tensor, owner: torch.Tensor, prompt_len: int, sink: int, recent: int) -> torch.Tensor:
    """Keys `[batch, kv_heads, tokens, d]` a member layer's continuation queries see: the owner's at the
    distant positions `sink .. prompt_len - recent`, its own elsewhere."""
    start, stop = min(sink, prompt_len), prompt_len - recent
    if stop <= start:
        return own
    return torch.cat([own[:, :, :start], owner[:, :, start:stop], own[:, :, stop:]], dim=2)


def pod_train_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """`[batch, tokens, heads, d]` attention output in the serving geometry of the active `pod_forward`."""
    run = _FORWARD.get()
    layer, n, tokens = module.layer_idx, run.prompt_len, query.shape[2]
    owner = run.geometry.owners[layer]
    if owner == layer:
        run.keys[layer] = key
    gqa = query.shape[1] != key.shape[1]
    prompt = F.scaled_dot_product_attention(query[:, :, :n], key[:, :, :n], value[:, :, :n], is_causal=True,
                                            scale=scaling, enable_gqa=gqa)
    if tokens == n:
        return prompt.transpose(1, 2).contiguous(), None
    keys = key if owner == layer else mixed_keys(key, run.keys[owner], n, run.geometry.sink, run.geometry.recent)
    positions = torch.arange(tokens, device=query.device)
    visible = positions[None, :] <= positions[n:, None]
    later = F.scaled_dot_product_attention(query[:, :, n:], keys, value, attn_mask=visible, scale=scaling,
                                           enable_gqa=gqa)
    return torch.cat([prompt, later], dim=2).transpose(1, 2).contiguous(), None


@contextmanager
def pod_forward(model, geometry: PoDGeometry, prompt_len: int) -> Iterator[None]:
    """Run `model`'s forwards inside with PoD training attention for prompts of `prompt_len` tokens."""
    from transformers import AttentionInterface

    AttentionInterface.register(TRAIN_ATTENTION, pod_train_attention)
    before = model.config._attn_implementation
    model.set_attn_implementation(TRAIN_ATTENTION)
    token = _FORWARD.set(_Forward(geometry, prompt_len))
    try:
        yield
    finally:
        _FORWARD.reset(token)
        model.set_attn_implementation(before)
