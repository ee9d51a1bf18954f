"""Worker timings: histograms per stage and policy, their RPC method, and their Prometheus form."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from kvcomp_vllm.vllm_integration import timing
from kvcomp_vllm.vllm_integration.metrics import WorkerTimings


@pytest.fixture(autouse=True)
def fresh():
    timing.reset()
    yield
    timing.reset()


def test_record_counts_each_timing_in_its_bucket_and_sums_the_seconds():
    timing.record("scoring", 0.003, "snapkv")
    timing.record("scoring", 0.005, "snapkv")  # on a bound: counted there (le)
    timing.record("scoring", 60.0, "snapkv")
    timing.record("compaction", 0.0, "pyramid")
    snap = timing.snapshot()
    counts, total = snap["scoring"]["snapkv"]
    five_ms = timing.BUCKETS.index(0.005)
    assert counts[five_ms] == 2 and counts[-1] == 1 and sum(counts) == 3
    assert total == pytest.approx(60.008)
    assert snap["compaction"]["pyramid"][0][0] == 1
    with pytest.raises(ValueError, match="unknown kvcomp timing stage 'plan'"):
        timing.record("plan", 0.1, "snapkv")


def test_timed_measures_the_block():
    with timing.timed("compaction", "streaming"):
        torch.ones(256, 256) @ torch.ones(256, 256)
    (counts, total), = timing.snapshot()["compaction"].values()
    assert sum(counts) == 1 and 0 < total < 10


def test_a_failing_block_is_not_timed():
    with pytest.raises(RuntimeError), timing.timed("scoring", "snapkv"):
        raise RuntimeError("boom")
    assert timing.snapshot() == {}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_timed_on_cuda_reads_events_at_the_snapshot():
    x = torch.ones(2048, 2048, device="cuda")
    for _ in range(3):
        with timing.timed("scoring", "snapkv", x.device):
            x @ x
    counts, total = timing.snapshot()["scoring"]["snapkv"]
    assert sum(counts) == 3 and total > 0


def test_workers_answer_the_rpc_by_name():
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    timing.install_timing_rpc()
    timing.record("scoring", 0.01, "pyramid")
    assert getattr(WorkerWrapperBase, timing.RPC_METHOD)(None) == timing.snapshot()


def test_collector_sums_workers_into_vllm_style_histograms():
    timing.record("scoring", 0.003, "snapkv")
    timing.record("scoring", 0.2, "snapkv")
    timing.record("compaction", 0.0004, "snapkv")
    collector = WorkerTimings()
    collector.update([timing.snapshot(), timing.snapshot()])  # two workers
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert "# TYPE vllm:kvcomp_scoring_seconds histogram" in text
    assert 'vllm:kvcomp_scoring_seconds_bucket{le="0.001",policy="snapkv"} 0.0' in text
    assert 'vllm:kvcomp_scoring_seconds_bucket{le="0.005",policy="snapkv"} 2.0' in text
    assert 'vllm:kvcomp_scoring_seconds_bucket{le="+Inf",policy="snapkv"} 4.0' in text
    assert 'vllm:kvcomp_scoring_seconds_count{policy="snapkv"} 4.0' in text
    assert 'vllm:kvcomp_scoring_seconds_sum{policy="snapkv"} 0.406' in text
    assert 'vllm:kvcomp_compaction_seconds_bucket{le="0.0005",policy="snapkv"} 2.0' in text
