"""The policy interface: per layer, which prompt tokens' KV a request keeps after prefill.

Policies are pure torch. They see one request's layer at a time through a `PromptView`: its prompt
length and, on demand, the observation-window scores of its prompt keys (RoPE applied, as cached).
With `prefill_chunk` set, the cache is compressed every that many prompt tokens and at the prompt's
end; each view then holds what the cache kept so far plus the new tokens, and budgets stay those
of the whole prompt (`PromptView.context_len`), so the cache never outgrows budget + chunk.
`PromptView.dense` computes those from dense tensors; the vLLM backend from the paged cache
(a Triton kernel on GPU), and only for policies that ask. Callers go through `RequestCompressor`,
which also handles layers that reuse another layer's plan.

Tensor parallelism: a view holds this rank's KV heads only. Head-local rules (SnapKV's per-head top-k)
need nothing more; a rule that spans the layer's heads (windowkv's windows shared by all heads, the
attention-concentration statistics) puts what it needs of each head into `head_statistics`, rows that
the caller gathers from every rank in head order (`RequestCompressor.plan`'s `gather`) and hands to
`select`, so every rank decides as one device holding all heads would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kvcomp_kernels.attention import observation_scores

from ..config import POLICY_FIELDS, KVPolicyConfig
from .scoring import with_window


@dataclass(frozen=True)
class PromptView:
    """What a policy may read of one layer of one request.

    `scores(w)` gives the attention the last `w` prompt queries pay each of the first `prompt_len - w`
    tokens, `[num_kv_heads, prompt_len - w]` (see `kvcomp_kernels.attention.observation_scores`).
    A compression round has only its new tokens' queries, so fewer than `w` when the prompt's last
    chunk is shorter: the scores then cover every earlier token (`observe` cuts them to the prefix).
    `context_len` is the whole prompt's length when the view is a compression round inside it.
    """

    prompt_len: int
    num_kv_heads: int
    device: torch.device
    scores: Callable[[int], torch.Tensor]
    context_len: int | None = None
    _observed: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def budget_len(self) -> int:
        """Prompt length the layer budgets are computed for."""
        return self.prompt_len if self.context_len is None else self.context_len

    def observe(self, window: int) -> tuple[torch.Tensor, int]:
        """Scores of the tokens before the last `w = min(window, prompt_len)`, and `w`: the observation window.

        With fewer queries than `w` (a short last chunk) the scores come from those, and the window's
        tokens stay kept as a whole, as when the prompt is compressed once. Each window is scored once a view.
        """
        w = min(window, self.prompt_len)
        if w not in self._observed:
            self._observed[w] = self.scores(w)[:, : self.prompt_len - w]
        return self._observed[w], w

    @classmethod
    def dense(cls, keys: torch.Tensor, queries: torch.Tensor, scale: float, context_len: int | None = None) -> PromptView:
        """From prompt keys `[num_kv_heads, n, d]` and the last queries `[num_heads, >= window, d]`."""
        scores = lambda w: observation_scores(keys, queries[:, -w:], scale)  # noqa: E731
        return cls(keys.shape[1], keys.shape[0], keys.device, scores, context_len)


@dataclass(frozen=True)
class LayerPlan:
    """What one layer keeps after prefill.

    `keep[h]` lists, ascending, the prompt positions whose key and value KV head `h` keeps; `None`
    keeps every position. PoD's non-owner layers also set `key_owner` and `shared`: for the
    positions in `shared` the layer keeps only its value and attends with layer `key_owner`'s key.
    """

    keep: torch.Tensor | None
    key_owner: int | None = None
    shared: torch.Tensor | None = None

    def kept_tokens(self, prompt_len: int) -> int:
        """Positions per KV head that keep this layer's own key and value."""
        return prompt_len if self.keep is None else self.keep.shape[-1]


class KVPolicy(ABC):
    """Base of all policies; subclasses set `name` and implement `select`."""

    name: str

    def __init__(self, config: KVPolicyConfig, num_layers: int):
        if config.policy != self.name:
            raise ValueError(f"{type(self).__name__} got a config for policy '{config.policy}'")
        config.check_model(num_layers)
        self.config = config
        self.num_layers = num_layers

    def layer_budget(self, layer: int, prompt_len: int) -> int:
        """Tokens per KV head that `layer` keeps (own key and value) for a prompt of this length.

        Policies with an observation window never keep fewer tokens than the window.
        """
        floor = self.config.window if "window" in POLICY_FIELDS[self.name] else 1
        return min(prompt_len, max(self.config.resolve_budget(prompt_len), floor))

    def view_budget(self, layer: int, prompt: PromptView) -> int:
        """Tokens `layer` keeps of those in `prompt`: its budget for the whole prompt, at most all of them."""
        return min(prompt.prompt_len, self.layer_budget(layer, prompt.budget_len))

    def layer_slots(self, layer: int, prompt_len: int) -> int:
        """Cache positions `layer` holds for the prompt after compaction (what its blocks must cover)."""
        return self.layer_budget(layer, prompt_len)

    def next_compression_point(self, prompt_len: int, position: int) -> int:
        """First prompt position after `position` at which the cache is compressed.

        Points lie every `prefill_chunk` tokens (when set) and at the prompt's end.
        """
        chunk = self.config.prefill_chunk
        return prompt_len if not chunk else min(prompt_len, (position // chunk + 1) * chunk)

    def evicted_after(self, layer: int, prompt_len: int, processed: int) -> int:
        """Prompt tokens `layer`'s cache has dropped once the first `processed` tokens are processed."""
        chunk = self.config.prefill_chunk
        point = prompt_len if processed >= prompt_len else (processed // chunk * chunk if chunk else 0)
        return point - min(point, self.layer_slots(layer, prompt_len))

    def peak_slots(self, layer: int, prompt_len: int, max_tokens: int) -> int:
        """Most cache positions `layer` holds at once for this prompt and `max_tokens` generated tokens."""
        slots = self.layer_slots(layer, prompt_len)
        decode = slots + max(max_tokens - 1, 0)  # the last token is sampled, never cached
        chunk = self.config.prefill_chunk
        if not chunk or prompt_len <= chunk:
            return max(prompt_len, decode)
        chunks = -(-prompt_len // chunk)
        interior = min((chunks - 2) * chunk, slots) + chunk
        last = min((chunks - 1) * chunk, slots) + prompt_len - (chunks - 1) * chunk
        return max(interior, last, decode)

    def budget_tier(self, layer: int) -> int:
        """`layer`'s tier: the layers of one tier keep the same number of tokens for every prompt, so vLLM
        holds them in one KV cache group (one block table). One tier for all layers by default."""
        return 0

    def tier_layers(self) -> dict[int, list[int]]:
        """Each tier's layers, ascending, tiers in order of their first layer."""
        tiers: dict[int, list[int]] = {}
        for layer in range(self.num_layers):
            tiers.setdefault(self.budget_tier(layer), []).append(layer)
        return tiers

    def source_layer(self, layer: int) -> int:
        """Layer whose plan `layer` reuses; itself unless the policy shares selections in groups."""
        return layer

    def derive(self, layer: int, prompt: PromptView, plan: LayerPlan | None) -> LayerPlan:
        """`layer`'s plan from its source layer's `plan`: the same plan, unless the policy derives another
        (PoD with selection: a member's from its owner's). `plan` is None where the source layer was not
        planned at this point (its caller plans only layers that evict)."""
        if plan is None:
            src = self.source_layer(layer)
            raise RuntimeError(f"layer {layer} reuses layer {src}'s plan, which was not computed first")
        return plan

    @property
    def observation_window(self) -> int:
        """Prompt queries the policy scores with: its `window`, or 0 where it never scores."""
        return self.config.window if "window" in POLICY_FIELDS[self.name] else 0

    @property
    def spans_heads(self) -> bool:
        """Whether `select` combines statistics over all KV heads of a layer (`head_statistics`)."""
        return False

    def head_statistics(self, layer: int, prompt: PromptView) -> torch.Tensor | None:
        """This view's rows `[kv_heads, width]` of what `select` combines over all the layer's heads, or None
        where it needs none (head-local rules, a layer kept whole). `width` follows from the prompt length
        and the config alone, so every tensor-parallel rank gathers rows of one shape."""
        return None

    @abstractmethod
    def select(self, layer: int, prompt: PromptView, heads: torch.Tensor | None = None) -> LayerPlan:
        """Plan for `layer` of one request; `heads` holds `head_statistics` of every KV head of the layer."""


class ObservedSelection(KVPolicy):
    """SnapKV's frame: keep the observation window, and choose the rest of the layer's budget from the
    window's scores of the prefix. Subclasses say how in `choose`."""

    def select(self, layer: int, prompt: PromptView, heads: torch.Tensor | None = None) -> LayerPlan:
        n = prompt.prompt_len
        budget = self.view_budget(layer, prompt)
        if budget >= n:
            return LayerPlan(keep=None)
        scores, w = prompt.observe(self.config.window)
        return LayerPlan(keep=with_window(self.choose(scores, budget - w, heads), n - w, n))

    @abstractmethod
    def choose(self, scores: torch.Tensor, count: int, heads: torch.Tensor | None = None) -> torch.Tensor:
        """`count` prefix positions per KV head, `[kv_heads, count]`, from `[kv_heads, prefix]` scores
        (and `heads`, the layer's `head_statistics` over all its KV heads, where the policy has them)."""


HeadGather = Callable[[torch.Tensor | None], torch.Tensor | None]


class RequestCompressor:
    """Plans one request's layers in order, reusing the plan of each layer's source layer."""

    def __init__(self, policy: KVPolicy):
        self.policy = policy
        self._plans: dict[int, LayerPlan] = {}

    def gathers(self, layer: int) -> bool:
        """Whether planning `layer` gathers head statistics (it selects, and its rule spans heads)."""
        return self.policy.spans_heads and self.policy.source_layer(layer) == layer

    def plan(self, layer: int, prompt: PromptView, gather: HeadGather | None = None) -> LayerPlan:
        """`layer`'s plan. `gather` turns this view's `head_statistics` rows into every KV head's (tensor
        parallelism; it is called exactly once where `gathers(layer)`, even with None); without it the
        view holds all heads."""
        src = self.policy.source_layer(layer)
        if src == layer:
            heads = self.policy.head_statistics(layer, prompt) if self.policy.spans_heads else None
            if gather is not None and self.policy.spans_heads:
                heads = gather(heads)
            self._plans[layer] = self.policy.select(layer, prompt, heads)
            return self._plans[layer]
        return self.policy.derive(layer, prompt, self._plans.get(src))


def apply_plan(
    plan: LayerPlan, keys: torch.Tensor, values: torch.Tensor, owner_keys: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache of one layer after its plan, as dense `[num_kv_heads, kept, head_dim]` keys and values.

    This is the semantic reference for compaction: gathered positions keep their order, and PoD's
    shared positions take the owner layer's keys (`owner_keys`, the owner's uncompacted prompt keys);
    with a per-head choice of shared positions (PoD with selection) they follow the kept ones.
    """
    if plan.shared is not None:
        if owner_keys is None:
            raise ValueError(f"plan shares keys of layer {plan.key_owner}; pass its keys as owner_keys")
        if plan.shared.dim() == 2:  # distant tokens chosen per head: kept K/V, then the chosen with the owner's keys
            own_k, own_v = _gather(keys, plan.keep), _gather(values, plan.keep)
            shared_k, shared_v = _gather(owner_keys, plan.shared), _gather(values, plan.shared)
            return torch.cat([own_k, shared_k], 1), torch.cat([own_v, shared_v], 1)
        keys = keys.clone()
        keys[:, plan.shared] = owner_keys[:, plan.shared]
        return keys, values
    if plan.keep is None:
        return keys, values
    return _gather(keys, plan.keep), _gather(values, plan.keep)


def _gather(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows `positions[h]` of each head of `x` `[heads, n, d]`."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

