"""Prometheus metrics on vLLM's `/metrics`, served by the API server.

What a request keeps follows from its policy and its prompt length alone, so the front end counts
it where it enters the engine, exactly as the engine will hold it: requests by policy, prompt tokens
kept and evicted (per layer, summed), KV blocks saved (blocks of one layer) and the share of prompt
KV kept. Scoring and compaction time are measured on the workers (`timing`) and pulled from them
when `/metrics` is scraped.
"""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .compat import InputProcessor, cdiv, init_logger, patch
from .settings import request_policy, server_policy
from .timing import BUCKETS, RPC_METHOD, STAGES, install_timing_rpc

logger = init_logger("vllm.kvcomp")


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
        self.refused_overrides = Counter(
            "vllm:kvcomp_refused_overrides", "Requests refused for per-request KV settings the operator does not allow.",
            ["reason"],
        )
        self.worker_timings = WorkerTimings()

    def registered(self) -> _Metrics:
        collectors = (self.requests, self.prompt_tokens, self.blocks_saved, self.kept_ratio, self.refused_overrides)
        for collector in (*collectors, self.worker_timings):
            if collector not in REGISTRY._collector_to_names:
                REGISTRY.register(collector)
        return self


class WorkerTimings:
    """Collector of `vllm:kvcomp_scoring_seconds` and `vllm:kvcomp_compaction_seconds` by policy:
    the workers' histograms as last pulled, summed over workers."""

    def __init__(self):
        self.latest: dict[str, dict[str, list]] = {}

    def update(self, snapshots: list[dict]) -> None:
        """Replace the histograms by the sum of the workers' `timing.snapshot()`s."""
        merged: dict[str, dict[str, list]] = {}
        for snapshot in snapshots:
            for stage, policies in snapshot.items():
                for policy, (counts, total) in policies.items():
                    into = merged.setdefault(stage, {}).setdefault(policy, [[0] * len(counts), 0.0])
                    into[0] = [a + b for a, b in zip(into[0], counts)]
                    into[1] += total
        self.latest = merged

    def describe(self):
        return [self._family(stage) for stage in STAGES]

    def collect(self):
        families = []
        for stage in STAGES:
            family = self._family(stage)
            for policy, (counts, total) in sorted(self.latest.get(stage, {}).items()):
                cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
                bounds = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
                family.add_metric([policy], list(zip(bounds, cumulative)), total)
            families.append(family)
        return families

    @staticmethod
    def _family(stage: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            f"vllm:kvcomp_{stage}_seconds", f"Time per KV {stage} call on the workers.", labels=["policy"]
        )


async def pull_worker_timings(engine_client, timeout: float = 5.0) -> None:
    """Refresh the timing histograms from every worker; they answer between engine steps. A busy or
    dead engine leaves the last values in place rather than failing `/metrics`."""
    try:
        snapshots = await asyncio.wait_for(engine_client.collective_rpc(RPC_METHOD), timeout)
    except Exception as err:  # noqa: BLE001 - any failure here must not fail the scrape
        logger.warning("kvcomp: worker timings not refreshed (%s: %s)", type(err).__name__, err)
        return
    metrics().worker_timings.update(snapshots)


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


def count_refused_override(reason: str) -> None:
    """Count a request refused by the operator's override rules (`overrides.REASONS`)."""
    metrics().refused_overrides.labels(reason).inc()


def _process_inputs(original):
    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        if request.sampling_params is not None and request.prompt_token_ids is not None:
            observe(self.vllm_config, len(request.prompt_token_ids), request.sampling_params)
        return request

    return process_inputs


def install_metrics_hooks() -> None:
    """Count every request vLLM admits, and let the API server read the workers' timings (idempotent)."""
    patch(InputProcessor, "process_inputs", _process_inputs)
    install_timing_rpc()
