"""What each worker tells the API server over vLLM's collective RPC: its rank, its scoring and
compaction timings (`timing`) and what its compactions kept (`compacted`)."""

from __future__ import annotations

from . import compacted, timing
from .compat import add_worker_method, worker_rank

RPC_METHOD = "kvcomp_report"  # the worker method the API server calls by name


def worker_report(worker) -> dict:
    """`{"rank": int, "timings": timing.snapshot(), "compacted": compacted.snapshot()}` of this worker."""
    return {"rank": worker_rank(worker), "timings": timing.snapshot(), "compacted": compacted.snapshot()}


def install_report_rpc() -> None:
    """Let the API server call `worker_report` on every worker by name (idempotent)."""
    add_worker_method(RPC_METHOD, worker_report)
