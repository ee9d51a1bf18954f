"""What the worker's compactions actually kept of each prompt, as cumulative counts per policy.

A request is counted once its prompt's last compression point is compacted in every layer (or, for
a request that evicts nothing, once its prompt is read), so an aborted prompt counts nothing. The
API server pulls `snapshot()` with the timings (`report`) and serves it on `/metrics`.
"""

from __future__ import annotations

import bisect
import threading

from .compat import cdiv

RATIO_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)

_lock = threading.Lock()
_counts: dict[str, dict] = {}  # policy -> {"kept", "evicted", "blocks_saved", "protected", "compressed", "ratio": [...]}
SUMMED = ("kept", "evicted", "blocks_saved", "protected", "compressed")


def _empty() -> dict:
    return {**dict.fromkeys(SUMMED, 0), "ratio": [[0] * (len(RATIO_BUCKETS) + 1), 0.0]}


def record(policy: str, prompt_len: int, slots: list[int], block_size: int, protected: int = 0) -> None:
    """Count one prompt of `prompt_len` tokens whose layers hold `slots` cache positions after compaction,
    the first `protected` of them kept raw for the prefix cache, the rest compressed by the policy."""
    kept = sum(slots)
    ratio = kept / (len(slots) * prompt_len) if prompt_len else 1.0
    with _lock:
        into = _counts.setdefault(policy, _empty())
        into["kept"] += kept
        into["evicted"] += len(slots) * prompt_len - kept
        into["blocks_saved"] += sum(cdiv(prompt_len, block_size) - cdiv(s, block_size) for s in slots)
        into["protected"] += protected
        into["compressed"] += prompt_len - protected
        into["ratio"][0][bisect.bisect_left(RATIO_BUCKETS, ratio)] += 1
        into["ratio"][1] += ratio


def snapshot() -> dict[str, dict]:
    """Every count so far: `{policy: {"kept", "evicted", "blocks_saved", "protected", "compressed", "ratio":
    [bucket counts (last +Inf), sum]}}` (protected, compressed: prompt tokens, not token-layers)."""
    with _lock:
        return {p: {**c, "ratio": [list(c["ratio"][0]), c["ratio"][1]]} for p, c in _counts.items()}


def summed(snapshots: list[dict[str, dict]]) -> dict[str, dict]:
    """Several `snapshot()`s (of data-parallel engines) added up, policy by policy."""
    total: dict[str, dict] = {}
    for snapshot in snapshots:
        for policy, c in snapshot.items():
            into = total.setdefault(policy, _empty())
            for key in SUMMED:
                into[key] += c.get(key, 0)
            into["ratio"] = [[a + b for a, b in zip(into["ratio"][0], c["ratio"][0])], into["ratio"][1] + c["ratio"][1]]
    return total


def reset() -> None:
    """Forget every count (tests)."""
    with _lock:
        _counts.clear()
