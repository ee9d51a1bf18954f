"""What each worker tells the API server over vLLM's collective RPC: its rank, its engine, its scoring
and compaction timings (`timing`) and what its compactions kept (`compacted`)."""

from __future__ import annotations

from . import compacted, timing
from .compat import add_worker_method, worker_engine, worker_rank

RPC_METHOD = "kvcomp_report"  # the worker method the API server calls by name


def worker_report(worker) -> dict:
    """`{"rank", "engine", "timings": timing.snapshot(), "compacted": compacted.snapshot()}` of this worker.

    `engine` is its engine's data-parallel index; `rank` numbers the workers of all engines, engine after
    engine (its rank in its engine's tensor-parallel group with one engine).
    """
    engine, workers = worker_engine(worker)
    return {"rank": engine * workers + worker_rank(worker), "engine": engine,
            "timings": timing.snapshot(), "compacted": compacted.snapshot()}


def install_report_rpc() -> None:
    """Let the API server call `worker_report` on every worker by name (idempotent)."""
    add_worker_method(RPC_METHOD, worker_report)
