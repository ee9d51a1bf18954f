"""Worker timings: histograms per stage and policy (their RPC and Prometheus form: test_worker_report)."""

from __future__ import annotations

import pytest
import torch

from kvcomp_vllm.vllm_integration import timing


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
