"""kvcomp's scheduler: a prefill chunk never runs past a compression point; managers see the requests.

A subclass of vLLM's scheduler (or of its async one), installed as `scheduler_config.scheduler_cls`
(`--scheduler-cls`) at start-up by `engine_args` on compressing engines (`scheduler_class`).

Compression points are the prompt's end and, with `prefill_chunk`, every that many prompt tokens
(`BudgetLayout.next_compression_point`). Stopping chunks there makes every compression round see
exactly the tokens the reference generator sees, whatever token budget the scheduler had. A
request recomputed after preemption compresses its prompt exactly as the first time; its
generated tokens are then replayed over the compacted cache, as they were decoded originally.
"""

from __future__ import annotations

from .compat import AsyncScheduler, ChunkSplitting, Scheduler, finish_with_errors, init_logger, prefix_caching
from .kv_spec import CompressedAttentionManager
from .prefix_cache import PrefixProtection
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


class CompressingScheduler(ChunkSplitting):
    """Scheduler mixin: chunks stop at compression points, the block managers see the requests (and with
    prefix caching their protected prefixes), and requests whose kvcomp work failed on a worker finish as
    errors, so one request's failure never stops the engine."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kvcomp_policy = server_policy(self.vllm_config)
        self.kvcomp_protection = None
        if self.kvcomp_policy.name == "full":  # kvcomp's class named by hand on a `full` engine: vLLM's behaviour
            return
        if prefix_caching(self.vllm_config):
            self.kvcomp_protection = PrefixProtection(self.kvcomp_policy, self.cache_config.block_size, self.requests,
                                                      self.hash_block_size)
            self.kv_cache_manager.kvcomp_protection = self.kvcomp_protection
        self.split_chunks()
        for manager in self.kv_cache_manager.coordinator.single_type_managers:
            if isinstance(manager, CompressedAttentionManager):
                manager.requests = self.requests
                manager.protection = self.kvcomp_protection

    def split_chunk(self, request, num_new_tokens: int, start: int) -> int:
        """A prefill chunk's size, from token `start` on, stopped at the next compression point (`ChunkSplitting`)."""
        return stop_at_compression_point(self.kvcomp_policy, request, num_new_tokens, start, self.kvcomp_protection)

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        failed = getattr(model_runner_output, FAILED_FIELD, None)  # set by the worker's sample_tokens hook
        if failed:
            logger.warning("kvcomp: finishing request(s) %s with an error: their KV compression failed on a worker", failed)
            finish_with_errors(self, outputs, failed)
        return outputs


class KVCompScheduler(CompressingScheduler, Scheduler):
    """vLLM's scheduler with kvcomp's (`CompressingScheduler`)."""


class KVCompAsyncScheduler(CompressingScheduler, AsyncScheduler):
    """vLLM's async scheduler (async scheduling on) with kvcomp's (`CompressingScheduler`)."""


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


KVCOMP_SCHEDULERS = (_qualname(KVCompScheduler), _qualname(KVCompAsyncScheduler))


def scheduler_class(async_scheduling: bool) -> str:
    """The qualified name of kvcomp's scheduler for `scheduler_config.scheduler_cls` (a name: it travels to
    the engine-core process as text); the async one where vLLM schedules asynchronously."""
    return KVCOMP_SCHEDULERS[1] if async_scheduling else KVCOMP_SCHEDULERS[0]

