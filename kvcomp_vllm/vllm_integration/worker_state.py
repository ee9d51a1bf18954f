"""This worker's bookkeeping of compressed requests (`WorkerCompression`) and each step's rows of them
(`CompressionStep`): the runner hooks (`worker`) update both; the attention backend (`backend`) reads the
step from the attention metadata its builder builds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..cache_layout import MemberLayout
from ..config import KVPolicyConfig
from ..policies import KVPolicy, RequestCompressor, make_policy
from ..policies.protected import protected_policy
from . import compacted
from .compat import GPUModelRunner, init_logger, prefix_caching, set_row_num_blocks, tp_coordinator
from .kv_spec import CompressedAttentionSpec, kept_blocks
from .attention_layers import CompressedLayers
from .member_decode import MemberDecode
from .prefix_cache import protected_prefix
from .settings import engine_policy, fixed_protected, model_layers, num_layers, request_policy
from .tensor_parallel import HeadExchange, TPGroup, failed_anywhere

logger = init_logger("vllm.kvcomp")


@dataclass
class CompressedRequest:
    """One request's compression state on this worker."""

    prompt_len: int
    compressor: RequestCompressor
    tier_layers: dict[int, int]  # tier (layers sharing a budget) -> a layer of it
    evicted: dict[int, int] = field(default_factory=dict)  # tier -> tokens evicted as the block rows stand
    window_queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # layer -> query chunks
    members: dict[int, MemberLayout] = field(default_factory=dict)  # PoD member layer -> its compacted layout
    prompt_slots: dict[int, int] = field(default_factory=dict)  # layer -> positions it holds of the whole prompt
    compacted_at: int = 0  # compression point of the latest compaction
    truncated_at: int = 0  # compression point the block rows are cut for
    evicts: bool = False  # whether any tier evicts any prompt token
    protected: int = 0  # first prompt tokens kept raw for the prefix cache (`prefix_cache`)

    def evicted_after(self, point: int) -> dict[int, int]:
        """Tokens each tier has evicted once the prompt is compressed at `point`."""
        policy = self.compressor.policy
        return {t: policy.layout.evicted_after(layer, self.prompt_len, point) for t, layer in self.tier_layers.items()}

    def compresses_at(self, point: int) -> bool:
        """Whether some tier evicts tokens at this compression point."""
        return any(after > self.evicted.get(t, 0) for t, after in self.evicted_after(point).items())


@dataclass(frozen=True)
class RowSpan:
    """A batch row of this step: its request, the positions `[start, end)` it processes, and the
    compression point its prompt chunk leads up to (0 past the prompt)."""

    row: int
    req_id: str
    start: int
    end: int
    point: int = 0


@dataclass(frozen=True, eq=False)
class CompressionStep:
    """One step's batch rows of compressed requests, made once per step (`after_update`): the slot mapping
    and the metadata builder read it, and the builder attaches it to the step's attention metadata
    (`STEP_FIELD`) for the attention impl; `state` is the bookkeeping the impl updates (plans, failures)."""

    state: WorkerCompression
    row_evicted: dict[int, torch.Tensor] = field(default_factory=dict)  # tier -> evicted tokens per batch row
    row_tokens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))  # tokens per row
    starts: list[int] = field(default_factory=lambda: [0])  # each row's first token in the flattened batch (host)
    rows: list[RowSpan] = field(default_factory=list)  # the step's batch rows of compressed requests
    compress_rows: list[RowSpan] = field(default_factory=list)  # rows whose chunk reaches a compression point
    window_rows: list[RowSpan] = field(default_factory=list)  # rows ending inside the next point's observation window
    member_rows: dict[int, list[RowSpan]] = field(default_factory=dict)  # PoD member layer -> rows past their prompt
    member_inputs: dict[tuple, tuple] = field(default_factory=dict)  # member-decode inputs, filled by the impl
    member_decode_rows: int = 0  # one-token rows past the prompt whose member layers decode from `state.member_decode`
    decode_only: bool = False  # every batch row is one token past its prompt (uniform decode)


STEP_FIELD = "kvcomp_step"  # attention metadata attribute: the `CompressionStep` it was built for


class WorkerCompression:
    """One runner's state shared by its hooks, its metadata builders and, through the step, the attention impl.

    `policy` is the server's: its tiers give the KV cache groups; each request plans with its own.
    `move_tokens` bounds one batched compaction move (`scratch`): requests past it move in groups.
    `tp` is the tensor-parallel group this worker's heads are part of (None on one rank). `layers` maps the
    model's layers to the policy's (a hybrid model's sliding-window layers to none); default: all layers.
    `member_decode` holds a PoD server's member-decode buffers (`member_decode`), None for other policies.
    """

    def __init__(self, policy: KVPolicy, group_specs: list, move_tokens: int, tp: TPGroup | None = None,
                 layers: CompressedLayers | None = None, prefix_caching: bool = False,
                 member_decode: MemberDecode | None = None):
        self.policy = policy
        self.member_decode = member_decode
        self.layers = layers or CompressedLayers(tuple(range(policy.num_layers)), policy.num_layers)
        self.prefix_caching = prefix_caching
        self.move_tokens = move_tokens
        self.tp = tp
        self.group_tiers = [s.tier if isinstance(s, CompressedAttentionSpec) else None for s in group_specs]
        self.tier_layers = {s.tier: s.layer for s in group_specs if isinstance(s, CompressedAttentionSpec)}
        self.block_size = next((s.block_size for s in group_specs if isinstance(s, CompressedAttentionSpec)), 1)
        self.counted: set[str] = set()  # requests whose compacted prompt is counted (kept across preemption)
        self.protected: dict[str, int] = {}  # request -> its protected prefix, fixed at admission (kept across preemption)
        self.uncounted: list[tuple] = []  # this step's counts, recorded once the step's failures are known
        self.requests: dict[str, CompressedRequest] = {}
        self.step = CompressionStep(self)  # the latest step's rows
        self.failed: set[str] = set()  # requests whose kvcomp work raised here: finished as errors
        self.unreported: list[str] = []  # failures the scheduler has not yet been told of

    def fail(self, req_id: str, stage: str) -> None:
        """Record that kvcomp's work for one request raised (called inside `except`): the request
        stops compressing here and the scheduler finishes it as an error; other requests go on."""
        logger.exception("kvcomp: %s failed for request %s; finishing it with an error", stage, req_id)
        if req_id not in self.failed:
            self.failed.add(req_id)
            self.unreported.append(req_id)

    def take_failed(self) -> list[str]:
        """Failures since the last call, for the scheduler to finish (sent with the step's output).

        With tensor parallelism every rank first learns the step's failures of all ranks, so each stops
        compressing the request and the output rank, the one the scheduler hears, reports them. Then the
        step's compacted prompts are counted, those of failed requests left out on every rank alike.
        """
        step = self.step
        if self.tp is not None and (step.compress_rows or step.window_rows or step.member_rows):
            for req_id in failed_anywhere(self.tp, [s.req_id for s in step.rows], set(self.unreported)):
                if req_id not in self.failed:
                    logger.warning("kvcomp: request %s failed on another tensor-parallel rank", req_id)
                    self.failed.add(req_id)
                    self.unreported.append(req_id)
        for req_id, *count in self.uncounted:
            if req_id not in self.failed:  # a request failed on any rank counts nothing
                compacted.record(*count)
        self.uncounted = []
        failed, self.unreported = self.unreported, []
        return failed

    def head_exchange(self, req_id: str, layer: int, span: RowSpan) -> HeadExchange | None:
        """The gather of head statistics that planning `layer` of this row runs across the tensor-parallel
        ranks, or None where it runs none: one rank, a layer that keeps its cache, or a head-local rule.
        Decided from host facts alone, so every rank agrees, whatever this rank's work did before."""
        request = self.requests[req_id]
        tier = self.policy.layout.budget_tier(layer)
        if self.tp is None or not request.compressor.gathers(layer):
            return None
        return HeadExchange(self.tp) if request.evicted_after(span.point)[tier] > request.evicted[tier] else None

    def track(self, req_id: str, prompt_len: int, sampling_params, hit: int = 0) -> CompressedRequest:
        """Start following a request under its own policy (the server's unless it overrides it), after
        the protected prefix its first admission's prefix-cache `hit` gave it."""
        policy = request_policy(self.policy, sampling_params)
        if self.prefix_caching and req_id not in self.protected:
            fixed = fixed_protected(sampling_params)  # the scheduler's; else derived from the hit as it does
            self.protected[req_id] = protected_prefix(policy, prompt_len, hit, self.block_size) if fixed is None else fixed
        protected = self.protected.get(req_id, 0)
        state = CompressedRequest(prompt_len, RequestCompressor(protected_policy(policy, protected)), self.tier_layers,
                                  protected=protected)
        state.evicted = dict.fromkeys(self.tier_layers, 0)
        state.evicts = state.compresses_at(prompt_len)
        self.requests[req_id] = state
        return state

    def before_update(self, runner: GPUModelRunner, out) -> None:
        """Forget ended requests, track new ones, and cut the rows of requests compacted last step."""
        for req_id in (*out.finished_req_ids, *(getattr(out, "preempted_req_ids", None) or ())):
            self.requests.pop(req_id, None)
            self.failed.discard(req_id)
        self.counted.difference_update(out.finished_req_ids)
        for req_id in out.finished_req_ids:
            self.protected.pop(req_id, None)
        for new in out.scheduled_new_reqs:
            self.track(new.req_id, len(new.prompt_token_ids), new.sampling_params, new.num_computed_tokens)
        cached = out.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self.requests.get(req_id)
            if state is None:  # resumed after preemption: prefilled (and compressed) again
                resumed = runner.requests[req_id]
                state = self.track(req_id, resumed.num_prompt_tokens, resumed.sampling_params)
            if state.compacted_at > state.truncated_at:
                self._truncate(runner, req_id, state, cached.num_computed_tokens[i])

    def _truncate(self, runner: GPUModelRunner, req_id: str, state: CompressedRequest, num_computed: int) -> None:
        """Cut the request's block rows to what the scheduler kept after its latest compaction."""
        row = runner.input_batch.req_id_to_index.get(req_id)
        block_ids = runner.requests[req_id].block_ids
        after = state.evicted_after(state.compacted_at)
        for group, tier in enumerate(self.group_tiers):
            if tier is not None and after[tier] > state.evicted[tier]:
                keep = kept_blocks(num_computed, after[tier], runner.input_batch.block_table[group].block_size)
                del block_ids[group][keep:]
                if row is not None:
                    set_row_num_blocks(runner.input_batch.block_table[group], row, keep)
        state.evicted = after
        state.truncated_at = state.compacted_at

    def after_update(self, runner: GPUModelRunner, out) -> None:
        """Per-row offsets and prefill ends for this step, in the batch's final row order."""
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        row_evicted = {t: [0] * num_reqs for t in self.tier_layers}  # lists: per-element tensor writes are slow
        row_tokens = torch.tensor([out.num_scheduled_tokens.get(r, 0) for r in batch.req_ids[:num_reqs]], dtype=torch.int64)
        rows, compress_rows, window_rows, member_rows = [], [], [], {}
        decode, decode_rows, decode_only = self.member_decode, {}, num_reqs > 0
        for row, req_id in enumerate(batch.req_ids[:num_reqs]):
            state = self.requests[req_id]
            for tier, evicted in state.evicted.items():
                row_evicted[tier][row] = evicted
            start = int(batch.num_computed_tokens_cpu[row])
            end = start + out.num_scheduled_tokens.get(req_id, 0)
            decode_only = decode_only and start >= state.prompt_len and end == start + 1
            if req_id in self.failed:
                continue
            ends_prompt = start < state.prompt_len <= end
            if not state.evicts:
                if ends_prompt:
                    self._count_as_held(req_id, state)
                continue
            policy = state.compressor.policy
            point = policy.layout.next_compression_point(state.prompt_len, start) if start < state.prompt_len else 0
            span = RowSpan(row, req_id, start, end, point)
            rows.append(span)
            if start >= state.prompt_len:
                for layer in state.members:
                    member_rows.setdefault(layer, []).append(span)
                if decode is not None and end == start + 1 and state.members.keys() == decode.owners.keys():
                    # One layout for all member layers (`CompressingAttention._plan` checks).
                    decode_rows[row] = next(iter(state.members.values())).decode_row(end - state.prompt_len)
                elif state.members:
                    decode_only = False  # its member layers overwrite their rows afterwards (`_attend_members`)
            if not point or not state.compresses_at(point):
                if ends_prompt:  # the last point moves nothing: the layers keep what they hold
                    self._count_as_held(req_id, state)
                continue
            if point <= end:
                compress_rows.append(span)
            elif end > point - policy.selector.observation_window:
                window_rows.append(span)
        if decode is not None:
            decode.fill(decode_rows)
        self.step = CompressionStep(
            self, {t: torch.tensor(v, dtype=torch.int64) for t, v in row_evicted.items()}, row_tokens,
            [0, *torch.cumsum(row_tokens, 0).tolist()], rows, compress_rows, window_rows, member_rows,
            member_decode_rows=len(decode_rows), decode_only=decode_only,
        )

    def prompt_compacted(self, req_id: str, layer: int, slots: int) -> None:
        """Note the positions `layer` holds of a request's prompt after its last compaction; the request
        is counted once every layer has compacted it."""
        state = self.requests[req_id]
        state.prompt_slots[layer] = slots
        if len(state.prompt_slots) == self.policy.num_layers:
            self._count(req_id, state, [state.prompt_slots[layer] for layer in range(self.policy.num_layers)])

    def _count_as_held(self, req_id: str, state: CompressedRequest) -> None:
        layers = range(self.policy.num_layers)
        self._count(req_id, state, [state.prompt_len - state.evicted[self.policy.layout.budget_tier(layer)] for layer in layers])

    def _count(self, req_id: str, state: CompressedRequest, slots: list[int]) -> None:
        if req_id not in self.counted:
            self.counted.add(req_id)
            self.uncounted.append((req_id, state.compressor.policy.name, state.prompt_len, slots, self.block_size,
                                   state.protected))

    def token_offsets(self, group: int, device: torch.device, num_tokens: int) -> torch.Tensor | None:
        """Per-token cache offset of one KV group this step, or None where nothing is shifted."""
        tier, step = self.group_tiers[group], self.step
        if tier is None or not bool(step.row_evicted[tier].any()):
            return None
        # numpy, not torch.repeat_interleave: on the H100 host that small CPU op cost 1-3 ms a call.
        offsets = torch.from_numpy(np.repeat(step.row_evicted[tier].numpy(), step.row_tokens.numpy()))
        if offsets.shape[0] != num_tokens:
            raise RuntimeError(f"kvcomp: {offsets.shape[0]} scheduled tokens, {num_tokens} positions")
        return offsets.to(device, non_blocking=True)


def new_state(runner: GPUModelRunner) -> WorkerCompression | None:
    """A fresh compression state for the runner's KV cache as now configured, or None without a compressing policy."""
    config = engine_policy(runner.vllm_config)
    if config is None:
        return None
    groups = [g.kv_cache_spec for g in runner.kv_cache_config.kv_cache_groups]
    vllm_config = runner.vllm_config
    tp = TPGroup.of(tp_coordinator(), vllm_config.model_config.get_total_num_kv_heads())
    policy = runner_policy(runner, config)
    max_len = vllm_config.model_config.max_model_len
    scheduler, compilation = vllm_config.scheduler_config, vllm_config.compilation_config
    rows = max(scheduler.max_num_seqs, scheduler.max_num_batched_tokens, compilation.max_cudagraph_capture_size or 0)
    return WorkerCompression(
        policy, groups, max_len, tp, model_layers(vllm_config), prefix_caching(vllm_config),
        MemberDecode.for_policy(policy, rows, max_len, runner.device),
    )


def runner_policy(runner: GPUModelRunner, config: KVPolicyConfig) -> KVPolicy:
    """The server's policy for the runner's model."""
    return make_policy(config, num_layers(runner.vllm_config))
