"""Scoring and compaction time on the worker, kept as cumulative histograms per stage and policy.

Scoring and compaction run in the worker (inside vLLM's engine core under `vllm serve`), while
`/metrics` is served by the API server; when it is scraped, the API server pulls `snapshot()` from
every worker over vLLM's collective RPC (`report`). On CUDA a stage is timed
with events, read back at the next snapshot or once done, so timing adds no device sync.
"""

from __future__ import annotations

import bisect
import threading
import time
from contextlib import contextmanager

import torch

STAGES = ("scoring", "compaction")
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

_lock = threading.Lock()
_histograms: dict[tuple[str, str], list] = {}  # (stage, policy) -> [counts per bucket and +Inf, sum]
_pending: list[tuple[str, str, torch.cuda.Event, torch.cuda.Event]] = []  # CUDA timings not read yet


def record(stage: str, seconds: float, policy: str) -> None:
    """Add one timing of `stage` ("scoring" or "compaction") for a request under `policy`."""
    if stage not in STAGES:
        raise ValueError(f"unknown kvcomp timing stage {stage!r}; one of {STAGES}")
    with _lock:
        counts, total = _histograms.get((stage, policy)) or ([0] * (len(BUCKETS) + 1), 0.0)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        _histograms[stage, policy] = [counts, total + seconds]


@contextmanager
def timed(stage: str, policy: str, device: torch.device | None = None):
    """Time the block as one `stage` of `policy`; work queued on a CUDA `device` is timed by events."""
    if device is None or torch.device(device).type != "cuda":
        start = time.perf_counter()
        yield
        record(stage, time.perf_counter() - start, policy)
        return
    _read_events(wait=False)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    yield
    end.record()
    with _lock:
        _pending.append((stage, policy, begin, end))


def _read_events(wait: bool) -> None:
    """Record the CUDA timings whose events completed (all of them when `wait`), oldest first."""
    done = []
    with _lock:
        while _pending and (wait or _pending[0][3].query()):
            done.append(_pending.pop(0))
    for stage, policy, begin, end in done:
        end.synchronize()
        record(stage, begin.elapsed_time(end) / 1000.0, policy)


def snapshot() -> dict[str, dict[str, list]]:
    """Every histogram so far: `{stage: {policy: [bucket counts (last is +Inf), sum of seconds]}}`."""
    _read_events(wait=True)
    with _lock:
        result: dict[str, dict[str, list]] = {}
        for (stage, policy), (counts, total) in _histograms.items():
            result.setdefault(stage, {})[policy] = [list(counts), total]
        return result


def reset() -> None:
    """Forget every timing (tests)."""
    with _lock:
        _histograms.clear()
        _pending.clear()
