"""Backend-independent parts of kvcomp's attention: shifted `seq_lens`, and compaction at prompt end.

Prefill and decode attention stay the backend's own kernels. The builder mixin shortens each
compressed request's `seq_lens` by the tokens its tier evicted, so the kernel reads exactly the
compacted cache; the impl mixin, after a layer's attention over a chunk that ends a prompt, plans
from the prompt keys in the paged cache and the observation-window queries and compacts the kept
tokens in place. PoD member layers also replace their decode output with attention that reads
distant keys from the owner layer (`pod_cache`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..paged import compact_, read_tokens
from ..pod_cache import member_attention, pack_member_
from .compat import extract_layer_index, layer_context
from .kv_spec import CompressedAttentionSpec
from .worker import CompressedRequest, RowSpan, WorkerCompression, worker_state


class ShiftedSeqLens:
    """Metadata-builder mixin: compressed requests' `seq_lens` become their compacted cache length."""

    def build(self, common_prefix_len, common_attn_metadata, *args, **kwargs):
        state = worker_state()
        spec = self.kv_cache_spec
        if state is not None and isinstance(spec, CompressedAttentionSpec):
            evicted = state.row_evicted.get(spec.tier)
            if evicted is not None and bool(evicted.any()):
                cm = common_attn_metadata
                shift = evicted[: cm.num_reqs].to(cm.seq_lens.device, cm.seq_lens.dtype)
                common_attn_metadata = dataclasses.replace(cm, seq_lens=cm.seq_lens - shift)
        return super().build(common_prefix_len, common_attn_metadata, *args, **kwargs)


class CompressingAttention:
    """Attention-impl mixin: compacts a request's cache in the forward that ends its prompt.

    Subclasses pair it with a vLLM attention impl and say how to view that backend's layer cache.
    """

    def kv_views(self, layer, kv_cache) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value views `[blocks, kv_heads, block_size, head_dim]` of a layer cache."""
        raise NotImplementedError

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        state = worker_state()
        if state is None or attn_metadata is None or not state.rows:
            return output
        layer_idx = extract_layer_index(layer.layer_name)
        starts = state.starts  # the host copy of query_start_loc: no device sync per layer
        for span in state.window_rows:
            self._stash_window(state, span, layer_idx, query, starts)
        for span in state.prefill_ends:
            self._compact(state, span, layer, layer_idx, query, kv_cache, attn_metadata, starts)
        for span in state.rows:
            plan = state.requests[span.req_id].shared_keys.get(layer_idx)
            if plan is not None and span.start >= state.requests[span.req_id].prompt_len:
                self._attend_shared_keys(state, span, plan, layer, query, kv_cache, attn_metadata, output, starts)
        return output

    @staticmethod
    def _window_part(request: CompressedRequest, span: RowSpan, window: int, query, starts):
        """Queries of this chunk that fall in the observation window, `[tokens, heads, dim]`."""
        first = max(span.start, request.prompt_len - window)
        last = min(span.end, request.prompt_len)
        base = starts[span.row] - span.start
        return query[base + first : base + last]

    def _stash_window(self, state: WorkerCompression, span: RowSpan, layer_idx: int, query, starts) -> None:
        request = state.requests[span.req_id]
        part = self._window_part(request, span, request.compressor.policy.config.window, query, starts)
        request.window_queries.setdefault(layer_idx, []).append(part.clone())

    def _compact(self, state: WorkerCompression, span: RowSpan, layer, layer_idx, query, kv_cache, metadata, starts):
        request = state.requests[span.req_id]
        if request.evicted[state.policy.budget_tier(layer_idx)] <= 0:
            return
        window = request.compressor.policy.config.window
        parts = request.window_queries.pop(layer_idx, [])
        parts.append(self._window_part(request, span, window, query, starts))
        queries = torch.cat(parts).transpose(0, 1)  # [heads, window, dim]
        key_cache, value_cache = self.kv_views(layer, kv_cache)
        blocks = metadata.block_table[span.row]
        prompt_len = request.prompt_len
        keys = read_tokens(key_cache, blocks, prompt_len)
        plan = request.compressor.plan(layer_idx, keys, queries, self.scale)
        if plan.keep is None:
            return
        # Tokens past the prompt (recompute after preemption) follow the kept ones verbatim.
        later = torch.arange(prompt_len, span.end, device=keys.device)
        if plan.shared is not None:
            pack_member_(key_cache, value_cache, blocks, plan.keep[0], plan.shared, later)
            request.shared_keys[layer_idx] = plan
        else:
            keep = torch.cat([plan.keep, later.expand(plan.keep.shape[0], -1)], dim=1)
            compact_([key_cache, value_cache], blocks, keep)
        request.compacted = True

    def _attend_shared_keys(self, state, span: RowSpan, plan, layer, query, kv_cache, metadata, output, starts):
        """Replace a row's output by attention that reads distant keys from the plan's owner layer."""
        request = state.requests[span.req_id]
        key_cache, value_cache = self.kv_views(layer, kv_cache)
        owner_metadata, owner_kv_cache = layer_context(layer.layer_name, plan.key_owner)
        rows = slice(starts[span.row], starts[span.row + 1])
        result = member_attention(
            query[rows].view(-1, self.num_heads, self.head_size),
            key_cache,
            value_cache,
            metadata.block_table[span.row],
            self.kv_views(layer, owner_kv_cache)[0],
            owner_metadata.block_table[span.row],
            plan.keep.shape[1],
            plan.shared,
            span.end - request.prompt_len,
            self.scale,
        )
        output.view(output.shape[0], self.num_heads, self.head_size)[rows] = result.to(output.dtype)
