"""Drive an in-process vLLM engine step by step and record what its scheduler held.

Tests and the CPU benchmark use it to read real numbers off vLLM's own block pool: blocks per
request and KV group, concurrently running requests, and free blocks before and after.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass
class EngineRun:
    """Outputs and scheduler observations of one batch driven to completion."""

    tokens: dict[str, list[int]] = field(default_factory=dict)
    samples: dict[str, list[list[int]]] = field(default_factory=dict)  # every completion of each request (n > 1)
    logprobs: dict[str, list[float]] = field(default_factory=dict)
    finish_reasons: dict[str, str] = field(default_factory=dict)
    peak_running: int = 0
    first_decode_blocks: dict[str, list[int]] = field(default_factory=dict)  # request -> blocks per KV group
    peak_blocks: dict[str, int] = field(default_factory=dict)  # request -> most blocks held at once, all groups
    free_blocks_before: int = 0
    free_blocks_after: int = 0
    preemptions: int = 0
    seconds: float = 0.0
    decode_steps: int = 0  # steps that scheduled one token for each request and no prompt tokens
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    first_token_seconds: dict[str, float] = field(default_factory=dict)  # request -> its first token's time (TTFT)

    @property
    def decode_tok_s(self) -> float:
        """Output tokens per second over decode-only steps (the steady state that KV size limits)."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0


def scheduler_of(llm):
    """The engine's scheduler (needs VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    from ..vllm_integration.compat import inproc_scheduler

    return inproc_scheduler(llm)


def worker_state_of(llm):
    """The compression state of the engine's worker (in-process, as `scheduler_of`), or None without a policy."""
    from ..vllm_integration.compat import inproc_runner

    return inproc_runner(llm)._kvcomp_state


def blocks_held(scheduler, req_id: str) -> list[int]:
    """Pool blocks `req_id` holds in each KV cache group, from the scheduler's managers (the null blocks a
    sliding-window group puts in place of those it freed are no pool blocks)."""
    managers = scheduler.kv_cache_manager.coordinator.single_type_managers
    return [sum(not block.is_null for block in m.req_to_blocks.get(req_id, ())) for m in managers]


def external_id(internal: str, ids: list[str]) -> str:
    """The id a request was added with (vLLM may append a suffix inside the engine, and names the
    children of a request with n > 1 `k_<id>`)."""
    internal = re.sub(r"^\d+_", "", internal)
    return next(i for i in ids if internal == i or internal.startswith(i + "-"))


def drive(llm, prompts: list[list[int]], params, progress: bool = False, record_blocks: bool = True) -> EngineRun:
    """Submit every prompt at once, step the engine until all finish, and record the run.

    `params` is one SamplingParams for all prompts, or a list with one per prompt. `record_blocks=False`
    skips the per-step, per-request block counts (peak and first-decode blocks), which throughput runs
    of hundreds of requests would otherwise pay for inside the timed loop.
    """
    engine = llm.llm_engine
    scheduler = scheduler_of(llm)
    pool = scheduler.kv_cache_manager.block_pool
    run = EngineRun(free_blocks_before=pool.get_num_free_blocks())
    preempt = scheduler._preempt_request

    def counting_preempt(*args, **kwargs):
        run.preemptions += 1
        return preempt(*args, **kwargs)

    schedule = scheduler.schedule
    last = {}

    def recording_schedule(*args, **kwargs):
        out = schedule(*args, **kwargs)
        one_each = out.total_num_scheduled_tokens == len(out.num_scheduled_tokens)
        last["decode_only"] = bool(out.num_scheduled_tokens) and one_each and not out.scheduled_new_reqs
        last["tokens"] = out.total_num_scheduled_tokens
        return out

    scheduler._preempt_request = counting_preempt
    scheduler.schedule = recording_schedule
    ids = [f"req-{i}" for i in range(len(prompts))]
    start = time.perf_counter()
    try:
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        for req_id, prompt, sampling in zip(ids, prompts, per_prompt):
            engine.add_request(req_id, {"prompt_token_ids": prompt}, sampling)
        bar = tqdm(total=len(ids), disable=not progress, desc="requests")
        while engine.has_unfinished_requests():
            step_start = time.perf_counter()
            outputs = engine.step()
            if last.pop("decode_only", False):
                run.decode_steps += 1
                run.decode_tokens += last["tokens"]
                run.decode_seconds += time.perf_counter() - step_start
            now = time.perf_counter() - start
            for out in outputs:
                if out.request_id not in run.first_token_seconds and any(c.token_ids for c in out.outputs):
                    run.first_token_seconds[out.request_id] = now
                if out.finished:
                    completion = out.outputs[0]
                    run.tokens[out.request_id] = list(completion.token_ids)
                    run.samples[out.request_id] = [list(c.token_ids) for c in out.outputs]
                    run.finish_reasons[out.request_id] = completion.finish_reason
                    run.logprobs[out.request_id] = [
                        lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs or [])
                    ]
                    bar.update()
            run.peak_running = max(run.peak_running, len(scheduler.running))
            for request in scheduler.running if record_blocks else ():
                # After the first decode step the prompt is compacted and one token appended.
                req_id = external_id(request.request_id, ids)
                held = sum(blocks_held(scheduler, request.request_id))
                run.peak_blocks[req_id] = max(run.peak_blocks.get(req_id, 0), held)
                if request.num_output_tokens == 2 and req_id not in run.first_decode_blocks:
                    run.first_decode_blocks[req_id] = blocks_held(scheduler, request.request_id)
        bar.close()
    finally:
        del scheduler._preempt_request, scheduler.schedule
    run.seconds = time.perf_counter() - start
    run.free_blocks_after = pool.get_num_free_blocks()
    run.tokens = {i: run.tokens[i] for i in ids}
    run.samples = {i: run.samples[i] for i in ids}
    run.logprobs = {i: run.logprobs[i] for i in ids}
    return run


def compacted_counts(llm, policy: str) -> tuple[int, int]:
    """Prompt token-layers kept and evicted so far under `policy`, as the engine's lowest-rank worker
    reports them over vLLM's collective RPC (what its compactions did, not what the policy predicts)."""
    from ..vllm_integration.report import RPC_METHOD

    report = min(llm.collective_rpc(RPC_METHOD), key=lambda r: r["rank"])
    counts = report["compacted"].get(policy, {})
    return counts.get("kept", 0), counts.get("evicted", 0)


def prefix_counts(llm, policy: str) -> tuple[int, int]:
    """Prompt tokens kept raw for the prefix cache and given to the policy so far under `policy`, as the
    engine's lowest-rank worker counted them."""
    from ..vllm_integration.report import RPC_METHOD

    report = min(llm.collective_rpc(RPC_METHOD), key=lambda r: r["rank"])
    counts = report["compacted"].get(policy, {})
    return counts.get("protected", 0), counts.get("compressed", 0)


def count_prefix_cache(llm) -> dict[str, int]:
    """From now on, the engine's prefix-cache queries and hits in tokens, as vLLM's own stats (the source of
    its `vllm:prefix_cache_*` counters) report them each step: the returned dict stays current. Per engine,
    where the process-wide Prometheus registry may also hold earlier engines' counts (needs
    `disable_log_stats=False`)."""
    manager = scheduler_of(llm).kv_cache_manager
    total = {"queries": 0, "hits": 0}
    make = manager.make_prefix_cache_stats

    def counting():
        stats = make()
        if stats is not None:
            total["queries"] += stats.queries
            total["hits"] += stats.hits
        return stats

    manager.make_prefix_cache_stats = counting
    return total


def cached_blocks(llm) -> int:
    """Blocks in vLLM's prefix cache now (held or evictable), over all KV cache groups."""
    return len(scheduler_of(llm).kv_cache_manager.block_pool.cached_block_hash_to_block)
