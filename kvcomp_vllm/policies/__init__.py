"""Compression policies: pure torch, no vLLM. `make_policy` turns a config into a policy object."""

from __future__ import annotations

from ..config import KVPolicyConfig
from .base import HeadGather, KVPolicy, LayerPlan, PromptView, RequestCompressor, apply_plan
from .full import FullPolicy
from .pod import PoDPolicy
from .pyramid import PyramidPolicy, pyramid_budgets, staircase
from .snapkv import SnapKVPolicy
from .streaming import StreamingPolicy
from .windowkv import WindowKVPolicy
from .windowkv_per_head import PerHeadWindowKVPolicy

POLICIES: dict[str, type[KVPolicy]] = {
    cls.name: cls
    for cls in (FullPolicy, StreamingPolicy, SnapKVPolicy, PyramidPolicy, WindowKVPolicy, PerHeadWindowKVPolicy, PoDPolicy)
}


def make_policy(config: KVPolicyConfig, num_layers: int) -> KVPolicy:
    """The policy object for `config` on a model with `num_layers` layers (validated against it)."""
    return POLICIES[config.policy](config, num_layers)


def incompatibility(server: KVPolicy, request: KVPolicy) -> str | None:
    """Why a server built for `server`'s KV cache groups cannot serve `request`'s policy, or None.

    The server gives each tier of its policy (layers sharing a budget) its own KV cache group; a request
    policy fits when every tier's layers keep equal counts under it too. PoD's shared-key layout is engine-wide only.
    """
    if (server.name == "pod") != (request.name == "pod"):
        return f"policy 'pod' changes the cache layout and is engine-wide only; this server runs '{server.name}'"
    if server.name == "pod" and any(server.owner_layer(i) != request.owner_layer(i) for i in range(server.num_layers)):
        return "pod's layer groups (groups, group_size) are engine-wide: member layers read their owners' caches"
    tiers: dict[int, int] = {}
    for layer in range(server.num_layers):
        if tiers.setdefault(server.budget_tier(layer), request.budget_tier(layer)) != request.budget_tier(layer):
            return (
                f"policy '{request.name}' needs per-layer budgets that this server's KV groups (policy "
                f"'{server.name}') cannot hold; start the server with --kv-policy {request.name} to serve it"
            )
    return None


__all__ = [
    "POLICIES",
    "HeadGather",
    "KVPolicy",
    "LayerPlan",
    "PromptView",
    "RequestCompressor",
    "apply_plan",
    "incompatibility",
    "make_policy",
    "pyramid_budgets",
    "staircase",
]
