"""Compression policies: pure torch, no vLLM. `make_policy` turns a config into a policy object."""

from __future__ import annotations

from ..config import KVPolicyConfig
from .base import KVPolicy, LayerPlan, RequestCompressor, apply_plan
from .full import FullPolicy
from .pod import PoDPolicy
from .pyramid import PyramidPolicy, pyramid_budgets
from .snapkv import SnapKVPolicy
from .streaming import StreamingPolicy
from .windowkv import WindowKVPolicy

POLICIES: dict[str, type[KVPolicy]] = {
    cls.name: cls
    for cls in (FullPolicy, StreamingPolicy, SnapKVPolicy, PyramidPolicy, WindowKVPolicy, PoDPolicy)
}


def make_policy(config: KVPolicyConfig, num_layers: int) -> KVPolicy:
    """The policy object for `config` on a model with `num_layers` layers (validated against it)."""
    return POLICIES[config.policy](config, num_layers)


__all__ = [
    "POLICIES",
    "KVPolicy",
    "LayerPlan",
    "RequestCompressor",
    "apply_plan",
    "make_policy",
    "pyramid_budgets",
]
