"""Compression policies: pure torch, no vLLM. `make_policy` turns a config into a `KVPolicy`: its budget
layout (`policy.layout`, `layout.py`: how many tokens each layer keeps, tiers, compression points, peaks)
and its selector (`policy.selector`, `selector.py`: which tokens), built per policy in its module."""

from __future__ import annotations

from ..config import KVPolicyConfig
from .base import HeadGather, KVPolicy, RequestCompressor
from .full import full
from .plan import LayerPlan, PromptView, apply_plan
from .pod import pod
from .pyramid import pyramid, pyramid_budgets, staircase
from .snapkv import snapkv
from .streaming import streaming
from .windowkv import windowkv
from .windowkv_per_head import windowkv_per_head

POLICIES = {
    "full": full,
    "streaming": streaming,
    "snapkv": snapkv,
    "pyramid": pyramid,
    "windowkv": windowkv,
    "windowkv-per-head": windowkv_per_head,
    "pod": pod,
}  # policy name -> (config, num_layers) -> (layout, selector)


def make_policy(config: KVPolicyConfig, num_layers: int) -> KVPolicy:
    """The policy for `config` on a model with `num_layers` layers (validated against it)."""
    config.check_model(num_layers)
    layout, selector = POLICIES[config.policy](config, num_layers)
    return KVPolicy(config, num_layers, layout, selector)


def incompatibility(server: KVPolicy, request: KVPolicy) -> str | None:
    """Why a server built for `server`'s KV cache groups cannot serve `request`'s policy, or None.

    The server gives each tier of its policy (layers sharing a budget) its own KV cache group; a request
    policy fits when every tier's layers keep equal counts under it too. PoD's shared-key layout is engine-wide only.
    """
    if (server.name == "pod") != (request.name == "pod"):
        return f"policy 'pod' changes the cache layout and is engine-wide only; this server runs '{server.name}'"
    if server.name == "pod" and any(
        server.layout.owner_layer(i) != request.layout.owner_layer(i) for i in range(server.num_layers)
    ):
        return "pod's layer groups (groups, group_size) are engine-wide: member layers read their owners' caches"
    tiers: dict[int, int] = {}
    for layer in range(server.num_layers):
        tier = request.layout.budget_tier(layer)
        if tiers.setdefault(server.layout.budget_tier(layer), tier) != tier:
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
