"""What workers report over the collective RPC (rank, timings, compaction counts) and its Prometheus
form: counts from one tensor-parallel rank, timings labelled by rank, so neither multiplies by TP."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kvcomp_vllm.vllm_integration import compacted, timing
from kvcomp_vllm.vllm_integration.metrics import WorkerReports
from kvcomp_vllm.vllm_integration.report import RPC_METHOD, install_report_rpc, worker_report


@pytest.fixture(autouse=True)
def fresh():
    timing.reset()
    compacted.reset()
    yield
    timing.reset()
    compacted.reset()


def test_compacted_counts_token_layers_blocks_and_the_kept_share():
    compacted.record("snapkv", 300, [96, 96, 96, 96], block_size=32)
    compacted.record("snapkv", 50, [50, 50, 50, 50], block_size=32)  # shorter than the budget: all kept
    (policy, counts), = compacted.snapshot().items()
    assert policy == "snapkv"
    assert (counts["kept"], counts["evicted"]) == (4 * 96 + 4 * 50, 4 * (300 - 96))
    assert counts["blocks_saved"] == 4 * (10 - 3)
    buckets, total = counts["ratio"]
    assert buckets[compacted.RATIO_BUCKETS.index(0.35)] == 1 and buckets[compacted.RATIO_BUCKETS.index(1.0)] == 1
    assert total == pytest.approx(0.32 + 1.0)


def test_workers_answer_the_rpc_by_name():
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    install_report_rpc()
    timing.record("scoring", 0.01, "pyramid")
    compacted.record("pyramid", 100, [60, 40], block_size=16)
    wrapper = WorkerWrapperBase(rpc_rank=1, global_rank=3)
    report = getattr(WorkerWrapperBase, RPC_METHOD)(wrapper)
    assert report == worker_report(wrapper) == {
        "rank": 3, "engine": 0, "timings": timing.snapshot(), "compacted": compacted.snapshot()
    }


def scrape(reports: list[dict]) -> str:
    collector = WorkerReports()
    collector.update(reports)
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_two_tensor_parallel_ranks_count_the_prompt_once_and_time_per_rank():
    timing.record("scoring", 0.003, "snapkv")
    timing.record("scoring", 0.2, "snapkv")
    timing.record("compaction", 0.0004, "snapkv")
    compacted.record("snapkv", 300, [96] * 4, block_size=32)
    one = {"timings": timing.snapshot(), "compacted": compacted.snapshot()}
    text = scrape([{"rank": 1, **one}, {"rank": 0, **one}])
    assert 'vllm:kvcomp_prompt_tokens_total{outcome="kept",policy="snapkv"} 384.0' in text
    assert 'vllm:kvcomp_prompt_tokens_total{outcome="evicted",policy="snapkv"} 816.0' in text
    assert 'vllm:kvcomp_kv_blocks_saved_total{policy="snapkv"} 28.0' in text
    assert 'vllm:kvcomp_kept_ratio_count{policy="snapkv"} 1.0' in text
    assert "# TYPE vllm:kvcomp_scoring_seconds histogram" in text
    for rank in ("0", "1"):
        assert f'vllm:kvcomp_scoring_seconds_bucket{{le="0.001",policy="snapkv",rank="{rank}"}} 0.0' in text
        assert f'vllm:kvcomp_scoring_seconds_bucket{{le="0.005",policy="snapkv",rank="{rank}"}} 1.0' in text
        assert f'vllm:kvcomp_scoring_seconds_count{{policy="snapkv",rank="{rank}"}} 2.0' in text
        assert f'vllm:kvcomp_scoring_seconds_sum{{policy="snapkv",rank="{rank}"}} 0.203' in text
        assert f'vllm:kvcomp_compaction_seconds_bucket{{le="0.0005",policy="snapkv",rank="{rank}"}} 1.0' in text


def test_only_the_lowest_ranks_counts_are_served():
    compacted.record("snapkv", 300, [96] * 4, block_size=32)
    low = compacted.snapshot()
    compacted.record("snapkv", 300, [96] * 4, block_size=32)
    text = scrape([{"rank": 1, "timings": {}, "compacted": compacted.snapshot()}, {"rank": 0, "timings": {}, "compacted": low}])
    assert 'vllm:kvcomp_prompt_tokens_total{outcome="kept",policy="snapkv"} 384.0' in text


def test_data_parallel_engines_counts_add_up_and_their_ranks_stay_apart():
    compacted.record("snapkv", 300, [96] * 4, block_size=32)
    timing.record("scoring", 0.003, "snapkv")
    one = {"timings": timing.snapshot(), "compacted": compacted.snapshot()}
    # Two engines of TP=2: each engine's lowest rank counts its own requests; ranks number all workers.
    reports = [{"rank": r, "engine": r // 2, **one} for r in range(4)]
    text = scrape(reports)
    assert 'vllm:kvcomp_prompt_tokens_total{outcome="kept",policy="snapkv"} 768.0' in text
    assert 'vllm:kvcomp_kept_ratio_count{policy="snapkv"} 2.0' in text
    for rank in range(4):
        assert f'vllm:kvcomp_scoring_seconds_count{{policy="snapkv",rank="{rank}"}} 1.0' in text
