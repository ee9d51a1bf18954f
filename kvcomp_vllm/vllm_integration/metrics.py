"""Prometheus metrics on vLLM's `/metrics`, recorded where each request enters the engine.

What a request keeps follows from its policy and its prompt length alone, so the front end can
count it exactly as the engine will hold it: requests by policy, prompt tokens kept and evicted
(per layer, summed), KV blocks saved (blocks of one layer) and the share of prompt KV kept.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram

from .compat import InputProcessor, cdiv, patch
from .settings import request_policy, server_policy


class _Metrics:
    """kvcomp's collectors, made on first use: vLLM's stat logger unregisters every `vllm:`
    collector when an engine starts, so they are (re)registered after that, keeping their counts."""

    def __init__(self):
        self.requests = Counter("vllm:kvcomp_requests", "Requests by KV compression policy.", ["policy"])
        self.prompt_tokens = Counter(
            "vllm:kvcomp_prompt_tokens", "Prompt token-layers kept or evicted after prefill.", ["policy", "outcome"]
        )
        self.blocks_saved = Counter("vllm:kvcomp_kv_blocks_saved", "KV blocks of one layer freed after prefill.", ["policy"])
        self.kept_ratio = Histogram(
            "vllm:kvcomp_kept_ratio",
            "Share of the prompt's KV kept after prefill (all layers).",
            ["policy"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0),
        )

    def registered(self) -> _Metrics:
        for collector in (self.requests, self.prompt_tokens, self.blocks_saved, self.kept_ratio):
            if collector not in REGISTRY._collector_to_names:
                REGISTRY.register(collector)
        return self


_METRICS: list[_Metrics] = []


def metrics() -> _Metrics:
    """kvcomp's collectors, registered with the registry vLLM serves on `/metrics`."""
    if not _METRICS:
        _METRICS.append(_Metrics())
    return _METRICS[0].registered()


def observe(vllm_config, prompt_len: int, sampling_params) -> None:
    """Count an admitted request under the settings it runs with: as `n` engine requests, since
    each of its `n` sequences is prefilled and holds the prompt's KV on its own."""
    policy = request_policy(server_policy(vllm_config), sampling_params)
    n = getattr(sampling_params, "n", 1) or 1
    layers = policy.num_layers
    block_size = vllm_config.cache_config.block_size
    kept = [policy.layer_slots(layer, prompt_len) for layer in range(layers)]
    name, m = policy.name, metrics()
    m.requests.labels(name).inc(n)
    m.prompt_tokens.labels(name, "kept").inc(n * sum(kept))
    m.prompt_tokens.labels(name, "evicted").inc(n * (layers * prompt_len - sum(kept)))
    m.blocks_saved.labels(name).inc(n * sum(cdiv(prompt_len, block_size) - cdiv(k, block_size) for k in kept))
    for _ in range(n):
        m.kept_ratio.labels(name).observe(sum(kept) / (layers * prompt_len) if prompt_len else 1.0)


def _process_inputs(original):
    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        if request.sampling_params is not None and request.prompt_token_ids is not None:
            observe(self.vllm_config, len(request.prompt_token_ids), request.sampling_params)
        return request

    return process_inputs


def install_metrics_hooks() -> None:
    """Count every request vLLM admits (idempotent)."""
    patch(InputProcessor, "process_inputs", _process_inputs)
