"""How alike layers attend to distant tokens, and layer groups from it (pure torch).

As in PoD's offline exploration: per layer and KV head, the attention the last `window` prompt queries
pay the distant tokens (positions `sink .. n - recent`), renormalised over those tokens and averaged
over the queries and the KV head's query heads; layers compare by the Jensen-Shannon divergence of
those distributions (nats, in [0, ln 2]), averaged over KV heads and prompts.
"""

from __future__ import annotations

import torch


def distant_distribution(query: torch.Tensor, key: torch.Tensor, scale: float, sink: int, recent: int,
                         window: int) -> torch.Tensor | None:
    """`[kv_heads, distant]` attention over the distant keys, from queries `[heads, n, d]` and keys
    `[kv_heads, n, d]` (RoPE applied); None where the prompt has no distant tokens."""
    n = key.shape[1]
    start, stop = min(sink, n), n - recent
    if stop <= start:
        return None
    q = query[:, -min(window, n):].float()
    k = key[:, start:stop].float().repeat_interleave(query.shape[0] // key.shape[0], dim=0)
    probs = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1).mean(dim=1)  # [heads, distant]
    return probs.view(key.shape[0], -1, probs.shape[-1]).mean(dim=1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of distributions along the last dimension (0 log 0 = 0)."""
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-30).log() - m.clamp_min(1e-30).log()), 0.0).sum(-1)

    return (kl(p) + kl(q)) / 2


def layer_divergence(prompts: list[list[torch.Tensor]]) -> torch.Tensor:
    """`[layers, layers]` mean JS divergence, from each prompt's per-layer `[kv_heads, distant]` distributions."""
    total = None
    for layers in prompts:
        d = torch.stack(layers).double()  # [layers, kv_heads, distant]
        pairwise = js_divergence(d[:, None], d[None, :]).mean(-1)
        total = pairwise if total is None else total + pairwise
    return total / len(prompts)


def group_layers(div: torch.Tensor, threshold: float, max_group: int,
                 consecutive: bool = True) -> tuple[tuple[int, ...], ...]:
    """Layer groups whose members attend like their owner (divergence to it at most `threshold`), at most
    `max_group` layers each. Layers join in order: `consecutive` (the paper's runs) extends the current
    run or starts a new one; otherwise a layer joins the open group whose owner is closest (ties: the
    lower owner) or starts its own. Owners are each group's lowest layer."""
    groups: list[list[int]] = []
    for layer in range(div.shape[0]):
        open_ = [g for g in (groups[-1:] if consecutive else groups) if len(g) < max_group]
        fits = [g for g in open_ if float(div[g[0], layer]) <= threshold]
        if fits:
            min(fits, key=lambda g: (float(div[g[0], layer]), g[0])).append(layer)
        else:
            groups.append([layer])
    return tuple(tuple(g) for g in groups)


def members(groups: tuple[tuple[int, ...], ...]) -> int:
    """Layers that share an owner's distant keys."""
    return sum(len(g) - 1 for g in groups)


def threshold_for(div: torch.Tensor, wanted: int, max_group: int, consecutive: bool = True) -> float:
    """The smallest threshold whose grouping has at least `wanted` member layers (or the most it can)."""
    candidates = sorted(set(div.flatten().tolist()))
    best = candidates[-1]
    for t in candidates:
        if members(group_layers(div, t, max_group, consecutive)) >= wanted:
            return t
    return best
