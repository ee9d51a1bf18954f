"""Every vLLM internal the plugin touches, in one place, for vLLM 0.26 (GPU) and 0.32 (CPU).

The rest of `vllm_integration` imports vLLM names from here only, and every vLLM method it replaces is
listed in `PATCHED_INTERNALS`, so a vLLM upgrade means reading this file and its tests, not the whole package.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache

import torch
import vllm
from vllm import _custom_ops as ops
from vllm.config.compilation import CUDAGraphMode
from vllm.engine.arg_utils import EngineArgs
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.exceptions import VLLMValidationError
from vllm.logger import init_logger
from vllm.model_executor.layers.attention.attention import get_attention_context
from vllm.model_executor.models.utils import extract_layer_index
from vllm.platforms import current_platform
from vllm.utils.math_utils import cdiv
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # 0.26 and 0.32 alike
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine.input_processor import InputProcessor
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry
from vllm.v1.worker.block_table import BlockTable, MultiGroupBlockTable
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from .attention_layers import compressed_layers

__all__ = [
    "AsyncScheduler",
    "AttentionBackendEnum",
    "BlockTable",
    "ChunkSplitting",
    "CPUAttentionBackend",
    "CPUAttentionBackendImpl",
    "CPUAttentionMetadataBuilder",
    "EngineArgs",
    "FullAttentionManager",
    "FullAttentionSpec",
    "GPUModelRunner",
    "InputProcessor",
    "KVCacheManager",
    "KVCacheSpecRegistry",
    "ModelRunnerOutput",
    "MultiGroupBlockTable",
    "Scheduler",
    "SlidingWindowSpec",
    "serve_subcommand",
    "cdiv",
    "extract_layer_index",
    "flash_attention_classes",
    "full_cudagraph_capture",
    "mixed_full_cudagraphs",
    "init_logger",
    "inproc_runner",
    "inproc_scheduler",
    "metadata_builders",
    "layer_context",
    "platform_name",
    "openai_request_classes",
    "patch",
    "CHECKED",
    "PATCHED_INTERNALS",
    "register_backend",
    "register_kv_spec",
    "set_row_num_blocks",
    "async_scheduling",
    "scheduler_cls",
    "set_scheduler_cls",
    "pinned_hit",
    "prefix_caching",
    "cpu_attention_isa",
    "cpu_block_tilings",
    "cpu_kv_views",
    "TESTED_VLLM",
    "UNTESTED_VLLM",
    "vllm_support",
    "vllm_tested",
    "vllm_version",
]


# The vLLM minor kvcomp-vllm is tested with on each platform (pyproject's `gpu` and `cpu` extras pin them).
TESTED_VLLM = {"cuda": "0.26", "cpu": "0.32"}
UNTESTED_VLLM = "untested: kvcomp-vllm is tested with vLLM " + " and ".join(
    f"{minor}.x ({platform.upper()})" for platform, minor in TESTED_VLLM.items()
)


def vllm_version() -> str:
    """The installed vLLM's version, as vLLM reports it."""
    return vllm.__version__


def vllm_tested(version: str | None = None, platform: str | None = None) -> bool:
    """Whether a vLLM version (default: the installed one) on a platform (default: this one) is a tested minor."""
    version = vllm_version() if version is None else version
    platform = platform_name() if platform is None else platform
    minor = re.match(r"\d+\.\d+", version)
    return minor is not None and TESTED_VLLM.get(platform) == minor.group()


def vllm_support() -> str:
    """`tested`, or the `untested: ...` line naming the tested minors, for the installed vLLM here."""
    return "tested" if vllm_tested() else UNTESTED_VLLM


def full_cudagraph_capture() -> bool:
    """Whether the current forward runs under a full CUDA graph: captured now, later replayed without Python."""
    return is_forward_context_available() and get_forward_context().cudagraph_runtime_mode == CUDAGraphMode.FULL


def mixed_full_cudagraphs(vllm_config) -> bool:
    """Whether the engine captures full CUDA graphs of mixed (prefill and decode) batches (`cudagraph_mode` FULL)."""
    mode = vllm_config.compilation_config.cudagraph_mode
    return mode is not None and mode.mixed_mode() == CUDAGraphMode.FULL


def flash_attention_classes():
    """vLLM's FlashAttention backend, builder and impl (imported only on CUDA builds)."""
    from vllm.v1.attention.backends import flash_attn

    return flash_attn.FlashAttentionBackend, flash_attn.FlashAttentionMetadataBuilder, flash_attn.FlashAttentionImpl


def openai_request_classes() -> tuple[type, ...]:
    """vLLM's OpenAI completion and chat request models (their extra fields are kept)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest, ChatCompletionRequest


def platform_name() -> str:
    """The device vLLM runs on here: "cpu", "cuda", ..."""
    return current_platform.device_type


def layer_context(layer_name: str, layer_idx: int):
    """Attention metadata and KV cache of decoder layer `layer_idx`, named like `layer_name`."""
    other = re.sub(r"\.layers\.\d+\.", f".layers.{layer_idx}.", layer_name, count=1)
    metadata, _, kv_cache, _ = get_attention_context(other)
    return metadata, kv_cache


def patch(owner: type, name: str, make_wrapper) -> None:
    """Replace `owner.name` by `make_wrapper(original)`, once per process and wrapper.

    Works for plain, static and class methods; the wrapper receives the underlying function. Distinct
    wrappers of one method stack, the later outermost.
    """
    current = owner.__dict__[name]
    kind = type(current) if isinstance(current, (staticmethod, classmethod)) else None
    func = current.__func__ if kind else current
    key = f"{make_wrapper.__module__}.{make_wrapper.__qualname__}"
    applied = getattr(func, "_kvcomp", frozenset())
    if key in applied:
        return
    wrapped = make_wrapper(func)
    wrapped._kvcomp = applied | {key}
    setattr(owner, name, kind(wrapped) if kind else wrapped)


CHECKED = ("0.26.0 (CUDA)", "0.32.0 (CPU)")  # the vLLM releases the project's test suites run on

# (target, why, vLLM versions it was checked on) of every vLLM method kvcomp replaces or adds: each
# `patch(Owner, "name", ...)` call's `Owner.name` (tests/test_vllm_compat.py checks), then the direct ones.
# kvcomp's scheduler is no patch: a subclass vLLM builds from `--scheduler-cls` (`scheduler.py`, `ChunkSplitting`).
PATCHED_INTERNALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("GPUModelRunner.get_kv_cache_spec", "compressing layers get kvcomp's KV spec", CHECKED),
    ("GPUModelRunner.initialize_kv_cache_tensors", "CPU packings probed, Triton kernels compiled", CHECKED),
    ("GPUModelRunner._update_states", "compressed requests tracked, block rows cut after compaction", CHECKED),
    ("GPUModelRunner.profile_run", "compaction scratch held while vLLM profiles peak memory (CUDA)", CHECKED),
    ("GPUModelRunner.sample_tokens", "the output names requests whose kvcomp work failed", CHECKED),
    ("MultiGroupBlockTable.compute_slot_mapping", "slots shifted by the tokens evicted", CHECKED),
    ("ServeSubcommand.cmd", "`vllm serve` prints a kvcomp settings error as one line", CHECKED),
    ("EngineArgs.add_cli_args", "the --kv-* flags", CHECKED),
    ("EngineArgs.from_cli_args", "flags into additional_config, kvcomp's HTTP middlewares", CHECKED),
    ("EngineArgs.create_engine_config", "the start-up check of kvcomp's settings", CHECKED),
    ("InputProcessor._validate_params", "a request's own kvcomp settings checked", CHECKED),
    ("InputProcessor.process_inputs", "overrides and KV footprint checked; requests counted", CHECKED),
    ("CompletionRequest.to_sampling_params", "kv_* body fields into sampling params", CHECKED),
    ("ChatCompletionRequest.to_sampling_params", "kv_* body fields into sampling params", CHECKED),
    ("CompletionRequest.to_beam_search_params", "beam search refused when compressing", CHECKED),
    ("ChatCompletionRequest.to_beam_search_params", "beam search refused when compressing", CHECKED),
    ("LLM.beam_search", "beam search refused when compressing (on the MRO class defining it)", CHECKED),
    ("KVCacheManager.get_computed_blocks", "a resumed compressing request hits at most its protected prefix", ("0.32.0 (CPU)",)),
    ("KVCacheManager.allocate_slots", "a request's protected prefix fixed at its first allocation", ("0.32.0 (CPU)",)),
    ("WorkerWrapperBase.kvcomp_report", "added: the workers' metrics RPC (add_worker_method)", CHECKED),
    # vLLM's CPU platform turns async scheduling off, so only CUDA runs this one:
    ("AsyncModelRunnerOutput.get_output", "set per output: failures carried once resolved", ("0.26.0 (CUDA)",)),
)


def inproc_scheduler(llm) -> Scheduler:
    """The scheduler of an `LLM` whose engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    return llm.llm_engine.engine_core.engine_core.scheduler


def inproc_runner(llm) -> GPUModelRunner:
    """The model runner of an `LLM` whose engine core and one worker run in-process (as `inproc_scheduler`)."""
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def metadata_builders(runner: GPUModelRunner) -> list:
    """Every attention metadata builder of the runner (made at KV-cache init, before its cache tensors)."""
    return [b for groups in runner.attn_groups for group in groups for b in group.metadata_builders]


def register_kv_spec(spec_cls: type, manager_cls: type) -> None:
    """Register a KV cache spec and its manager without hiding vLLM's built-in specs.

    The registry fills itself lazily only while empty, so the built-ins are registered first.
    """
    KVCacheSpecRegistry._ensure_registered()
    KVCacheSpecRegistry.register(spec_cls, manager_cls, uniform_type_base_spec=spec_cls)


class ChunkSplitting:
    """Scheduler mixin (before vLLM's scheduler in the bases): once `split_chunks()` is called, every prefill
    chunk size passes through `self.split_chunk(request, num_new_tokens, start)`, which the subclass defines.

    vLLM's scheduler already routes chunk sizes through a splitting method where
    `need_mamba_block_aligned_split` (Mamba stops chunks at cacheable positions; one signature in 0.26.0
    and 0.32.0); kvcomp refuses non-attention layers, so the hook is free to reuse.
    """

    _kvcomp_splits = False

    def split_chunks(self) -> None:
        """Turn the hook on (after vLLM's `__init__`, which sets the flag for Mamba models)."""
        if not callable(getattr(Scheduler, "_mamba_block_aligned_split", None)):
            raise RuntimeError(f"kvcomp: vLLM {vllm_version()}'s scheduler has no chunk-split hook; {UNTESTED_VLLM}")
        self._kvcomp_splits = True
        self.need_mamba_block_aligned_split = True

    def _mamba_block_aligned_split(self, request, num_new_tokens, num_new_local_computed_tokens=0,
                                   num_external_computed_tokens=0):
        if not self._kvcomp_splits:
            return super()._mamba_block_aligned_split(
                request, num_new_tokens, num_new_local_computed_tokens, num_external_computed_tokens)
        start = request.num_computed_tokens + num_new_local_computed_tokens + num_external_computed_tokens
        return self.split_chunk(request, num_new_tokens, start)


def async_scheduling(vllm_config) -> bool:
    """Whether the engine schedules a step while the previous one runs (vLLM settles it in its config)."""
    return bool(vllm_config.scheduler_config.async_scheduling)


def scheduler_cls(vllm_config) -> str | None:
    """The scheduler class the engine config names (`--scheduler-cls`), as a qualified name, or None for vLLM's own."""
    value = vllm_config.scheduler_config.scheduler_cls
    return value if value is None or isinstance(value, str) else f"{value.__module__}.{value.__qualname__}"


def set_scheduler_cls(vllm_config, qualname: str) -> None:
    """Make the engine core build its scheduler from class `qualname` (0.26 and 0.32 both import a name
    with `resolve_obj_by_qualname`; a name travels to engine-core processes as text)."""
    vllm_config.scheduler_config.scheduler_cls = qualname


def pinned_hit(manager: KVCacheManager, request, result: tuple, protected: int) -> tuple:
    """`get_computed_blocks`'s result for a request that keeps `protected` prompt tokens raw: its hit cut to at
    most that, and the protected prefix's end pinned as the shared-prefix junction, so that sliding-window
    groups (which cache sparsely) keep the blocks a later request needs to hit it.

    A cut hit is searched again up to `protected` tokens rather than sliced: a sliding-window group's hit
    holds real blocks only in the window before the hit's end (0.26 and 0.32 alike)."""
    blocks, hit, boundary = result
    if hit > protected:
        found, hit, _ = manager.coordinator.find_longest_cache_hit(request.block_hashes, protected)
        blocks = manager.create_kv_cache_blocks(found)
    return blocks, hit, protected if protected > hit else boundary


def prefix_caching(vllm_config) -> bool:
    """Whether the engine runs vLLM's automatic prefix caching."""
    return bool(vllm_config.cache_config.enable_prefix_caching)


def set_row_num_blocks(block_table: BlockTable, row: int, num_blocks: int) -> None:
    """Shorten one request's row of a worker block table to its first `num_blocks` KV blocks."""
    per_kv_block = getattr(block_table, "blocks_per_kv_block", 1)  # 0.26 counts kernel blocks
    block_table.num_blocks_per_row[row] = num_blocks * per_kv_block


def cpu_kv_views(kv_cache: torch.Tensor, isa: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views of a CPU layer cache, tiled `[blocks, kv_heads, block_size // tile, tile,
    head_dim // pack, pack]` (see `kvcomp_kernels.paged_torch`).

    vLLM's CPU backend stores, per block and head, the block's keys and then its values, each packed
    as its ISA's kernels want: `vec` keys are dim-major, `amx` keys are 16-token rows of dimension
    pairs and `amx` values 16-dimension rows of token pairs. The packing is probed once per ISA.
    """
    num_blocks, num_kv_heads, block_size, head_dim2 = kv_cache.shape
    head_dim = head_dim2 // 2
    regions = kv_cache.view(num_blocks, num_kv_heads, -1)
    tilings = cpu_block_tilings(isa, kv_cache.dtype, block_size, head_dim)
    return tuple(
        regions.as_strided(
            (num_blocks, num_kv_heads, block_size // tile, tile, head_dim // pack, pack),
            (regions.stride(0), regions.stride(1), *strides),
            regions.storage_offset() + offset,
        )
        for offset, (tile, pack, strides) in zip((0, block_size * head_dim), tilings)
    )


def serve_subcommand() -> type | None:
    """vLLM's `vllm serve` command class where this process is that CLI (it imports the command before
    loading plugins), else None: importing it elsewhere would load the whole API server."""
    module = sys.modules.get("vllm.entrypoints.cli.serve")
    return getattr(module, "ServeSubcommand", None)


def cpu_attention_isa(dtype: torch.dtype, block_size: int, head_dim: int, cache_dtype: str) -> str:
    """The ISA whose kernels (and KV packing) vLLM's CPU attention picks for this model and cache."""
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return _get_attn_isa(dtype, block_size, head_dim, cache_dtype)


@lru_cache(maxsize=None)
def cpu_block_tilings(isa: str, dtype: torch.dtype, block_size: int, head_dim: int) -> tuple[tuple, ...]:
    """(tile, pack, strides) of keys and of values inside one block and head, learnt from vLLM's writer.

    Block d of a scratch cache receives tokens whose only non-zero entry is dim d, valued t + 1
    (exact in every float dtype for block sizes up to 256); where each lands gives the layout.
    """
    one_hot = torch.eye(head_dim, dtype=dtype)
    tokens = (torch.arange(1, block_size + 1, dtype=dtype)[None, :, None] * one_hot[:, None, :]).reshape(-1, 1, head_dim)
    kv_cache = torch.zeros(head_dim, 1, block_size, 2 * head_dim, dtype=dtype)
    key_cache, value_cache = kv_cache.view(head_dim, 1, 2 * block_size, head_dim).chunk(2, dim=2)
    slots = torch.arange(head_dim * block_size, dtype=torch.int64)
    ops.cpu_attn_reshape_and_cache(
        tokens, tokens, key_cache, value_cache, slots, isa, k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto"
    )
    regions = kv_cache.view(head_dim, 1, -1).chunk(2, dim=2)
    return tuple(_tiling_from_probe(_probe_offsets(region, block_size, head_dim), isa, dtype) for region in regions)


def _probe_offsets(region: torch.Tensor, block_size: int, head_dim: int) -> torch.Tensor:
    """Element offset of (token, dim) inside one block and head: `[block_size, head_dim]`."""
    offset = torch.empty(block_size, head_dim, dtype=torch.int64)
    for d in range(head_dim):
        where = region[d, 0].nonzero().squeeze(1)
        offset[region[d, 0, where].float().round().long() - 1, d] = where
    return offset


def _tiling_from_probe(offset: torch.Tensor, isa: str, dtype: torch.dtype) -> tuple[int, int, tuple[int, int, int, int]]:
    """The smallest (tile, pack) whose four strides reproduce every offset: token t sits at
    (t // tile, t % tile), dim d at (d // pack, d % pack)."""
    block_size, head_dim = offset.shape
    t, d = torch.arange(block_size)[:, None], torch.arange(head_dim)[None, :]
    for tile in (n for n in range(1, block_size + 1) if block_size % n == 0):
        for pack in (n for n in range(1, head_dim + 1) if head_dim % n == 0):
            strides = (
                int(offset[tile, 0]) if tile < block_size else 0,
                int(offset[1, 0]) if tile > 1 else 0,
                int(offset[0, pack]) if pack < head_dim else 0,
                int(offset[0, 1]) if pack > 1 else 0,
            )
            at = (t // tile) * strides[0] + (t % tile) * strides[1] + (d // pack) * strides[2] + (d % pack) * strides[3]
            if torch.equal(offset, at):
                return tile, pack, strides
    raise ValueError(
        f"kvcomp: vLLM's CPU KV cache packing for ISA '{isa}' at {str(dtype).removeprefix('torch.')} is not one "
        "kvcomp can address; serve with another --dtype (float32 is packed strided on x86)"
    )


__all__ += ["RequestRejected", "add_worker_method", "engine_client_of", "kv_cache_group_sizes", "pool_blocks"]


class RequestRejected(VLLMValidationError, ValueError):
    """A request kvcomp cannot serve, raised inside the engine client: the server answers it 400
    (vLLM 0.32's validation errors are no ValueError, 0.26's are), Python callers catch a ValueError."""


def kv_cache_group_sizes(layers_per_tier: list[int]) -> list[int]:
    """KV cache groups vLLM's hybrid allocator makes per tier, from each tier's layer count (a hybrid model's
    sliding-window layers, which share one spec, count as one more tier).

    It splits every kind of spec into groups of one size: the smallest kind's layer count, or the
    largest's when that is under 1.5x the smallest (`_get_kv_cache_groups_uniform_page_size`).
    The front end needs this before any engine config exists there; a test compares it with the engine's.
    """
    smallest, largest = min(layers_per_tier), max(layers_per_tier)
    size = largest if largest < smallest * 1.5 else smallest
    return [cdiv(count, size) for count in layers_per_tier]


def pool_blocks(vllm_config) -> int | None:
    """Usable blocks of the engine's KV pool (vLLM holds one back), or None before the engine reports it."""
    blocks = vllm_config.cache_config.num_gpu_blocks
    return blocks - 1 if blocks else None


def add_worker_method(name: str, func) -> None:
    """Make `func(worker)` callable by `name` through vLLM's collective RPC, on every executor."""
    from vllm.v1.worker.worker_base import WorkerWrapperBase  # executors call methods on this wrapper

    if not hasattr(WorkerWrapperBase, name):
        setattr(WorkerWrapperBase, name, func)


def engine_client_of(scope):
    """The engine client of the vLLM API server handling an ASGI request, or None outside one."""
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "engine_client", None)


__all__ += ["finish_with_errors"]


def finish_with_errors(scheduler: Scheduler, outputs: dict, req_ids: list[str]) -> None:
    """Finish `req_ids` as errors (the client gets vLLM's error response) inside `update_from_output`'s
    result `outputs` (client index -> EngineCoreOutputs): their blocks go back to the pool and any
    token they sampled this step is dropped, since it came from a cache kvcomp failed to compact."""
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
    from vllm.v1.request import RequestStatus

    failed = set(req_ids)
    for eco in outputs.values():
        eco.outputs = [o for o in eco.outputs if o.request_id not in failed]
    for request in scheduler.finish_requests(failed, RequestStatus.FINISHED_ERROR):
        eco = outputs.setdefault(request.client_index, EngineCoreOutputs())
        eco.outputs.append(EngineCoreOutput(request.request_id, [], finish_reason=FinishReason.ERROR))


__all__ += ["beam_search_owner", "untested_features"]


def untested_features(vllm_config) -> dict[str, object]:
    """The vLLM features kvcomp's compression is not tested with that this engine config turns on,
    by key of `refusals.REFUSED`, each with the value that turns it on."""
    cache, model = vllm_config.cache_config, vllm_config.model_config
    found: dict[str, object] = {}
    if cache.cache_dtype not in ("auto", str(model.dtype).removeprefix("torch.")):
        found["kv_cache_dtype"] = cache.cache_dtype
    if getattr(cache, "kv_offloading_size", None) is not None:  # vLLM turns it into an offloading connector
        found["kv_offloading"] = cache.kv_offloading_size
    elif vllm_config.kv_transfer_config is not None and vllm_config.kv_transfer_config.kv_connector:
        found["kv_transfer"] = vllm_config.kv_transfer_config.kv_connector
    events = getattr(vllm_config, "kv_events_config", None)
    if events is not None and events.enable_kv_cache_events:
        found["kv_events"] = True
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        found["pipeline_parallel"] = vllm_config.parallel_config.pipeline_parallel_size
    if vllm_config.lora_config is not None:
        found["lora"] = True
    if vllm_config.scheduler_config.disable_hybrid_kv_cache_manager and compressed_layers(model.hf_text_config).hybrid:
        found["hybrid_kv_cache_manager_off"] = True
    if vllm_config.speculative_config is not None:
        found["speculative"] = getattr(vllm_config.speculative_config, "method", None) or True
    if scheduler_cls(vllm_config) is not None:
        found["scheduler_cls"] = scheduler_cls(vllm_config)
    return found


def beam_search_owner() -> type:
    """The class in `LLM`'s MRO that defines `beam_search` (0.32: a mixin), for `patch`."""
    from vllm import LLM

    return next(c for c in LLM.__mro__ if "beam_search" in c.__dict__)


__all__ += ["worker_rank"]


def worker_rank(worker) -> int:
    """A worker's rank in its engine's executor (its tensor-parallel rank: kvcomp refuses pipeline stages)."""
    return int(getattr(worker, "global_rank", 0) or 0)


def worker_engine(worker) -> tuple[int, int]:
    """The data-parallel index of a worker's engine and the engine's worker count (0 and 1 before init)."""
    config = vars(worker).get("vllm_config")  # not getattr: the wrapper forwards unknown names to its worker
    parallel = getattr(config, "parallel_config", None)
    if parallel is None:
        return 0, 1
    return int(getattr(parallel, "data_parallel_index", parallel.data_parallel_rank) or 0), parallel.world_size


async def rpc_every_engine(engine_client, method: str) -> list:
    """`collective_rpc(method)` on the workers of every engine the API server's client reaches: a data-parallel
    client's own `collective_rpc` asks its first engine only. Results of all workers, engine after engine."""
    core = getattr(engine_client, "engine_core", None)
    if len(getattr(core, "core_engines", ())) > 1 and hasattr(core, "call_utility_all_async"):
        per_engine = await core.call_utility_all_async("collective_rpc", method, None, (), None)
        return [result for results in per_engine for result in results]
    return await engine_client.collective_rpc(method)


__all__ += ["rpc_every_engine", "worker_engine"]


__all__ += ["tp_coordinator"]


def tp_coordinator():
    """vLLM's tensor-parallel `GroupCoordinator` of this worker (world_size, cpu_group, all_gather), or None
    before the distributed groups exist (one-process tests)."""
    from vllm.distributed import parallel_state

    return parallel_state.get_tp_group() if parallel_state.model_parallel_is_initialized() else None
