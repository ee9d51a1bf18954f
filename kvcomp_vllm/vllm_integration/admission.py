"""Per-request kvcomp settings, checked in the front end before a request reaches the engine.

A request may carry its own settings in `SamplingParams.extra_args` (`{"kvcomp": {...}}` or flat
`kv_<field>` keys; `server_http` puts HTTP body fields there). They are validated against the server's policy and model where vLLM validates
every request, so a bad override fails that request alone with a clear message, and no request is
served with other settings than it asked for.

A compressing server may have a `max_model_len` longer than its KV pool holds uncompressed (start-up
only asks the pool to hold one compressed prompt of that length). Each request's peak footprint
(prompt, budget, `prefill_chunk` and `max_tokens`) is therefore checked against the pool here, so
a request that could never fit fails at once rather than waiting forever.
"""

from __future__ import annotations

from pydantic import ValidationError

from ..config import POLICY_FIELDS, KVPolicyConfig, request_config, settings_error
from ..policies import KVPolicy, incompatibility, make_policy
from ..policies.protected import protected_policy
from .compat import InputProcessor, RequestRejected, cdiv, kv_cache_group_sizes, patch, pool_blocks, prefix_caching
from .metrics import count_refused_override
from .prefix_cache import protected_prefix
from .settings import (
    adopt_new_names,
    client_prefix,
    model_layers,
    override_rules,
    request_overrides,
    request_policy,
    resolve,
    server_policy,
)


def check_request(vllm_config, sampling_params) -> KVPolicyConfig:
    """The settings a request runs with, resolved once into its sampling params (`settings.resolve`)
    for every later stage; ValueError, naming the field as sent, where they cannot be served."""
    server = server_policy(vllm_config)
    config = _checked_config(vllm_config, server, sampling_params)
    resolve(sampling_params, None if config == server.config else config)
    return config


def _checked_config(vllm_config, server: KVPolicy, sampling_params) -> KVPolicyConfig:
    overrides = request_overrides(sampling_params)
    if not overrides:
        return server.config
    prefix = client_prefix(sampling_params)
    try:
        config = request_config(server.config, overrides, prefix)
        config.check_model(server.num_layers, vllm_config.model_config.max_model_len, prefix)
    except ValidationError as err:
        raise ValueError(f"kvcomp: invalid settings in request: {settings_error(err, prefix)}") from None
    except ValueError as err:
        raise ValueError(f"kvcomp: invalid settings in request: {err}") from None
    adopt_new_names(sampling_params)
    if server.name == "full":
        if config.policy != "full":
            raise ValueError("kvcomp: this server runs without KV compression; start it with --kv-policy to allow per-request policies")
        return config
    reason = incompatibility(server, make_policy(config, server.num_layers))
    if reason:
        raise ValueError(f"kvcomp: {reason}")
    return config


Untouched = tuple[int, int]  # a hybrid model's layers left to vLLM (sliding-window) and the tokens each holds


def peak_blocks(policy: KVPolicy, server: KVPolicy, block_size: int, prompt_len: int, max_tokens: int,
                untouched: Untouched = (0, 0)) -> int:
    """Blocks a request holds at its peak: each KV cache group (of a tier of the server's policy, or of
    the `untouched` layers) has its own."""
    return _blocks(server, block_size, lambda layer: policy.layout.peak_slots(layer, prompt_len, max_tokens), untouched)


def held_blocks(policy: KVPolicy, server: KVPolicy, block_size: int, prompt_len: int, max_tokens: int,
                untouched: Untouched = (0, 0)) -> int:
    """Blocks a request holds through its decode, once its prompt is compressed and its tokens generated."""
    return _blocks(server, block_size, lambda layer: policy.layout.layer_slots(layer, prompt_len) + max_tokens, untouched)


def _blocks(server: KVPolicy, block_size: int, slots, untouched: Untouched) -> int:
    tiers = server.layout.tier_layers()
    layers, tokens = untouched
    groups = kv_cache_group_sizes([len(tier) for tier in tiers.values()] + ([layers] if layers else []))
    held = sum(count * cdiv(slots(tier[0]), block_size) for count, tier in zip(groups, tiers.values()))
    # vLLM's sliding-window bound: the window's blocks, plus one where the window starts mid-block.
    return held + (groups[-1] * (cdiv(tokens, block_size) + 1) if layers else 0)


def untouched_layers(vllm_config, prompt_len: int, max_tokens: int, in_flight: int = 1) -> Untouched:
    """A hybrid model's layers that vLLM's own manager holds, and the tokens each holds at most for this request
    with `in_flight` tokens scheduled at once: its sliding window's, or every token where it has none."""
    layers = model_layers(vllm_config)
    if not layers.hybrid:
        return 0, 0
    window = getattr(vllm_config.model_config.hf_text_config, "sliding_window", None)
    total = prompt_len + max_tokens
    return layers.num_model_layers - layers.count, total if not window else min(window - 1 + in_flight, total)


def with_cache_prefix(vllm_config, policy: KVPolicy, prompt_len: int):
    """`policy` after the prefix its `cache_prefix` keeps raw whatever the cache holds (prefix caching on):
    what a request holds at least; hits add the same to every setting."""
    if not prefix_caching(vllm_config):
        return policy
    return protected_policy(policy, protected_prefix(policy, prompt_len, 0, vllm_config.cache_config.block_size))


def check_overrides(vllm_config, prompt_len: int, sampling_params) -> None:
    """Raise `RequestRejected` where a request's own settings cannot serve its prompt (a ratio budget
    below the window) or go past what the operator allows (`OverrideRules`, refusals counted by reason)."""
    asked = request_overrides(sampling_params)
    server = server_policy(vllm_config)
    if not asked or server.name == "full":
        return
    policy, prefix = request_policy(server, sampling_params), client_prefix(sampling_params)
    block_size = vllm_config.cache_config.block_size
    if "budget" in asked:
        try:
            policy.config.check_prompt(prompt_len, prefix)
        except ValueError as err:
            raise RequestRejected(f"kvcomp: invalid settings in request: {err}") from None
    rules = override_rules(vllm_config)
    refusal = rules.refusal(policy.config, asked, prompt_len, prefix)
    if refusal is None and rules.allow == "lower":
        max_tokens = sampling_params.max_tokens or 1
        untouched = untouched_layers(vllm_config, prompt_len, max_tokens)
        asked_policy = with_cache_prefix(vllm_config, policy, prompt_len)
        asks = held_blocks(asked_policy, server, block_size, prompt_len, max_tokens, untouched)
        owns = held_blocks(with_cache_prefix(vllm_config, server, prompt_len), server, block_size, prompt_len, max_tokens,
                           untouched)
        if asks > owns:
            refusal = "footprint", (
                f"these settings would hold {asks} KV cache blocks through this request's decode, more than the "
                f"server's own settings ({owns}); this server allows per-request settings that keep no more KV "
                "(--kv-overrides lower)"
            )
    if refusal is not None:
        reason, message = refusal
        count_refused_override(reason)
        raise RequestRejected(f"kvcomp: {message}")


def check_footprint(vllm_config, prompt_len: int, sampling_params) -> None:
    """Raise `RequestRejected` (a ValueError) where a request's peak KV footprint exceeds the whole pool."""
    pool = pool_blocks(vllm_config)
    server = server_policy(vllm_config)
    if pool is None or server.name == "full" or sampling_params is None:
        return
    policy = request_policy(server, sampling_params)
    max_tokens = sampling_params.max_tokens or 1
    in_flight = getattr(vllm_config, "max_in_flight_tokens", None)  # 0.32; 0.26 has one step in flight
    in_flight = in_flight or vllm_config.scheduler_config.max_num_batched_tokens
    untouched = untouched_layers(vllm_config, prompt_len, max_tokens, in_flight)
    protected = with_cache_prefix(vllm_config, policy, prompt_len)
    need = peak_blocks(protected, server, vllm_config.cache_config.block_size, prompt_len, max_tokens, untouched)
    if need <= pool:
        return
    hint = "lower max_tokens or the budget"
    if policy.config.prefill_chunk is None and "prefill_chunk" in POLICY_FIELDS[policy.name]:
        hint += ", or set prefill_chunk (--kv-prefill-chunk) to compress the prompt while it is read"
    raise RequestRejected(
        f"kvcomp: this request needs {need} KV cache blocks at its peak ({prompt_len} prompt tokens under "
        f"{policy.config.describe()}, max_tokens={max_tokens}), more than the {pool} blocks of the KV pool; {hint}"
    )


def _process_inputs(original):
    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        prompt = request.prompt_token_ids
        if prompt is not None and request.sampling_params is not None:
            check_overrides(self.vllm_config, len(prompt), request.sampling_params)
            check_footprint(self.vllm_config, len(prompt), request.sampling_params)
        return request

    return process_inputs


def _validate_params(original):
    def validate_params(self, params, *args, **kwargs):
        result = original(self, params, *args, **kwargs)
        check_request(self.vllm_config, params)
        return result

    return validate_params


def install_admission_hooks() -> None:
    """Check per-request settings and footprints where vLLM validates every request (idempotent)."""
    patch(InputProcessor, "_validate_params", _validate_params)
    patch(InputProcessor, "process_inputs", _process_inputs)
