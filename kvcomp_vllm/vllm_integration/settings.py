"""Where the engine-wide policy lives in a vLLM config: `additional_config["kvcomp"]`.

`additional_config` is part of the `VllmConfig` that vLLM ships to the engine core and every
worker, so all processes read the same validated settings from it.
"""

from __future__ import annotations

from typing import Any

from ..config import KVPolicyConfig

CONFIG_KEY = "kvcomp"


def engine_settings(vllm_config: Any) -> dict | None:
    """The raw kvcomp settings of an engine, or None where none were given."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    return extra.get(CONFIG_KEY) if isinstance(extra, dict) else None


def engine_policy(vllm_config: Any) -> KVPolicyConfig | None:
    """The engine's compressing policy, or None when it serves full KV (vLLM's own path)."""
    settings = engine_settings(vllm_config)
    if not settings:
        return None
    config = KVPolicyConfig(**settings)
    return None if config.policy == "full" else config
