"""Where kvcomp's settings live: the server's in `additional_config["kvcomp"]` (what requests may
change of them in `additional_config["kvcomp_overrides"]`), a request's in `SamplingParams.extra_args["kvcomp"]`.

`additional_config` is part of the `VllmConfig` that vLLM ships to the engine core and every
worker, and sampling params travel with each request, so every process reads the same settings.
"""

from __future__ import annotations

import json
from typing import Any
from functools import lru_cache

from ..config import RENAMED, KVPolicyConfig, request_config
from ..overrides import OverrideRules
from ..policies import KVPolicy, make_policy
from .attention_layers import CompressedLayers, compressed_layers

CONFIG_KEY = "kvcomp"
OVERRIDES_KEY = "kvcomp_overrides"  # the operator's rules for per-request settings (`OverrideRules`)


def engine_settings(vllm_config: Any) -> dict | None:
    """The raw kvcomp settings of an engine, or None where none were given."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    return extra.get(CONFIG_KEY) if isinstance(extra, dict) else None


def override_rules(vllm_config: Any) -> OverrideRules:
    """What the engine lets a request change of its settings. `vllm serve` always sets rules (`allow:
    lower` by default); an engine built in Python without them serves its own process: `allow: any`."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    rules = extra.get(OVERRIDES_KEY) if isinstance(extra, dict) else None
    return _rules(json.dumps({"allow": "any"} if rules is None else rules, sort_keys=True))


@lru_cache(maxsize=16)
def _rules(rules_json: str) -> OverrideRules:
    return OverrideRules(**json.loads(rules_json))


def num_layers(vllm_config: Any) -> int:
    """Layers the policy compresses: the model's full-attention decoder layers (all of them but a hybrid
    model's sliding-window ones, `attention_layers`)."""
    return model_layers(vllm_config).count


def model_layers(vllm_config: Any) -> CompressedLayers:
    """The engine's model's full-attention layers, which the policy compresses."""
    return compressed_layers(vllm_config.model_config.hf_text_config)


def server_policy(vllm_config: Any) -> KVPolicy:
    """The server's policy as requests see it: `full` where no kvcomp settings were given."""
    config = KVPolicyConfig(**(engine_settings(vllm_config) or {"policy": "full"}))
    return _policy(config.model_dump_json(exclude_unset=True), num_layers(vllm_config))


def engine_policy(vllm_config: Any) -> KVPolicyConfig | None:
    """The engine's compressing policy, or None when it serves full KV (vLLM's own path)."""
    settings = engine_settings(vllm_config)
    if not settings:
        return None
    config = KVPolicyConfig(**settings)
    return None if config.policy == "full" else config


FLAT_PREFIX = "kv_"  # flat form, as HTTP fields or vllm_xargs carry it: kv_policy, kv_budget, ...


def request_overrides(sampling_params: Any) -> dict | None:
    """A request's own kvcomp settings: `extra_args["kvcomp"]` and flat `kv_<field>` keys, or None."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    nested = extra.get(CONFIG_KEY)
    flat = {k.removeprefix(FLAT_PREFIX): v for k, v in extra.items() if k.startswith(FLAT_PREFIX)}
    if not flat:
        return nested
    return {**(nested if isinstance(nested, dict) else {}), **flat}


def adopt_new_names(sampling_params: Any) -> None:
    """Rename a request's deprecated fields (`kv_kernel`, `kvcomp: {kernel: ...}`) to their new names in
    place, once the front end has validated them, so the engine's processes read the new names only."""
    extra = getattr(sampling_params, "extra_args", None)
    if not extra:
        return
    for old, new in RENAMED.items():
        if FLAT_PREFIX + old in extra:
            extra.setdefault(FLAT_PREFIX + new, extra.pop(FLAT_PREFIX + old))  # both: equal, as validated
        nested = extra.get(CONFIG_KEY)
        if isinstance(nested, dict) and old in nested:
            nested = dict(nested)
            nested.setdefault(new, nested.pop(old))
            extra[CONFIG_KEY] = nested


def client_prefix(sampling_params: Any) -> str:
    """How a request spelled its fields: `kv_` where it sent flat keys (as HTTP bodies do), else bare."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    return FLAT_PREFIX if any(k.startswith(FLAT_PREFIX) for k in extra) else ""


RESOLVED_KEY = "kvcomp_resolved"  # extra_args: the settings admission resolved for the request (JSON)


PROTECTED_KEY = "kvcomp_protected"  # extra_args: the protected prefix the scheduler fixed (prefix caching on)


def resolve(sampling_params: Any, config: KVPolicyConfig | None) -> None:
    """Record the settings admission resolved for a request, where they differ from the server's
    (`config`; None: the server's). It replaces whatever a client sent under that key, and drops a
    client's protected prefix (only the scheduler sets one)."""
    extra = getattr(sampling_params, "extra_args", None)
    if extra and PROTECTED_KEY in extra:
        extra = sampling_params.extra_args = {k: v for k, v in extra.items() if k != PROTECTED_KEY}
    if config is not None:
        sampling_params.extra_args = {**(extra or {}), RESOLVED_KEY: config.model_dump_json(exclude_unset=True)}
    elif extra and RESOLVED_KEY in extra:
        sampling_params.extra_args = {k: v for k, v in extra.items() if k != RESOLVED_KEY}


def set_protected(sampling_params: Any, tokens: int) -> None:
    """Record the protected prefix the scheduler fixed for a request, which its workers keep raw."""
    sampling_params.extra_args = {**(getattr(sampling_params, "extra_args", None) or {}), PROTECTED_KEY: tokens}


def fixed_protected(sampling_params: Any) -> int | None:
    """The protected prefix the scheduler fixed for a request (`set_protected`), or None."""
    value = (getattr(sampling_params, "extra_args", None) or {}).get(PROTECTED_KEY)
    return value if type(value) is int else None


def request_policy(server: KVPolicy, sampling_params: Any) -> KVPolicy:
    """The policy a request runs with, as admission resolved it (`resolve`): every stage after
    admission (scheduler, block accounting, workers, metrics) reads this and merges nothing."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    resolved = extra.get(RESOLVED_KEY)
    return server if resolved is None else _policy(resolved, server.num_layers)


@lru_cache(maxsize=256)
def _policy(config_json: str, num_layers: int) -> KVPolicy:
    return make_policy(KVPolicyConfig.model_validate_json(config_json), num_layers)


_SERVED: list = []  # the engine config this process built (the API server's), newest last


def remember_served(vllm_config: Any) -> None:
    """Record the engine config this process serves, for checks made before a request reaches it."""
    _SERVED[:] = [vllm_config]


def served_config() -> Any | None:
    """The engine config this process built, or None in processes that build none."""
    return _SERVED[-1] if _SERVED else None
