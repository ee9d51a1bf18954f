"""Backend-independent parts of kvcomp's attention: shifted `seq_lens`, and compaction at compression points.

Prefill and decode attention stay the backend's own kernels. The builder mixin shortens each
compressed request's `seq_lens` by the tokens its tier evicted, so the kernel reads exactly the
compacted cache. The impl mixin, after a layer's attention over a step in which requests reach a
compression point (the prompt's end, or every `prefill_chunk` tokens), plans each such request
(observation scores read from the paged cache, only for policies that score) and compacts all of
them in one batched move. PoD member layers' decode rows attend once, through `paged_decode`, which
reads distant keys from the owner layer (`cache_layout`): vLLM's attention sees them cut to one key, and
in decode-only steps (full CUDA graphs included) runs for member layers only where a row needs it
(`member_decode`). On CUDA scoring, moves and member decode are the Triton kernels of `kvcomp_kernels`,
compiled when the KV cache is allocated (`prepare_caches`); elsewhere their torch references. Under
tensor parallelism each rank scores and moves its own KV heads; rules spanning heads gather every
rank's statistics first (`tensor_parallel`).
"""

from __future__ import annotations

import dataclasses

import torch

from kvcomp_kernels import for_tensor, move_tokens_, paged_decode, warm_up, window_scores

from ..cache_layout import MemberLayout, move_sources
from ..policies import PromptView
from .compat import extract_layer_index, full_cudagraph_capture, layer_context
from .kv_spec import CompressedAttentionSpec
from .member_decode import short_seq_lens
from .timing import timed
from .worker_state import STEP_FIELD, CompressionStep, RowSpan, WorkerCompression


class ShiftedSeqLens:
    """Metadata-builder mixin: compressed requests' `seq_lens` become their compacted cache length, and
    the metadata carries the step's `CompressionStep` (attribute `STEP_FIELD`) to the attention impl.
    In a PoD member group the rows that decode through `paged_decode` get one key past the common prefix
    (`member_decode.short_seq_lens`): vLLM's attention over them is dropped anyway.

    `kvcomp_state` is the runner's state, handed over at KV-cache init (`worker`); None without a policy.
    The shifted lengths live in a buffer of the builder's own, allocated once: a full CUDA graph
    captures the address the kernel reads, and each step rewrites it in place.
    """

    kvcomp_state: WorkerCompression | None = None

    @property
    def supports_update_block_table(self) -> bool:
        """False for compressed layers: vLLM would otherwise hand a KV cache group the metadata built by another
        group of the same spec with only the block table swapped, so this builder's buffer, which that group's
        full CUDA graph reads, would never be written (a hybrid model's two snapkv groups decoded garbage)."""
        return not isinstance(self.kv_cache_spec, CompressedAttentionSpec) and super().supports_update_block_table

    def build(self, common_prefix_len, common_attn_metadata, *args, **kwargs):
        step = None if self.kvcomp_state is None else self.kvcomp_state.step
        if isinstance(self.kv_cache_spec, CompressedAttentionSpec):
            cm = common_attn_metadata
            seq_lens = self._shifted_seq_lens(cm.seq_lens, step)
            decode = None if step is None else step.state.member_decode
            if decode is not None and step.member_decode_rows and self.kv_cache_spec.tier == decode.tier:
                seq_lens = short_seq_lens(seq_lens, decode.selected, common_prefix_len)
            common_attn_metadata = dataclasses.replace(cm, seq_lens=seq_lens)
        metadata = super().build(common_prefix_len, common_attn_metadata, *args, **kwargs)
        if step is not None:
            setattr(metadata, STEP_FIELD, step)
        return metadata

    def _shifted_seq_lens(self, seq_lens: torch.Tensor, step: CompressionStep | None) -> torch.Tensor:
        rows = seq_lens.shape[0]
        buffer = getattr(self, "_kvcomp_seq_lens", None)
        if buffer is None or buffer.shape[0] < rows:
            size = max(rows, self.vllm_config.scheduler_config.max_num_seqs)
            buffer = self._kvcomp_seq_lens = torch.empty(size, dtype=seq_lens.dtype, device=seq_lens.device)
        evicted = None if step is None else step.row_evicted.get(self.kv_cache_spec.tier)
        if evicted is None or not bool(evicted.any()):
            return buffer[:rows].copy_(seq_lens)
        shift = torch.zeros(rows, dtype=seq_lens.dtype)  # rows past the batch (graph padding) keep theirs
        shift[: min(rows, evicted.shape[0])] = evicted[:rows]
        return torch.sub(seq_lens, shift.to(seq_lens.device, non_blocking=True), out=buffer[:rows])


class CompressingAttention:
    """Attention-impl mixin: compacts requests' caches in the forward that ends their prompts.

    Subclasses pair it with a vLLM attention impl and say how to view that backend's layer cache.
    """

    def kv_views(self, layer, kv_cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value views `[blocks, kv_heads, block_size, head_dim]` of a layer cache."""
        raise NotImplementedError

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        step = getattr(attn_metadata, STEP_FIELD, None)  # None during profiling and without a policy
        member = self._member_layer(step, layer)
        if member is not None and (full_cudagraph_capture() or step.decode_only):
            return self._decode_members(step, member, layer, query, key, value, kv_cache, attn_metadata, output,
                                        *args, **kwargs)
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        if step is None or not step.rows:
            return output
        state = step.state
        layer_idx = state.layers.policy_layer(extract_layer_index(layer.layer_name))
        if layer_idx is None:  # a hybrid model's sliding-window layer: vLLM's own
            return output
        for span in step.window_rows:
            if span.req_id not in state.failed:
                try:
                    self._stash_window(step, span, layer_idx, query)
                except Exception:
                    state.fail(span.req_id, "stashing window queries")
        if step.compress_rows:
            self._compact(step, layer, layer_idx, query, kv_cache, attn_metadata)
        members = [s for s in step.member_rows.get(layer_idx, ()) if s.req_id not in state.failed]
        if members:
            try:
                self._attend_members(step, members, layer, layer_idx, query, kv_cache, attn_metadata, output)
            except Exception:
                for span in members:
                    state.fail(span.req_id, "member-layer decode")
        return output

    @staticmethod
    def _member_layer(step: CompressionStep | None, layer) -> int | None:
        """The policy layer of `layer` where it is a member layer of a PoD server, else None."""
        decode = None if step is None else step.state.member_decode
        if decode is None:
            return None
        layer_idx = step.state.layers.policy_layer(extract_layer_index(layer.layer_name))
        return layer_idx if layer_idx in decode.owners else None

    def _decode_members(self, step: CompressionStep, layer_idx: int, layer, query, key, value, kv_cache, metadata,
                        output, *args, **kwargs):
        """A member layer's forward over a batch of one token per row (uniform decode), captured by a full
        CUDA graph or eager: the selected rows (`MemberDecode`) attend once, through `paged_decode`, from the
        runner's buffers; vLLM's attention runs for the other rows only, and not at all when every row is
        selected in an eager step. Nothing here reads the step's host rows, so a captured graph replays it
        for any later batch of its size."""
        decode = step.state.member_decode
        rows = metadata.block_table.shape[0]  # the batch's rows (with graph padding): one query token each
        capture = full_cudagraph_capture()
        if capture and metadata.max_query_len != 1:
            raise RuntimeError("kvcomp: pod member layers decode inside full CUDA graphs of decode steps only; "
                               "serve with cudagraph_mode FULL_AND_PIECEWISE or FULL_DECODE_ONLY, not FULL")
        every_row = not capture and step.member_decode_rows == rows
        if not every_row:
            output = super().forward(layer, query, key, value, kv_cache, metadata, output, *args, **kwargs)
        if not step.member_decode_rows and not capture:
            return output
        try:
            if query.shape[0] < rows or rows > decode.capacity:
                raise RuntimeError(f"kvcomp: {query.shape[0]} query tokens for {rows} decode rows")
            key_cache, value_cache = self.kv_views(layer, kv_cache)
            owner = step.state.layers.model_layer(decode.owners[layer_idx])
            owner_metadata, owner_kv_cache = layer_context(layer.layer_name, owner)
            result = for_tensor(paged_decode, query)(
                query.view(-1, self.num_heads, self.head_size)[:rows],
                key_cache,
                value_cache,
                metadata.block_table[:rows],
                decode.layout[:rows],
                decode.max_len,  # as when captured: eager steps and graph replays split keys alike
                self.scale,
                owner_key_cache=self.kv_views(layer, owner_kv_cache)[0],
                owner_block_tables=owner_metadata.block_table[:rows],
            ).to(output.dtype)
            rows_out = output.view(output.shape[0], self.num_heads, self.head_size)[:rows]
            rows_out.copy_(result if every_row else torch.where(decode.selected[:rows, None, None], result, rows_out))
        except Exception:
            if capture:
                raise
            for span in step.member_rows.get(layer_idx, ()):
                step.state.fail(span.req_id, "member-layer decode")
        return output

    @staticmethod
    def _window_part(step: CompressionStep, span: RowSpan, query):
        """Queries of this chunk in the observation window of its compression point, `[tokens, heads, dim]`."""
        request = step.state.requests[span.req_id]
        first = max(span.start, span.point - request.compressor.policy.selector.observation_window)
        last = min(span.end, span.point)
        base = step.starts[span.row] - span.start  # the host copy of query_start_loc: no device sync
        return query[base + first : base + last]

    def _stash_window(self, step: CompressionStep, span: RowSpan, layer_idx: int, query) -> None:
        """Keep this chunk's window queries for the layer's scoring in a later chunk (scoring layers only).

        They wait in host memory: any number of requests may wait, and the GPU holds only the pool and
        the scratch vLLM's profiling counted. The copy back is queued on the same stream.
        """
        request = step.state.requests[span.req_id]
        if request.compressor.policy.selector.source_layer(layer_idx) == layer_idx:
            part = self._window_part(step, span, query)
            part = part.to("cpu", non_blocking=True) if part.is_cuda else part.clone()
            request.window_queries.setdefault(layer_idx, []).append(part)

    def _prompt_view(self, step: CompressionStep, span: RowSpan, layer_idx, held: int, query, key_cache, blocks) -> PromptView:
        """The `held` prompt tokens this layer's cache holds at the point, less the request's protected
        prefix (`prefix_cache`); scores come from the paged cache, every held token attended to.

        The window queries are gathered once, so a policy may score with several windows (windowkv's auto).
        """
        request = step.state.requests[span.req_id]
        protected = request.protected
        gathered: list[torch.Tensor] = []

        def scores(w: int) -> torch.Tensor:
            if not gathered:
                parts = request.window_queries.pop(layer_idx, [])
                parts = [p.to(query.device, non_blocking=True) for p in parts]
                window = torch.cat([*parts, self._window_part(step, span, query)])
                gathered.append(window.view(window.shape[0], self.num_heads, self.head_size).transpose(0, 1))
            full = for_tensor(window_scores, key_cache)(gathered[0][:, -w:], key_cache, blocks, held, self.scale)
            return full[:, protected:]

        return PromptView(held - protected, key_cache.shape[1], key_cache.device, scores,
                          context_len=request.prompt_len - protected)

    def _compact(self, step: CompressionStep, layer, layer_idx, query, kv_cache, metadata) -> None:
        """Plan every request reaching a compression point in this step and move their kept tokens in
        batched moves, each of at most `state.move_tokens` padded tokens (the scratch profiling counted)."""
        state = step.state
        key_cache, value_cache = self.kv_views(layer, kv_cache)
        tier = state.policy.layout.budget_tier(layer_idx)
        rows, sources, skips = [], [], []  # skips: the blocks of each row's protected prefix, never moved

        def flush() -> None:
            try:
                self._move(state, rows, sources, skips, key_cache, value_cache, metadata)
            except Exception:
                for span in step.compress_rows:
                    if span.row in rows:
                        state.fail(span.req_id, f"compaction of layer {layer_idx}")
            rows.clear()
            sources.clear()
            skips.clear()

        for span in step.compress_rows:
            request = state.requests[span.req_id]
            # The block rows are cut as planned even for a failed request: the scheduler has freed its blocks.
            request.compacted_at = span.point
            exchange = state.head_exchange(span.req_id, layer_idx, span)  # with the other TP ranks
            if span.req_id in state.failed:
                if exchange is not None:
                    exchange.stand_in()
                continue
            held = span.point - request.evicted[tier]  # prompt positions the layer holds; after a move, those it kept
            try:
                source = self._plan(step, span, request, layer_idx, tier, query, key_cache, metadata,
                                    exchange)
            except Exception:
                if exchange is not None:
                    exchange.stand_in()
                state.fail(span.req_id, f"scoring layer {layer_idx}")
                continue
            if source is not None:
                width = max([source.shape[-1], *(s.shape[-1] for s in sources)])  # of the padded move
                if rows and (len(rows) + 1) * width > state.move_tokens:
                    flush()
                sources.append(source)
                rows.append(span.row)
                skips.append(request.protected // state.block_size)
                held = request.protected + source.shape[-1] - (span.end - span.point)
            if span.point == request.prompt_len:
                state.prompt_compacted(span.req_id, layer_idx, held)
        if rows:
            flush()

    def _plan(self, step: CompressionStep, span: RowSpan, request, layer_idx: int, tier: int, query, key_cache, metadata,
              exchange=None):
        """Score and plan one request at its compression point: the move sources of its kept tokens,
        or None where this layer keeps its cache as it is. `exchange` gathers head statistics across
        tensor-parallel ranks where the request's rule spans heads."""
        before = request.evicted[tier]
        plan = None
        if request.evicted_after(span.point)[tier] > before:
            held = span.point - before
            view = self._prompt_view(step, span, layer_idx, held, query, key_cache, metadata.block_table[span.row])
            with timed("scoring", request.compressor.policy.name, key_cache.device):
                plan = request.compressor.plan(layer_idx, view, gather=exchange)
        request.window_queries.pop(layer_idx, None)  # unused when the layer reuses a plan or keeps all
        if plan is None or plan.keep is None:
            return None
        if plan.shared is not None:
            start, count = request.compressor.policy.layout.distant_span(request.prompt_len)
            member = MemberLayout(plan.key_owner, request.protected + plan.keep.shape[1], start, count)
            if any(m.decode_row(0) != member.decode_row(0) for m in request.members.values()):
                raise RuntimeError("kvcomp: a request's member layers differ in layout; member decode shares one")
            request.members[layer_idx] = member
        # Tokens past the point in this chunk (recompute after preemption) follow the kept ones verbatim. The
        # move addresses the cache after the protected prefix: positions count from it.
        later = torch.arange(span.point, span.end, device=key_cache.device) - before - request.protected
        return move_sources(plan, later)

    @staticmethod
    def _move(state, rows: list[int], sources: list[torch.Tensor], skips: list[int], key_cache, value_cache,
              metadata) -> None:
        """Move every planned request's kept tokens to the front of its cache after its protected blocks
        (`skips` per row: the block tables start past them, so those blocks are never written), in one
        batched call."""
        with timed("compaction", state.policy.name, key_cache.device):  # one move for requests of any policy
            width = max(s.shape[-1] for s in sources)
            padded = torch.full((len(rows), *sources[0].shape[:2], width), -1, dtype=torch.int32, device=key_cache.device)
            for i, s in enumerate(sources):
                padded[i, ..., : s.shape[-1]] = s
            lengths = torch.tensor([s.shape[-1] for s in sources], dtype=torch.int32).to(key_cache.device)
            tables = metadata.block_table[torch.tensor(rows, device=metadata.block_table.device)]
            if any(skips):
                tables = skipped_blocks(tables, skips)
            for_tensor(move_tokens_, key_cache)(key_cache, value_cache, tables, padded, lengths)

    def _attend_members(self, step: CompressionStep, spans: list[RowSpan], layer, layer_idx, query, kv_cache, metadata,
                        output) -> None:
        """In a step mixing prompt chunks with decodes: PoD member rows' outputs from attention that reads
        distant keys from the owner layer (vLLM's attention saw their one-token rows cut to one key)."""
        key_cache, value_cache = self.kv_views(layer, kv_cache)
        owner = step.state.requests[spans[0].req_id].members[layer_idx].owner
        owner_metadata, owner_kv_cache = layer_context(layer.layer_name, step.state.layers.model_layer(owner))
        tokens, batch, layout, longest = self._member_inputs(step, spans, layer_idx, query.device)
        result = for_tensor(paged_decode, query)(
            query.view(-1, self.num_heads, self.head_size)[tokens],
            key_cache,
            value_cache,
            metadata.block_table[batch],
            layout,
            longest,
            self.scale,
            owner_key_cache=self.kv_views(layer, owner_kv_cache)[0],
            owner_block_tables=owner_metadata.block_table[batch],
        )
        output.view(output.shape[0], self.num_heads, self.head_size)[tokens] = result.to(output.dtype)

    @staticmethod
    def _member_inputs(step: CompressionStep, spans: list[RowSpan], layer_idx: int, device) -> tuple:
        """Token rows, batch rows, `paged_decode` layout and longest row of this step's member tokens.

        Built once per step and reused by every member layer whose requests have the same layout (all
        of PoD's do): PoD runs its attention eagerly, so this host work would otherwise repeat per layer.
        """
        layouts = [step.state.requests[s.req_id].members[layer_idx] for s in spans]
        key = tuple(zip(spans, (tuple(m.decode_row(0)) for m in layouts)))
        inputs = step.member_inputs.get(key)
        if inputs is None:
            token_rows, layout, batch_rows = [], [], []
            for span, member in zip(spans, layouts):
                prompt_len = step.state.requests[span.req_id].prompt_len
                for position in range(span.start, span.end):
                    token_rows.append(step.starts[span.row] + position - span.start)
                    layout.append(member.decode_row(position + 1 - prompt_len))
                    batch_rows.append(span.row)
            inputs = step.member_inputs[key] = (
                torch.tensor(token_rows, device=device),
                torch.tensor(batch_rows, device=device),
                torch.tensor(layout, dtype=torch.int32, device=device),
                max(row[0] for row in layout),
            )
        return inputs


def skipped_blocks(tables: torch.Tensor, skips: list[int]) -> torch.Tensor:
    """Block tables `[rows, blocks]` with row i starting at its block `skips[i]` (the tail repeats the last)."""
    idx = torch.arange(tables.shape[1], device=tables.device)[None] + torch.tensor(skips, device=tables.device)[:, None]
    return tables.gather(1, idx.clamp(max=tables.shape[1] - 1))


def prepare_caches(forward_context: dict, kv_caches: dict) -> list[str]:
    """Address every compressing layer's cache once, before any request: CPU packings are probed (an
    unaddressable one stops start-up, not the first request) and on CUDA the Triton kernels compile
    once per distinct layer-cache layout (a first launch would compile inside a prefill). Returns the
    layers the kernels were compiled for."""
    seen, used = set(), []
    for name, cache in kv_caches.items():
        layer = forward_context.get(name)
        impl = getattr(layer, "impl", None)
        if not isinstance(impl, CompressingAttention):
            continue
        key, value = impl.kv_views(layer, cache)
        layout = (key.dtype, tuple(key.shape[1:]), key.stride(), impl.num_heads)
        if cache.is_cuda and layout not in seen:
            seen.add(layout)
            warm_up(key, value, impl.num_heads, impl.scale)
            used.append(name)
    return used
