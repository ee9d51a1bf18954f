"""Scheduler hooks: a prefill chunk never runs past the prompt's end; managers see the requests.

New requests never cross it anyway. A request recomputed after preemption has generated tokens
after its prompt; stopping its first pass at the prompt makes the prompt compact exactly as the
first time, and the generated tokens are then replayed over the compacted cache, as they were
decoded originally.
"""

from __future__ import annotations

from .compat import Scheduler, patch, split_chunks_at
from .kv_spec import CompressedAttentionManager
from .settings import engine_policy


def stop_at_prompt_end(request, num_new_tokens: int, start: int) -> int:
    """Chunk size clipped so that a chunk starting before the prompt's end stops there."""
    end = request.num_prompt_tokens
    return end - start if start < end < start + num_new_tokens else num_new_tokens


def _init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if engine_policy(self.vllm_config) is not None:
            split_chunks_at(self, stop_at_prompt_end)
            for manager in self.kv_cache_manager.coordinator.single_type_managers:
                if isinstance(manager, CompressedAttentionManager):
                    manager.requests = self.requests

    return __init__


def install_scheduler_hooks() -> None:
    """Wrap the scheduler's constructor (idempotent)."""
    patch(Scheduler, "__init__", _init)
