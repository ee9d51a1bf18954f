"""Runner hooks on the worker: they keep the compressed requests' bookkeeping (`worker_state`) current.

Each runner has its own state, made at KV-cache init and handed to its metadata builders and block table
there (no process global: two engines in one process never share one).

Timeline of one compressed request on the worker:
1. prefill chunks run through vLLM's attention unchanged (the backend stashes window queries);
2. in the forward that reaches a compression point (the prompt's end, or with `prefill_chunk` every
   that many tokens), each attention layer plans (scoring the tokens its cache holds) and moves its
   kept tokens to cache positions `0..kept-1` (see `backend`);
3. at the next step the request's block-table rows are cut to the blocks the scheduler kept, and
   from then on each tier's cache position is `position - evicted`: slot mapping and `seq_lens`
   are shifted per request, while RoPE keeps the true positions. Later rounds repeat 1-3.
"""

from __future__ import annotations

import copy

import torch

from .backend import ShiftedSeqLens, prepare_caches
from .compat import (
    FullAttentionSpec,
    GPUModelRunner,
    ModelRunnerOutput,
    MultiGroupBlockTable,
    SlidingWindowSpec,
    extract_layer_index,
    init_logger,
    metadata_builders,
    patch,
)
from .kv_spec import CompressedAttentionSpec
from .scratch import engine_scratch_shape, scratch_bytes
from .settings import engine_policy, model_layers
from .worker_state import new_state, runner_policy


def _get_kv_cache_spec(original):
    def get_kv_cache_spec(self: GPUModelRunner):
        specs = original(self)
        config = engine_policy(self.vllm_config)
        if config is None:
            return specs
        policy, layers = runner_policy(self, config), model_layers(self.vllm_config)
        for name, spec in specs.items():
            layer = layers.policy_layer(extract_layer_index(name))
            if layer is None and type(spec) in (SlidingWindowSpec, FullAttentionSpec):
                continue  # a hybrid model's sliding-window layer: vLLM's own manager holds it
            local = type(spec) is not FullAttentionSpec or spec.sliding_window or spec.attention_chunk_size
            if layer is None or local:
                raise ValueError(
                    f"kv policy '{config.policy}' cannot handle layer {name} ({type(spec).__name__}); it compresses "
                    "full-attention layers and leaves to vLLM the sliding-window ones its config's layer_types name"
                )
            specs[name] = CompressedAttentionSpec.from_spec(spec, policy, layer)
        return specs

    return get_kv_cache_spec


def _update_states(original):
    def update_states(self: GPUModelRunner, scheduler_output):
        state = getattr(self, "_kvcomp_state", None)  # made at KV-cache init (`hand_state`)
        if state is None:
            return original(self, scheduler_output)
        state.before_update(self, scheduler_output)
        result = original(self, scheduler_output)
        state.after_update(self, scheduler_output)
        return result

    return update_states


def _compute_slot_mapping(original):
    def compute_slot_mapping(self: MultiGroupBlockTable, num_reqs, query_start_loc, positions):
        state = getattr(self, "_kvcomp_state", None)  # handed over at KV-cache init
        if state is None:
            return original(self, num_reqs, query_start_loc, positions)
        for group, table in enumerate(self.block_tables):
            offsets = state.token_offsets(group, positions.device, positions.shape[0])
            table.compute_slot_mapping(num_reqs, query_start_loc, positions if offsets is None else positions - offsets)

    return compute_slot_mapping


def _initialize_kv_cache_tensors(original):
    def initialize_kv_cache_tensors(self: GPUModelRunner, *args, **kwargs):
        kv_caches = original(self, *args, **kwargs)
        if engine_policy(self.vllm_config) is not None:
            prepare_caches(self.compilation_config.static_forward_context, kv_caches)
        hand_state(self)
        return kv_caches

    return initialize_kv_cache_tensors


def hand_state(runner: GPUModelRunner) -> None:
    """Give the runner a fresh compression state for the KV cache just made (a profiling cache's groups are
    not the real one's) and hand it to the objects reading it each step: its metadata builders and block table."""
    state = runner._kvcomp_state = new_state(runner)
    runner.input_batch.block_table._kvcomp_state = state
    for builder in metadata_builders(runner):
        if isinstance(builder, ShiftedSeqLens):
            builder.kvcomp_state = state


FAILED_FIELD = "kvcomp_failed"  # ModelRunnerOutput attribute: request ids whose kvcomp work failed


logger = init_logger("vllm.kvcomp")


def _profile_run(original):
    def profile_run(self: GPUModelRunner, *args, **kwargs):
        """Hold compaction's scratch bound on the GPU while vLLM profiles its peak memory, so the KV
        pool it sizes from that peak leaves room for compaction inside real forwards."""
        if engine_policy(self.vllm_config) is None or self.device.type != "cuda":
            return original(self, *args, **kwargs)
        size = scratch_bytes(engine_scratch_shape(self.vllm_config))
        held = torch.empty(size, dtype=torch.uint8, device=self.device)
        logger.info("kvcomp: holding %.1f MiB of compaction scratch through memory profiling", size / 2**20)
        try:
            return original(self, *args, **kwargs)
        finally:
            del held

    return profile_run


def _sample_tokens(original):
    def sample_tokens(self: GPUModelRunner, *args, **kwargs):
        output = original(self, *args, **kwargs)
        state = getattr(self, "_kvcomp_state", None)  # made at KV-cache init (`hand_state`)
        failed = state.take_failed() if state is not None else []
        return output if not failed else with_failures(output, failed)

    return sample_tokens


def with_failures(output, failed: list[str]):
    """The step's output carrying `failed` to the scheduler, in whatever process it runs (the output
    is pickled to it by multiprocess executors); async outputs carry them once resolved."""
    if not isinstance(output, ModelRunnerOutput):  # an AsyncModelRunnerOutput: wrap its resolution
        resolve = output.get_output
        output.get_output = lambda: with_failures(resolve(), failed)
        return output
    output = copy.copy(output)  # never mutate a shared empty output
    setattr(output, FAILED_FIELD, [*getattr(output, FAILED_FIELD, ()), *failed])
    return output


def install_runner_hooks() -> None:
    """Wrap the runner methods the integration needs (idempotent)."""
    patch(GPUModelRunner, "sample_tokens", _sample_tokens)
    patch(GPUModelRunner, "get_kv_cache_spec", _get_kv_cache_spec)
    patch(GPUModelRunner, "initialize_kv_cache_tensors", _initialize_kv_cache_tensors)
    patch(GPUModelRunner, "_update_states", _update_states)
    patch(GPUModelRunner, "profile_run", _profile_run)
    patch(MultiGroupBlockTable, "compute_slot_mapping", _compute_slot_mapping)
