"""Policies against hand-computed cases and brute-force references written with plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from kvcomp_kernels.attention import observation_scores
from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import PromptView, RequestCompressor, apply_plan, make_policy
from kvcomp_vllm.policies.scoring import attention_concentration, pool_scores
from kvcomp_vllm.policies.windowkv import SharedWindows
from kvcomp_vllm.policies.windowkv_per_head import PerHeadWindows

D = 16
SCALE = D**-0.5


def view(keys, queries):
    return PromptView.dense(keys, queries, SCALE)


def random_layer(num_heads, num_kv_heads, n, window, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(num_kv_heads, n, D, generator=g, dtype=torch.float64)
    queries = torch.randn(num_heads, min(window, n), D, generator=g, dtype=torch.float64)
    return keys, queries


def brute_scores(keys, queries, window):
    """Per KV head, per prefix token: sum over window queries of causal softmax, mean over group heads."""
    num_kv_heads, n, _ = keys.shape
    num_heads = queries.shape[0]
    g = num_heads // num_kv_heads
    w = min(window, n)
    m = n - w
    out = []
    for h in range(num_kv_heads):
        s = [0.0] * m
        for qh in range(h * g, (h + 1) * g):
            for i in range(w):
                pos = m + i
                logits = [float(queries[qh, queries.shape[1] - w + i] @ keys[h, j]) * SCALE for j in range(pos + 1)]
                top = max(logits)
                e = [math.exp(x - top) for x in logits]
                z = sum(e)
                for j in range(m):
                    s[j] += e[j] / z / g
        out.append(s)
    return out


def brute_pool(s, pool_size, pooling):
    r = pool_size // 2
    m = len(s)
    if pooling == "avg":
        return [sum(s[j + o] for o in range(-r, r + 1) if 0 <= j + o < m) / pool_size for j in range(m)]
    return [max(s[j + o] for o in range(-r, r + 1) if 0 <= j + o < m) for j in range(m)]


def brute_snapkv(keys, queries, budget, window, pool_size, pooling):
    n = keys.shape[1]
    if budget >= n:
        return None
    w = min(window, n)
    keep = []
    for s in brute_scores(keys, queries, window):
        pooled = brute_pool(s, pool_size, pooling)
        top = sorted(range(n - w), key=lambda j: -pooled[j])[: budget - w]
        keep.append(sorted(top + list(range(n - w, n))))
    return keep


def kept(plan):
    return None if plan.keep is None else plan.keep.tolist()


@pytest.mark.parametrize("num_heads,num_kv_heads", [(8, 2), (4, 4)])
@pytest.mark.parametrize("n", [37, 64, 101])
def test_observation_scores_match_brute_force(num_heads, num_kv_heads, n):
    keys, queries = random_layer(num_heads, num_kv_heads, n, 8, seed=n)
    got = observation_scores(keys, queries, SCALE)
    assert torch.allclose(got, torch.tensor(brute_scores(keys, queries, 8), dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling_matches_brute_force(pooling):
    s = torch.rand(3, 29, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = pool_scores(s, 5, pooling)
    want = torch.tensor([brute_pool(row.tolist(), 5, pooling) for row in s], dtype=torch.float64)
    assert torch.allclose(got, want)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(8, 2), (4, 4)])
@pytest.mark.parametrize("n,budget,window", [(37, 16, 8), (64, 20, 8), (101, 40, 16), (50, 50, 8), (30, 64, 8), (6, 8, 8)])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_snapkv_matches_brute_force(num_heads, num_kv_heads, n, budget, window, pooling):
    keys, queries = random_layer(num_heads, num_kv_heads, n, window, seed=n + budget)
    config = KVPolicyConfig(policy="snapkv", budget=budget, window=window, pool_size=5, pooling=pooling)
    plan = make_policy(config, 4).selector.select(0, view(keys, queries))
    assert kept(plan) == brute_snapkv(keys, queries, budget, window, 5, pooling)


def test_snapkv_hand_case_keeps_attended_token_and_its_neighbours():
    # Token 3 is the only key aligned with the queries: it takes nearly all prefix attention.
    keys = torch.zeros(1, 20, D, dtype=torch.float64)
    keys[0, 3, 0] = 40.0
    queries = torch.zeros(2, 4, D, dtype=torch.float64)
    queries[:, :, 0] = 1.0
    one = KVPolicyConfig(policy="snapkv", budget=5, window=4, pool_size=1)
    assert kept(make_policy(one, 1).selector.select(0, view(keys, queries))) == [[3, 16, 17, 18, 19]]
    three = KVPolicyConfig(policy="snapkv", budget=7, window=4, pool_size=3)
    assert kept(make_policy(three, 1).selector.select(0, view(keys, queries))) == [[2, 3, 4, 16, 17, 18, 19]]


def test_ratio_budget_below_window_keeps_the_window():
    keys, queries = random_layer(4, 2, 100, 32, seed=3)
    config = KVPolicyConfig(policy="snapkv", budget=0.05, window=32)
    plan = make_policy(config, 2).selector.select(0, view(keys, queries))
    assert plan.keep.shape == (2, 32) and plan.keep[0].tolist() == list(range(68, 100))


def test_streaming_hand_case():
    keys, queries = random_layer(4, 2, 10, 4, seed=0)
    config = KVPolicyConfig(policy="streaming", budget=5, sink=2)
    assert kept(make_policy(config, 2).selector.select(1, view(keys, queries))) == [[0, 1, 7, 8, 9]] * 2
    whole = KVPolicyConfig(policy="streaming", budget=12, sink=2)
    assert make_policy(whole, 2).selector.select(0, view(keys, queries)).keep is None


def test_pyramid_layers_select_like_snapkv_with_their_budgets():
    keys, queries = random_layer(8, 2, 120, 8, seed=5)
    config = KVPolicyConfig(policy="pyramid", budget=40, window=8, pool_size=5, beta=4)
    policy = make_policy(config, 4)
    for layer in range(4):
        b = policy.layout.layer_budget(layer, 120)
        assert kept(policy.selector.select(layer, view(keys, queries))) == brute_snapkv(keys, queries, b, 8, 5, "avg")


def brute_windows(scores, k, size):
    """Whole windows by score, then the best contiguous run of unchosen positions (all loops)."""
    m = len(scores)
    windows = [(sum(scores[i * size:(i + 1) * size]), i) for i in range(m // size)]
    whole, rest = divmod(k, size)
    chosen = []
    for _, i in sorted(windows, key=lambda t: -t[0])[:whole]:
        chosen += list(range(i * size, (i + 1) * size))
    if rest:
        runs = [
            (sum(scores[s:s + rest]), s)
            for s in range(m - rest + 1)
            if not set(range(s, s + rest)) & set(chosen)
        ]
        start = max(runs, key=lambda t: (t[0], -t[1]))[1]
        chosen += list(range(start, start + rest))
    return sorted(chosen)


@pytest.mark.parametrize("n,budget,size", [(100, 37, 8), (77, 40, 5), (64, 24, 8), (45, 44, 4)])
def test_windowkv_per_head_matches_brute_force(n, budget, size):
    keys, queries = random_layer(4, 2, n, 8, seed=n)
    config = KVPolicyConfig(policy="windowkv-per-head", budget=budget, window=8, window_size=size, group_size=1)
    plan = make_policy(config, 2).selector.select(0, view(keys, queries))
    scores = brute_scores(keys, queries, 8)
    want = [brute_windows(s, budget - 8, size) + list(range(n - 8, n)) for s in scores]
    assert kept(plan) == want
    assert plan.keep.shape == (2, budget)


def test_windowkv_per_head_adapts_window_size_to_attention_pattern():
    chooser = PerHeadWindows(KVPolicyConfig(policy="windowkv-per-head", budget=64, window_sizes=(4, 16)))
    spread = torch.ones(2, 400)
    peaked = torch.full((2, 400), 1e-4)
    peaked[:, 100] = 1.0
    assert attention_concentration(spread) == pytest.approx(20 / 400)
    assert attention_concentration(peaked) > 0.9
    assert chooser.window_size(spread, 48) == 4
    assert chooser.window_size(peaked, 48) == 16
    # Too few selectable tokens for three runs of concentrated windows: the size shrinks so that three fit.
    assert chooser.window_size(peaked, 20) == 9  # two windows of 9 and a run of 2
    assert chooser.window_size(peaked, 33) == 16  # two windows of 16 and a run of 1
    assert chooser.window_size(peaked, 1) == 1
    fixed = PerHeadWindows(KVPolicyConfig(policy="windowkv-per-head", budget=64, window_size=16))
    assert fixed.window_size(peaked, 20) == 16  # a configured size is used as given


@pytest.mark.parametrize("policy", ["windowkv", "windowkv-per-head"])
def test_windowkv_group_layers_share_the_first_layers_selection(policy):
    config = KVPolicyConfig(policy=policy, budget=30, window=8, group_size=2)
    compressor = RequestCompressor(make_policy(config, 4))
    plans = []
    for layer in range(4):
        keys, queries = random_layer(4, 2, 90, 8, seed=layer)
        plans.append(compressor.plan(layer, view(keys, queries)))
    assert plans[1] is plans[0] and plans[3] is plans[2]
    assert kept(plans[0]) != kept(plans[2])
    with pytest.raises(RuntimeError, match="reuses layer 2's plan"):
        RequestCompressor(make_policy(config, 4)).plan(3, view(*random_layer(4, 2, 90, 8, seed=0)))


def scored_view(base, n):
    """A view whose observation scores, for any window w, are the first n - w columns of `base` `[heads, >= n]`."""
    base = torch.as_tensor(base, dtype=torch.float64)
    return PromptView(n, base.shape[0], torch.device("cpu"), lambda w: base[:, : n - w])


def paper_windowkv(**settings):
    return make_policy(KVPolicyConfig(policy="windowkv", **settings), 1)  # one layer: one group, the plain budget


def test_windowkv_scoring_max_favours_peaks_and_average_favours_spread():
    # Windows of 4 (top half: 2 tokens): a peak window [1, 1, 0, 0] and a spread one [.6, .6, .6, .6].
    base = [[1, 1, 0, 0, .6, .6, .6, .6, .1, .1, .1, .1] + [0] * 8] * 2
    peak, spread = [0, 1, 2, 3], [4, 5, 6, 7]
    mx = paper_windowkv(budget=12, window=8, window_size=4, window_scoring="max").selector.select(0, scored_view(base, 20))
    assert kept(mx) == [peak + list(range(12, 20))] * 2  # observes the last `window` queries
    avg = paper_windowkv(budget=8, window=8, window_size=4, window_scoring="average").selector.select(0, scored_view(base, 20))
    assert kept(avg) == [spread + list(range(16, 20))] * 2  # observes window // 2 = 4


def test_windowkv_ranks_the_short_last_window_and_keeps_exactly_its_budget():
    # Prefix of 10 tokens in windows of 4: [0-3], [4-7] and the short [8, 9], which scores best.
    base = [[.2, .2, .2, .2, .1, .1, .1, .1, .9, .9, 0]] * 2
    plan = paper_windowkv(budget=8, window=2, window_size=4, window_scoring="average").selector.select(0, scored_view(base, 11))
    # 7 selectable tokens (window 2 // 2 = 1 observed): [8, 9], then [0-3], then the leading token of [4-7].
    assert kept(plan) == [[0, 1, 2, 3, 4, 8, 9, 10]] * 2


def test_windowkv_scores_windows_over_all_heads_and_shares_them():
    # Head 0 strongly prefers the first window, head 1 mildly the second: the layer keeps the first for both.
    base = [[.9, .9, .0, .0, 0, 0], [.0, .0, .3, .3, 0, 0]]
    plan = paper_windowkv(budget=4, window=2, window_size=2, window_scoring="max").selector.select(0, scored_view(base, 6))
    assert kept(plan) == [[0, 1, 4, 5], [0, 1, 4, 5]]


def test_windowkv_auto_scoring_follows_attention_concentration():
    windows = SharedWindows(KVPolicyConfig(policy="windowkv", budget=64, concentration_threshold=0.5))
    peaked = torch.full((2, 400), 1e-4)
    peaked[:, 100] = 1.0
    assert windows.scoring(peaked) == "max" and windows.scoring(torch.ones(2, 400)) == "average"
    assert SharedWindows(KVPolicyConfig(policy="windowkv", budget=64, window_scoring="average")).scoring(peaked) == "average"
    # auto on a spread pattern re-observes with window // 2 queries: the last 16 prompt tokens are the window,
    # and 48 tokens of equal windows go to the earliest ones.
    plan = paper_windowkv(budget=64, window_size=8).selector.select(0, scored_view(torch.ones(2, 200), 200))
    assert kept(plan) == [list(range(48)) + list(range(184, 200))] * 2


def test_windowkv_matches_brute_force_on_real_scores():
    keys, queries = random_layer(4, 2, 100, 8, seed=3)
    for scoring in ("max", "average"):
        w = 8 if scoring == "max" else 4
        plan = paper_windowkv(budget=37, window=8, window_size=5, window_scoring=scoring).selector.select(0, view(keys, queries))
        scores = brute_scores(keys, queries[:, -w:], w)
        windows = []
        for start in range(0, 100 - w, 5):
            tiles = [row[start:start + 5] for row in scores]
            if scoring == "average":
                windows.append(sum(map(sum, tiles)) / sum(map(len, tiles)))
            else:
                windows.append(sum(sum(sorted(t, reverse=True)[:2]) / min(2, len(t)) for t in tiles) / len(tiles))
        chosen, left = [], 37 - w
        for i in sorted(range(len(windows)), key=lambda i: (-windows[i], i)):
            take = min(left, 5, 100 - w - 5 * i)
            chosen, left = chosen + list(range(5 * i, 5 * i + take)), left - take
        assert kept(plan) == [sorted(chosen) + list(range(100 - w, 100))] * 2


def test_pod_layout_and_shared_keys():
    config = KVPolicyConfig(policy="pod", sink=2, recent=3, group_size=2)
    policy = make_policy(config, 4)
    keys, queries = random_layer(4, 2, 12, 4, seed=0)
    values = torch.randn_like(keys)
    owner = policy.selector.select(2, view(keys, queries))
    assert owner.keep is None and owner.key_owner is None
    member = policy.selector.select(3, view(keys, queries))
    assert kept(member) == [[0, 1, 9, 10, 11]] * 2
    assert member.key_owner == 2 and member.shared.tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert policy.layout.layer_budget(3, 12) == 5 and policy.layout.layer_budget(2, 12) == 12
    owner_keys = torch.randn_like(keys)
    k, v = apply_plan(member, keys, values, owner_keys=owner_keys)
    assert torch.equal(k[:, 2:9], owner_keys[:, 2:9]) and torch.equal(k[:, [0, 1, 9, 10, 11]], keys[:, [0, 1, 9, 10, 11]])
    assert torch.equal(v, values)
    assert make_policy(config, 4).selector.select(1, view(*random_layer(4, 2, 5, 4, seed=1))).keep is None


def test_apply_plan_gathers_per_head():
    keys = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)
    values = -keys
    from kvcomp_vllm.policies import LayerPlan

    plan = LayerPlan(keep=torch.tensor([[0, 4], [1, 5]]))
    k, v = apply_plan(plan, keys, values)
    assert torch.equal(k, torch.stack([keys[0, [0, 4]], keys[1, [1, 5]]]))
    assert torch.equal(v, -k)
    with pytest.raises(ValueError, match="pass its keys as owner_keys"):
        apply_plan(LayerPlan(keep=plan.keep, key_owner=0, shared=torch.tensor([2])), keys, values)


@pytest.mark.parametrize("settings", [dict(policy="streaming", budget=8), dict(policy="pod", recent=4, group_size=2)])
def test_policies_without_a_window_never_score(settings):
    def no_scores(w):
        raise AssertionError("scored")

    policy = make_policy(KVPolicyConfig(**settings), 2)
    assert policy.selector.observation_window == 0
    plan = policy.selector.select(1, PromptView(40, 2, torch.device("cpu"), no_scores))
    assert plan.keep is not None and plan.keep.shape[0] == 2


@pytest.mark.parametrize(
    "settings",
    [dict(policy="snapkv", budget=96), dict(policy="pyramid", budget=96),
     dict(policy="windowkv", budget=96, group_size=1, window_scoring="max"),
     dict(policy="windowkv", budget=96, group_size=1, window_size=5, window_scoring="max"),
     dict(policy="windowkv-per-head", budget=96, group_size=1),
     dict(policy="windowkv-per-head", budget=96, group_size=1, window_size=5)],
    ids=["snapkv", "pyramid", "windowkv", "windowkv-5", "windowkv-per-head-auto", "windowkv-per-head-5"],
)
@pytest.mark.parametrize("new_tokens", [1, 4, 31])
def test_a_last_chunk_shorter_than_the_window_keeps_distinct_positions(settings, new_tokens):
    # A prefill_chunk round at the prompt's end: the cache holds 96 kept tokens plus `new_tokens` new
    # ones, and only the new tokens' queries exist to score with.
    config = KVPolicyConfig(**settings, prefill_chunk=128)
    policy = make_policy(config, 4)
    held = 96 + new_tokens
    keys, queries = random_layer(4, 2, held, new_tokens, seed=new_tokens)
    assert queries.shape[1] == new_tokens
    for layer in range(4):
        plan = policy.selector.select(layer, PromptView.dense(keys, queries, SCALE, context_len=128 * 7 + new_tokens))
        budget = policy.layout.layer_budget(layer, 128 * 7 + new_tokens)
        if budget >= held:  # pyramid's lower layers keep the whole round
            assert plan.keep is None
            continue
        assert plan.keep.shape == (2, budget)
        for row in plan.keep.tolist():
            assert len(set(row)) == budget and row == sorted(row)
            assert row[-32:] == list(range(held - 32, held))  # the window's tokens, as when compressing once
