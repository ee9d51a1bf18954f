"""Prometheus metrics on vLLM's `/metrics`, served by the API server.

The front end counts the requests it admits, by the policy each runs with. What the prompts kept
is measured on the workers (`compacted`: token-layers kept and evicted, KV blocks of one layer
saved, the share of prompt KV kept), as are scoring and compaction times (`timing`); the API server
pulls both from the workers of every engine when `/metrics` is scraped. Counts come from one
tensor-parallel rank per engine (every rank compacts the same tokens, each for its own heads), summed
over data-parallel engines (each request runs on one); timings carry a `rank` label, unique across engines.
"""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import compacted
from .compacted import RATIO_BUCKETS
from .compat import InputProcessor, init_logger, patch, rpc_every_engine
from .report import RPC_METHOD, install_report_rpc
from .settings import request_policy, server_policy
from .timing import BUCKETS, STAGES

logger = init_logger("vllm.kvcomp")


class _Metrics:
    """kvcomp's collectors, made on first use: vLLM's stat logger unregisters every `vllm:`
    collector when an engine starts, so they are (re)registered after that, keeping their counts."""

    def __init__(self):
        self.requests = Counter("vllm:kvcomp_requests", "Requests by KV compression policy.", ["policy"])
        self.refused_overrides = Counter(
            "vllm:kvcomp_refused_overrides", "Requests refused for per-request KV settings the operator does not allow.",
            ["reason"],
        )
        self.workers = WorkerReports()

    def registered(self) -> _Metrics:
        for collector in (self.requests, self.refused_overrides, self.workers):
            if collector not in REGISTRY._collector_to_names:
                REGISTRY.register(collector)
        return self


def _histogram(family: HistogramMetricFamily, labels: list[str], bounds: tuple, counts: list[int], total: float) -> None:
    """Add one histogram from per-bucket counts (last is +Inf) to `family`."""
    cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
    family.add_metric(labels, list(zip([floatToGoString(b) for b in bounds] + ["+Inf"], cumulative)), total)


class WorkerReports:
    """Collector of what the workers last reported (`report.worker_report`): per-rank timing
    histograms by policy, and each engine's lowest rank's counts of what compaction kept, summed."""

    def __init__(self):
        self.timings: dict[int, dict] = {}  # rank -> timing.snapshot()
        self.compacted: dict[str, dict] = {}  # compacted.snapshot() of each engine's lowest rank, summed

    def update(self, reports: list[dict]) -> None:
        """Replace the values by these workers' reports."""
        self.timings = {r["rank"]: r["timings"] for r in reports}
        lowest: dict[int, dict] = {}
        for r in sorted(reports, key=lambda r: r["rank"]):
            lowest.setdefault(r.get("engine", 0), r)
        self.compacted = compacted.summed([r["compacted"] for r in lowest.values()])

    def describe(self):
        return self._families()

    def collect(self):
        families = self._families()
        tokens, blocks, ratio, prefix, *stages = families
        for policy, c in sorted(self.compacted.items()):
            tokens.add_metric([policy, "kept"], c["kept"])
            tokens.add_metric([policy, "evicted"], c["evicted"])
            prefix.add_metric([policy, "protected"], c["protected"])
            prefix.add_metric([policy, "compressed"], c["compressed"])
            blocks.add_metric([policy], c["blocks_saved"])
            _histogram(ratio, [policy], RATIO_BUCKETS, *c["ratio"])
        for stage, family in zip(STAGES, stages):
            for rank, snapshot in sorted(self.timings.items()):
                for policy, (counts, total) in sorted(snapshot.get(stage, {}).items()):
                    _histogram(family, [policy, str(rank)], BUCKETS, counts, total)
        return families

    @staticmethod
    def _families() -> list:
        return [
            CounterMetricFamily("vllm:kvcomp_prompt_tokens", "Prompt token-layers kept or evicted by compaction.",
                                labels=["policy", "outcome"]),
            CounterMetricFamily("vllm:kvcomp_kv_blocks_saved", "KV blocks of one layer freed by compaction.", labels=["policy"]),
            HistogramMetricFamily("vllm:kvcomp_kept_ratio", "Share of the prompt's KV kept after compaction (all layers).",
                                  labels=["policy"]),
            CounterMetricFamily("vllm:kvcomp_prefix_tokens", "Prompt tokens kept raw for the prefix cache (protected) "
                                "or given to the policy (compressed).", labels=["policy", "part"]),
            *(HistogramMetricFamily(f"vllm:kvcomp_{stage}_seconds", f"Time per KV {stage} call on each worker.",
                                    labels=["policy", "rank"]) for stage in STAGES),
        ]


async def pull_worker_reports(engine_client, timeout: float = 5.0) -> None:
    """Refresh the workers' numbers; they answer between engine steps. A busy or dead engine leaves
    the last values in place rather than failing `/metrics`."""
    try:
        reports = await asyncio.wait_for(rpc_every_engine(engine_client, RPC_METHOD), timeout)
    except Exception as err:  # noqa: BLE001 - any failure here must not fail the scrape
        logger.warning("kvcomp: worker metrics not refreshed (%s: %s)", type(err).__name__, err)
        return
    metrics().workers.update(reports)


_METRICS: list[_Metrics] = []
_WORKERS_ONLY: list[CollectorRegistry] = []


def worker_metrics_text() -> bytes:
    """The workers' families in Prometheus text form, for a `/metrics` that vLLM answers from its
    multiprocess registry (several API servers), which holds no custom collector."""
    if not _WORKERS_ONLY:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(metrics().workers)
        _WORKERS_ONLY.append(registry)
    return generate_latest(_WORKERS_ONLY[0])


def metrics() -> _Metrics:
    """kvcomp's collectors, registered with the registry vLLM serves on `/metrics`."""
    if not _METRICS:
        _METRICS.append(_Metrics())
    return _METRICS[0].registered()


def observe(vllm_config, sampling_params) -> None:
    """Count an admitted request under the policy it runs with: as `n` engine requests, since each
    of its `n` sequences is prefilled and compacted on its own."""
    policy = request_policy(server_policy(vllm_config), sampling_params)
    metrics().requests.labels(policy.name).inc(getattr(sampling_params, "n", 1) or 1)


def count_refused_override(reason: str) -> None:
    """Count a request refused by the operator's override rules (`overrides.REASONS`)."""
    metrics().refused_overrides.labels(reason).inc()


def _process_inputs(original):
    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        if request.sampling_params is not None and request.prompt_token_ids is not None:
            observe(self.vllm_config, request.sampling_params)
        return request

    return process_inputs


def install_metrics_hooks() -> None:
    """Count every request vLLM admits, and let the API server read the workers' reports (idempotent)."""
    patch(InputProcessor, "process_inputs", _process_inputs)
    install_report_rpc()
