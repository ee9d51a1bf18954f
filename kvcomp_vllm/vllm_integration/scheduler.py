"""Scheduler hooks: a prefill chunk never runs past a compression point; managers see the requests.

Compression points are the prompt's end and, with `prefill_chunk`, every that many prompt tokens
(`BudgetLayout.next_compression_point`). Stopping chunks there makes every compression round see
exactly the tokens the reference generator sees, whatever token budget the scheduler had. A
request recomputed after preemption compresses its prompt exactly as the first time; its
generated tokens are then replayed over the compacted cache, as they were decoded originally.
"""

from __future__ import annotations

from .compat import Scheduler, finish_with_errors, init_logger, patch, prefix_caching, split_chunks_at
from .kv_spec import CompressedAttentionManager
from .prefix_cache import PrefixProtection, install_prefix_cache_hooks
from .settings import request_policy, server_policy
from .worker import FAILED_FIELD

logger = init_logger("vllm.kvcomp")


def stop_at_compression_point(policy, request, num_new_tokens: int, start: int, protection=None) -> int:
    """Chunk size clipped so that a prompt chunk stops at the request's next compression point (counted
    after its protected prefix, with prefix caching)."""
    if start >= request.num_prompt_tokens:
        return num_new_tokens
    own = request_policy(policy, request.sampling_params) if protection is None else protection.chunk_policy(request, start)
    point = own.layout.next_compression_point(request.num_prompt_tokens, start)
    return min(num_new_tokens, point - start)


def _init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        policy = server_policy(self.vllm_config)
        if policy.name != "full":
            protection = None
            if prefix_caching(self.vllm_config):
                protection = PrefixProtection(policy, self.cache_config.block_size, self.requests)
                self.kv_cache_manager.kvcomp_protection = protection
            split_chunks_at(self, lambda request, n, start: stop_at_compression_point(policy, request, n, start, protection))
            for manager in self.kv_cache_manager.coordinator.single_type_managers:
                if isinstance(manager, CompressedAttentionManager):
                    manager.requests = self.requests
                    manager.protection = protection

    return __init__


def _update_from_output(original):
    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = original(self, scheduler_output, model_runner_output)
        failed = getattr(model_runner_output, FAILED_FIELD, None)  # set by the worker's sample_tokens hook
        if failed:
            logger.warning("kvcomp: finishing request(s) %s with an error: their KV compression failed on a worker", failed)
            finish_with_errors(self, outputs, failed)
        return outputs

    return update_from_output


def install_scheduler_hooks() -> None:
    """Wrap the scheduler's constructor, and finish the requests whose kvcomp work failed on the worker
    as errors, so one request's failure never stops the engine (idempotent)."""
    install_prefix_cache_hooks()
    patch(Scheduler, "__init__", _init)
    patch(Scheduler, "update_from_output", _update_from_output)
