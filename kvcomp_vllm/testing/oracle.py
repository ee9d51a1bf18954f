"""An independent oracle: each policy's selection and a greedy generator, written plainly from the papers.

Tests use it as the expected output of the policy package (`kvcomp_vllm.policies`) and of the vLLM
engine, so it shares no code with either: dense torch, one function per policy, loops where they
are clearer. It reads `KVPolicyConfig` for parameters only. Ties between equal scores go to the
earlier position (earlier window, earlier run start), everywhere.

Selection sees one layer of one compression round: the `n` keys its cache holds (kept tokens of
earlier rounds, then the round's new tokens) and the queries of the round's new tokens. The
observation window is the last `w = min(window, n)` positions (windowkv's average scoring: `window // 2`), always kept; the tokens before it
are scored by the last `w` queries, or all of the round's when it has fewer (a short last chunk).
Budgets are those of the whole prompt (`prompt_len`), at most `n`.

Hybrid models (`layer_types` in the config, as Gemma 3's): only full-attention layers are compressed,
and the policy's layers are those, numbered in order; a sliding-window layer keeps its cache and each
query attends to the last `sliding_window` positions, itself included, as vLLM's kernels do.

A protected prefix (`protected`, prefix caching) is the first tokens of the prompt, kept raw in every
layer. Selection then treats the rest as the prompt (its length budgets, its positions counted from the
prefix's end, compression points every `prefill_chunk` after it) while the window's attention, whose
shares are the scores, still spreads over the protected keys too.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..config import KVPolicyConfig

ORACLE_ATTENTION = "kvcomp_oracle"
WINDOWED = ("snapkv", "pyramid", "windowkv", "windowkv-per-head")
GROUPED = ("windowkv", "windowkv-per-head")  # the group's first layer selects for the whole group


class Kept(NamedTuple):
    """What a layer keeps: `keep[h]` ascending cache positions of KV head `h` (None: all); PoD members also
    take the keys of `shared` positions from layer `key_owner` (with selection `shared[h]` per head: the
    distant tokens the owner kept, which follow the kept ones)."""

    keep: torch.Tensor | None
    key_owner: int | None = None
    shared: torch.Tensor | None = None


# Budgets ---------------------------------------------------------------------------------------------


def resolved_budget(config: KVPolicyConfig, prompt_len: int) -> int:
    """Tokens per layer for the whole prompt: a count, or a ratio rounded up; never under the window
    (scoring policies) or 1, never over the prompt."""
    b = config.budget
    tokens = max(1, math.ceil(b * prompt_len)) if isinstance(b, float) else b
    return min(prompt_len, max(tokens, config.window if config.policy in WINDOWED else 1))


def pyramid_layer_budgets(config: KVPolicyConfig, num_layers: int, prompt_len: int) -> list[int]:
    """PyramidKV as KVCache-Factory budgets it: uniform under 2s prompt tokens (s = budget - window),
    else a line from 2s - s/beta (at most the prompt) down, rounded to the exact total; then flattened to `tiers` tiers."""
    b = resolved_budget(config, prompt_len)
    w, s, layers = config.window, b - config.window, num_layers
    if b >= prompt_len:
        return [prompt_len] * layers
    if layers == 1 or prompt_len < 2 * s:
        budgets = [b] * layers
    else:
        hi = min(2 * s - Fraction(s) / Fraction(config.beta), Fraction(prompt_len - w))
        line = [hi + (2 * s - 2 * hi) * i / (layers - 1) for i in range(layers)]
        share = [math.floor(x) for x in line]
        by_fraction = sorted(range(layers), key=lambda i: (-(line[i] - share[i]), i))
        for i in by_fraction[: layers * s - sum(share)]:
            share[i] += 1
        budgets = [w + x for x in share]
    if config.tiers is None:
        return budgets
    return staircase_steps(budgets, config.tiers)


def staircase_steps(budgets: list[int], tiers: int) -> list[int]:
    """Layer i joins tier i * tiers // layers; each tier keeps its layers' mean, floored bottom up with the
    remainder carried upward, never above the tier below (the staircase's steps)."""
    layers = len(budgets)
    out, carry, below = [], 0, None
    for t in range(tiers):
        members = [i for i in range(layers) if i * tiers // layers == t]
        total = sum(budgets[i] for i in members) + carry
        step = total // len(members) if below is None else min(below, total // len(members))
        carry, below = total - step * len(members), step
        out += [step] * len(members)
    return out


def windowkv_layer_budgets(config: KVPolicyConfig, num_layers: int, prompt_len: int) -> list[int]:
    """WindowKV's per-group budgets: the window plus a share falling linearly over the groups from 2s - top to
    top = s * min(group, 14) / 14 (s = budget - window), the first group at most the whole prefix, rounded
    to the exact total (floors, then one more to the largest fractional parts, earlier groups on ties)."""
    b = resolved_budget(config, prompt_len)
    w, s, g = config.window, b - config.window, config.layer_group(num_layers)
    groups = num_layers // g
    if b >= prompt_len:
        return [prompt_len] * num_layers
    if groups == 1:
        return [b] * num_layers
    top = Fraction(s * min(g, 14), 14)
    first = min(2 * s - top, Fraction(prompt_len - w))
    line = [first + (2 * s - 2 * first) * i / (groups - 1) for i in range(groups)]
    share = [math.floor(x) for x in line]
    for i in sorted(range(groups), key=lambda i: (-(line[i] - share[i]), i))[: groups * s - sum(share)]:
        share[i] += 1
    return [w + share[layer // g] for layer in range(num_layers)]


def layer_budget(config: KVPolicyConfig, num_layers: int, layer: int, prompt_len: int) -> int:
    """Tokens per KV head `layer` keeps (its own key and value) once the whole prompt is read."""
    if config.policy == "full":
        return prompt_len
    if config.policy == "pod":
        proximal = min(prompt_len, config.sink + config.recent)
        if pod_owner(config, num_layers, layer) != layer:
            return proximal
        if config.select == "none":
            return prompt_len
        return proximal + min(prompt_len - proximal, max(resolved_budget(config, prompt_len) - proximal, 0))
    if config.policy == "pyramid":
        return pyramid_layer_budgets(config, num_layers, prompt_len)[layer]
    if config.policy == "windowkv":
        return windowkv_layer_budgets(config, num_layers, prompt_len)[layer]
    return resolved_budget(config, prompt_len)


# Scores ----------------------------------------------------------------------------------------------


def window_scores(keys: torch.Tensor, queries: torch.Tensor, scale: float) -> torch.Tensor:
    """SnapKV's vote, `[kv_heads, n - w]`: per KV head, the attention its query heads' w window queries
    (the last w positions, causal) pay each earlier token, summed over the queries, averaged over the heads."""
    kv_heads, n, _ = keys.shape
    heads, w, _ = queries.shape
    group = heads // kv_heads
    dtype = torch.promote_types(keys.dtype, torch.float32)
    visible = torch.arange(n, device=keys.device)[None, :] <= torch.arange(n - w, n, device=keys.device)[:, None]
    out = []
    for h in range(kv_heads):
        q = queries[h * group : (h + 1) * group].to(dtype)
        logits = q @ keys[h].to(dtype).T * scale
        probs = torch.softmax(logits.masked_fill(~visible, -math.inf), dim=-1)
        out.append(probs[:, :, : n - w].sum(dim=1).mean(dim=0))
    return torch.stack(out)


def best_first(values: list[float]) -> list[int]:
    """Indices of `values`, highest first; equal values in index order."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def with_observation(chosen: list[list[int]], n: int, w: int) -> torch.Tensor:
    """Each head's chosen prefix positions plus the observation window's w positions, ascending."""
    return torch.tensor([sorted(c + list(range(n - w, n))) for c in chosen], dtype=torch.long)


# Selection, one function per policy --------------------------------------------------------------------


def select_streaming(config: KVPolicyConfig, n: int, budget: int, kv_heads: int) -> Kept:
    """StreamingLLM: the first `sink` tokens (attention sinks) and the most recent ones."""
    if budget >= n:
        return Kept(None)
    sink = min(config.sink, budget)
    row = list(range(sink)) + list(range(n - (budget - sink), n))
    return Kept(torch.tensor([row] * kv_heads))


def votes_after(keys, queries, scale: float, w: int, protected: int) -> torch.Tensor:
    """`window_scores` over every key the layer holds, cut to the tokens after the protected prefix and
    before the window (a short last chunk has fewer queries than `w`: its scores cover more tokens)."""
    return window_scores(keys, queries[:, -w:], scale)[:, protected : keys.shape[1] - w]


def pooled_votes(config: KVPolicyConfig, keys, queries, scale: float, protected: int = 0) -> torch.Tensor:
    """SnapKV's votes of the last `min(window, n)` queries for the tokens after the protected prefix and
    before them, 1-D pooled."""
    w = min(config.window, keys.shape[1] - protected)
    votes = votes_after(keys, queries, scale, w, protected)
    if config.pool_size > 1:
        pool = F.avg_pool1d if config.pooling == "avg" else F.max_pool1d
        extra = {"count_include_pad": True} if config.pooling == "avg" else {}
        votes = pool(votes[:, None], config.pool_size, stride=1, padding=config.pool_size // 2, **extra)[:, 0]
    return votes


def select_snapkv(config: KVPolicyConfig, keys, queries, scale: float, budget: int, protected: int = 0) -> Kept:
    """SnapKV (and PyramidKV per layer): the window's pooled top votes per KV head, plus the window."""
    n = keys.shape[1] - protected
    if budget >= n:
        return Kept(None)
    w = min(config.window, n)
    votes = pooled_votes(config, keys, queries, scale, protected)
    chosen = [best_first(row.tolist())[: budget - w] for row in votes]
    return Kept(with_observation(chosen, n, w))


def concentrated(config: KVPolicyConfig, votes: torch.Tensor) -> bool:
    """Whether the top 5% of prefix tokens draw at least `concentration_threshold` of the votes (mean over heads)."""
    top = max(1, math.ceil(0.05 * votes.shape[-1]))
    ranked = votes.sort(dim=-1, descending=True).values
    return float((ranked[:, :top].sum(-1) / votes.sum(-1).clamp_min(1e-30)).mean()) >= config.concentration_threshold


def select_windowkv(config: KVPolicyConfig, keys, queries, scale: float, budget: int, protected: int = 0) -> Kept:
    """WindowKV (paper): prefix windows of `window_size` tokens from the start, the last one shorter, scored over
    all heads ("max": per head the mean of its top size // 2 votes, then over heads; "average": the mean of all
    its votes), best first into `budget - w` tokens, the last taken cut to its leading tokens; the same for every
    head. "max" observes `window` queries, "average" `window // 2`; auto takes "max" for concentrated votes."""
    n, kv_heads = keys.shape[1] - protected, keys.shape[0]
    if budget >= n:
        return Kept(None)
    scoring, w = config.window_scoring, min(config.window, n)
    if scoring != "average":
        votes = votes_after(keys, queries, scale, w, protected)
        if scoring == "auto":
            scoring = "max" if concentrated(config, votes) else "average"
    if scoring == "average":
        w = min(max(1, config.window // 2), n)
        votes = votes_after(keys, queries, scale, w, protected)
    size, left, picked, rank = config.window_size or 8, budget - w, [], []
    starts = list(range(0, n - w, size))
    for a in starts:
        tile = votes[:, a : a + size]
        if scoring == "average":
            rank.append(float(tile.sum()) / tile.numel())
        else:
            top = min(max(1, size // 2), tile.shape[1])
            rank.append(float(sum(float(row.sort(descending=True).values[:top].sum()) / top for row in tile)) / kv_heads)
    for i in best_first(rank):
        take = min(left, size, n - w - starts[i])
        picked += range(starts[i], starts[i] + take)
        left -= take
    return Kept(with_observation([picked] * kv_heads, n, w))


def windowkv_size(config: KVPolicyConfig, votes: torch.Tensor, selectable: int) -> int:
    """The configured window size, or (auto) the concentrated or spread size by the top-5% attention share,
    shrunk so that at least three runs fit in `selectable` tokens."""
    if config.window_size not in (None, "auto"):
        return config.window_size
    spread, dense = config.window_sizes
    size = dense if concentrated(config, votes) else spread
    return max(1, min(size, (selectable - 1) // 2))


def select_windowkv_per_head(config: KVPolicyConfig, keys, queries, scale: float, budget: int,
                             protected: int = 0) -> Kept:
    """WindowKV per KV head (our variant): the best whole windows of `size` tokens tiled from the start, then the
    best free run of the remaining `< size` tokens, plus the observation window."""
    n = keys.shape[1] - protected
    if budget >= n:
        return Kept(None)
    w = min(config.window, n)
    votes = votes_after(keys, queries, scale, w, protected)
    k = budget - w
    size = windowkv_size(config, votes, k)
    whole, rest = divmod(k, size)
    chosen = []
    for row in votes:
        tiles = [float(row[i * size : (i + 1) * size].sum()) for i in range(row.shape[0] // size)]
        picked = [p for t in best_first(tiles)[:whole] for p in range(t * size, (t + 1) * size)]
        if rest:
            taken = set(picked)
            starts = [s for s in range(row.shape[0] - rest + 1) if taken.isdisjoint(range(s, s + rest))]
            sums = [float(row[s : s + rest].sum()) for s in starts]
            start = starts[best_first(sums)[0]]
            picked += list(range(start, start + rest))
        chosen.append(picked)
    return Kept(with_observation(chosen, n, w))


def pod_owner(config: KVPolicyConfig, num_layers: int, layer: int) -> int:
    """The layer whose keys `layer` uses for distant tokens: the lowest of its group in `groups`, else the
    first of its run of `group_size` consecutive layers."""
    if config.groups is not None:
        return min(next(group for group in config.groups if layer in group))
    return layer - layer % config.layer_group(num_layers)


def select_pod(config: KVPolicyConfig, num_layers: int, layer: int, n: int, kv_heads: int) -> Kept:
    """PoD: group owners keep all; members keep the first `sink` and last `recent` tokens' own keys and take
    the distant tokens' keys from their owner (values stay their own)."""
    owner = pod_owner(config, num_layers, layer)
    if owner == layer or config.sink + config.recent >= n:
        return Kept(None)
    proximal = list(range(config.sink)) + list(range(n - config.recent, n))
    distant = list(range(config.sink, n - config.recent))
    return Kept(torch.tensor([proximal] * kv_heads), owner, torch.tensor(distant))


def select_pod_snapkv(config: KVPolicyConfig, num_layers: int, layer: int, keys, queries, scale: float,
                      budget: int, owner_plan: Kept | None, protected: int = 0) -> Kept:
    """PoD with SnapKV selection: an owner keeps its proximal tokens and, of the distant ones, the top
    `budget - proximal` pooled votes per KV head; its members keep proximal K/V and the values of the
    distant tokens their owner kept (each head its own), attending to them with the owner's keys."""
    kv_heads, n = keys.shape[0], keys.shape[1] - protected
    owner = pod_owner(config, num_layers, layer)
    if config.sink + config.recent >= n or (owner == layer and budget >= n):
        return Kept(None)
    proximal = list(range(config.sink)) + list(range(n - config.recent, n))
    distant = range(config.sink, n - config.recent)
    if owner == layer:
        votes = pooled_votes(config, keys, queries, scale, protected)
        top = [best_first(row[distant.start : distant.stop].tolist())[: budget - len(proximal)] for row in votes]
        rows = [sorted(proximal + [config.sink + i for i in chosen]) for chosen in top]
        return Kept(torch.tensor(rows))
    if owner_plan.keep is None:  # the owner kept all: every distant token shares its key
        return select_pod(config, num_layers, layer, n, kv_heads)
    shared = [[p for p in row if p in distant] for row in owner_plan.keep.tolist()]
    return Kept(torch.tensor([proximal] * kv_heads), owner, torch.tensor(shared))


def after_prefix(kept: Kept, protected: int) -> Kept:
    """A selection among the tokens after a protected prefix, in cache positions: the prefix kept first."""
    if kept.keep is None or not protected:
        return kept
    heads = kept.keep.shape[0]
    keep = torch.cat([torch.arange(protected).expand(heads, -1), kept.keep + protected], dim=1)
    return Kept(keep, kept.key_owner, None if kept.shared is None else kept.shared + protected)


def oracle_selector(config: KVPolicyConfig, num_layers: int, protected: int = 0) -> Callable[..., Kept]:
    """`select(layer, keys, queries, scale, prompt_len)` for one request, layers called in order each round;
    windowkv's other layers of a group repeat the group's first layer. The first `protected` cache
    positions are always kept, and the rest selected as a prompt of `prompt_len - protected` tokens."""
    group = config.layer_group(num_layers)
    plans: dict[int, Kept] = {}  # in cache positions
    own: dict[int, Kept] = {}  # the same, among the own tokens (PoD members read their owner's)

    def select(layer: int, keys: torch.Tensor, queries: torch.Tensor, scale: float, prompt_len: int) -> Kept:
        kv_heads, n, _ = keys.shape
        n -= protected
        budget = min(n, layer_budget(config, num_layers, layer, prompt_len - protected))
        p = config.policy
        if p in GROUPED and layer % group:
            return plans[layer - layer % group]
        if p == "full":
            plan = Kept(None)
        elif p == "streaming":
            plan = select_streaming(config, n, budget, kv_heads)
        elif p in ("snapkv", "pyramid"):
            plan = select_snapkv(config, keys, queries, scale, budget, protected)
        elif p == "windowkv":
            plan = select_windowkv(config, keys, queries, scale, budget, protected)
        elif p == "windowkv-per-head":
            plan = select_windowkv_per_head(config, keys, queries, scale, budget, protected)
        elif config.select == "snapkv":
            owner = own.get(pod_owner(config, num_layers, layer))
            plan = select_pod_snapkv(config, num_layers, layer, keys, queries, scale, budget, owner, protected)
        else:
            plan = select_pod(config, num_layers, layer, n, kv_heads)
        own[layer] = plan
        plans[layer] = plan = after_prefix(plan, protected)
        return plan

    return select


# Generator ---------------------------------------------------------------------------------------------


def compression_points(config: KVPolicyConfig, prompt_len: int, protected: int = 0) -> list[int]:
    """Where the cache is compressed: every `prefill_chunk` tokens after the protected prefix (when set)
    and at the prompt's end."""
    chunk = config.prefill_chunk or prompt_len
    return sorted({*range(protected + chunk, prompt_len, chunk), prompt_len})


def full_attention_layers(model_config) -> list[int]:
    """The model layers under full attention, which a policy compresses: all unless `layer_types` says otherwise."""
    n = model_config.num_hidden_layers
    types = getattr(model_config, "layer_types", None) or ["full_attention"] * n
    return [layer for layer in range(n) if types[layer] == "full_attention"]


@dataclass
class _Run:
    """One generation's state, read by the attention function; `full` lists the compressed model layers."""

    select: Callable[..., object]
    cache: object
    prompt_len: int
    full: list[int]
    compress: bool = True
    kept: dict[int, int] = field(default_factory=dict)
    prompt_keys: dict[int, torch.Tensor] = field(default_factory=dict)  # each layer's keys at its compaction


_RUN: contextvars.ContextVar[_Run] = contextvars.ContextVar("kvcomp_oracle_run")


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager causal attention over the layer's cache (queries are its last positions), within the last
    `sliding_window` positions on a sliding-window layer; at a compression point a full-attention layer's
    cache is then replaced by what the selection keeps."""
    run = _RUN.get()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    group = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    q_len, kv_len = query.shape[2], key.shape[2]
    distance = torch.arange(kv_len - q_len, kv_len)[:, None] - torch.arange(kv_len)[None, :]
    window = kwargs.get("sliding_window")
    hidden = (distance < 0) | (distance >= window) if window else distance < 0
    logits = (query @ k.transpose(2, 3) * scale).masked_fill(hidden.to(query.device), -math.inf)
    out = (logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype) @ v).transpose(1, 2).contiguous()
    if run.compress and module.layer_idx in run.full:
        layer, model_layer = run.full.index(module.layer_idx), module.layer_idx
        plan = run.select(layer, key[0], query[0], scale, run.prompt_len)
        keys, values = key[0], value[0]
        run.prompt_keys[layer] = keys
        if plan.shared is not None and plan.shared.dim() == 2:  # PoD member of chosen distant tokens, per head
            own = plan.keep.to(keys.device)[..., None].expand(-1, -1, keys.shape[-1])
            shared = plan.shared.to(keys.device)[..., None].expand(-1, -1, keys.shape[-1])
            owner_keys = run.prompt_keys[plan.key_owner]  # before its compaction: keys at their true positions
            keys = torch.cat([keys.gather(1, own), owner_keys.gather(1, shared)], dim=1)
            values = torch.cat([values.gather(1, own), values.gather(1, shared)], dim=1)
        elif plan.shared is not None:  # PoD member: distant keys are the owner's
            keys = keys.clone()
            shared = plan.shared.to(keys.device)
            keys[:, shared] = run.cache.layers[run.full[plan.key_owner]].keys[0][:, shared]
        elif plan.keep is not None:
            idx = plan.keep.to(keys.device)[..., None].expand(-1, -1, keys.shape[-1])
            keys, values = keys.gather(1, idx), values.gather(1, idx)
        run.cache.layers[model_layer].keys, run.cache.layers[model_layer].values = keys[None], values[None]
        run.kept[layer] = kv_len if plan.keep is None else plan.keep.shape[-1]
    return out, None


@dataclass(frozen=True)
class GenerateOutput:
    """Tokens, their logprobs, each step's best logprob, and the tokens each compressed (full-attention)
    layer kept after the prompt."""

    tokens: list[int]
    logprobs: list[float]
    best_logprobs: list[float]
    kept_per_layer: list[int]


@torch.no_grad()
def generate(model, prompt: list[int], config: KVPolicyConfig, max_new_tokens: int, eos_token_id: int | None = None,
             forced: list[int] | None = None, select: Callable[..., object] | None = None,
             protected: int = 0) -> GenerateOutput:
    """Greedy decode after `prompt` with the oracle's selection at every compression point (batch of one).

    `forced` feeds those tokens instead of the argmax, to score another engine's output; `select`
    replaces the oracle's selection (same signature as `oracle_selector`'s), to run other code;
    `protected` keeps the prompt's first tokens raw (a prefix-cache hit) and compresses the rest.
    """
    from transformers import AttentionInterface, DynamicCache

    AttentionInterface.register(ORACLE_ATTENTION, _attention)
    model.set_attn_implementation(ORACLE_ATTENTION)
    full = full_attention_layers(model.config)
    num_layers = len(full)
    cache = DynamicCache(config=model.config)
    run = _Run(select or oracle_selector(config, num_layers, protected), cache, len(prompt), full)
    token = _RUN.set(run)

    def forward(ids: list[int], start: int) -> torch.Tensor:
        positions = torch.arange(start, start + len(ids), device=model.device)[None]
        ids = torch.tensor([ids], device=model.device)
        return model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True).logits

    try:
        start = 0
        for point in compression_points(config, len(prompt), protected):
            logits = forward(prompt[start:point], start)
            start = point
        run.compress = False
        tokens, logprobs, best = [], [], []
        for step in range(len(forced) if forced is not None else max_new_tokens):
            if step:
                logits = forward([tokens[-1]], len(prompt) + step - 1)
            logp = logits[0, -1].float().log_softmax(-1)
            nxt = int(logp.argmax()) if forced is None else forced[step]
            tokens.append(nxt)
            logprobs.append(float(logp[nxt]))
            best.append(float(logp.max()))
            if nxt == eos_token_id:
                break
    finally:
        _RUN.reset(token)
    return GenerateOutput(tokens, logprobs, best, [run.kept[layer] for layer in range(num_layers)])


def largest_logprob_gaps(model, prompts: list[list[int]], outputs: list[list[int]], config: KVPolicyConfig,
                         new_tokens: int, protected: int = 0) -> list[float]:
    """Per prompt, the largest gap between the oracle's best token and another engine's token at that
    step, fed that engine's `outputs`: how far a lower-precision engine strays from the oracle (each
    prompt's first `protected` tokens kept raw, as a prefix-cache hit)."""
    gaps = []
    for prompt, got in zip(prompts, outputs):
        scored = generate(model, prompt, config, new_tokens, forced=got, protected=protected)
        gaps.append(max(b - lp for b, lp in zip(scored.best_logprobs, scored.logprobs)))
    return gaps
