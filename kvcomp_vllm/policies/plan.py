"""What selection reads and returns: a layer's `PromptView` in, its `LayerPlan` out, and `apply_plan`.

Policies are pure torch. They see one request's layer at a time through a `PromptView`: its prompt
length and, on demand, the observation-window scores of its prompt keys (RoPE applied, as cached).
With `prefill_chunk` set, the cache is compressed every that many prompt tokens and at the prompt's
end; each view then holds what the cache kept so far plus the new tokens, and budgets stay those
of the whole prompt (`PromptView.context_len`), so the cache never outgrows budget + chunk.
`PromptView.dense` computes those from dense tensors; the vLLM backend from the paged cache
(a Triton kernel on GPU), and only for policies that ask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kvcomp_kernels.attention import observation_scores


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
