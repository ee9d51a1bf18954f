"""Per-layer budget schedules: pyramid shape, exact means, minimums, short prompts."""

import pytest

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy, pyramid_budgets, staircase
from kvcomp_vllm.policies.windowkv import group_budgets


LONG = 100_000  # a prompt long enough that no layer's budget is capped by it


def test_pyramid_hand_case():
    # s = 68 selectable tokens: shares run from 2*68 - 68/20 = 132.6 down to 3.4, rounded to sum 544.
    assert pyramid_budgets(100, 8, 32, 20.0, LONG) == (165, 146, 128, 109, 91, 72, 54, 35)


def test_pyramid_hand_cases_near_the_prompt_length():
    # Prompts under 2s = 136 tokens: every layer keeps SnapKV's 100 (a pyramid's bottom would not fit).
    assert pyramid_budgets(100, 8, 32, 20.0, 101) == (100,) * 8
    assert pyramid_budgets(100, 8, 32, 20.0, 135) == (100,) * 8
    # From 136 on the pyramid, its bottom share capped at the prompt's 150 - 32 = 118: shares 118 down to
    # 2*68 - 118 = 18 in steps of 100/7 (118, 103.71, 89.43, 75.14, 60.86, 46.57, 32.29, 18), floored to
    # 541, the three largest fractions (layers 4, 1, 5) rounded up to reach 544.
    assert pyramid_budgets(100, 8, 32, 20.0, 150) == (150, 136, 121, 107, 93, 79, 64, 50)
    # At 136: shares 104 down to 32 in steps of 72/7, layers 4, 1, 5 rounded up.
    assert pyramid_budgets(100, 8, 32, 20.0, 136) == (136, 126, 115, 105, 95, 85, 74, 64)


def test_pyramid_budget_2048_on_a_2100_token_prompt_is_snapkvs_in_every_layer():
    policy = make_policy(KVPolicyConfig(policy="pyramid", budget=2048), 32)
    assert [policy.layout.layer_budget(layer, 2100) for layer in range(32)] == [2048] * 32


@pytest.mark.parametrize("budget", [32, 33, 100, 517, 2048])
@pytest.mark.parametrize("num_layers", [1, 2, 7, 32])
@pytest.mark.parametrize("beta", [1.0, 2.5, 20.0])
def test_pyramid_mean_monotone_and_floor(budget, num_layers, beta):
    schedule = pyramid_budgets(budget, num_layers, 32, beta, LONG)
    assert sum(schedule) == budget * num_layers
    assert all(a >= b for a, b in zip(schedule, schedule[1:]))
    assert min(schedule) >= 32


def boundary_lengths(budget: int, window: int, beta: float) -> list[int]:
    """Prompt lengths at and around each place the rule changes: the budget, 2s, the bottom reaching the prompt."""
    s = budget - window
    bottom = window + 2 * s - s / beta  # where the pyramid's bottom layer equals the prompt
    marks = [budget, 2 * s, int(bottom), int(bottom) + 1, 4 * budget, 20 * budget]
    return sorted({n + d for n in marks for d in (-1, 0, 1) if n + d > 0})


@pytest.mark.parametrize("budget,window", [(32, 32), (33, 32), (40, 8), (100, 32), (517, 32), (2048, 32), (3000, 1)])
@pytest.mark.parametrize("num_layers", [1, 4, 7, 32])
@pytest.mark.parametrize("beta", [1.0, 2.5, 20.0, 200.0])
@pytest.mark.parametrize("tiers", [None, 2, 3])
def test_pyramid_layers_keep_the_budget_on_average_for_every_prompt_longer_than_it(budget, window, num_layers, beta, tiers):
    if tiers is not None and tiers > num_layers:
        pytest.skip("more tiers than layers is refused by check_model")
    settings = dict(policy="pyramid", budget=budget, window=window, beta=beta, tiers=tiers)
    policy = make_policy(KVPolicyConfig(**settings), num_layers)
    runs = [sum(layer * tiers // num_layers == t for layer in range(num_layers)) for t in range(tiers)] if tiers else [1]
    for n in boundary_lengths(budget, window, beta):
        kept = [policy.layout.layer_budget(layer, n) for layer in range(num_layers)]
        want = n if n <= budget else budget  # a prompt within budget is kept whole
        if len(set(runs)) == 1:  # one layer per tier, or tiers of equal length: exact
            assert sum(kept) == num_layers * want, (n, kept)
        else:  # tiers of unequal length may lose the top tier's remainder, under one token per layer
            assert 0 <= num_layers * want - sum(kept) < max(runs), (n, kept)
        assert max(kept) <= n and min(kept) >= min(window, n), (n, kept)
        assert kept == sorted(kept, reverse=True), (n, kept)


@pytest.mark.parametrize("ratio", [0.125, 0.25, 0.5])  # exact in binary: ceil(ratio * n) is computed here exactly
@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 255, 256, 257, 1000, 4095])
def test_pyramid_ratio_budgets_keep_the_mean(ratio, n):
    policy = make_policy(KVPolicyConfig(policy="pyramid", budget=ratio), 8)
    want = min(n, max(-(-int(ratio * 1024) * n // 1024), 32))
    assert sum(policy.layout.layer_budget(layer, n) for layer in range(8)) == 8 * want


def test_staircase_hand_case():
    # Runs {0,1} {2,3} {4,5} of (165, 146, 128, 109, 91, 72): means 155.5, 118.5, 81.5. The first
    # run's floored half token lifts the second to 119; the top run's half is lost.
    assert staircase((165, 146, 128, 109, 91, 72), 3) == (155, 155, 119, 119, 81, 81)


@pytest.mark.parametrize("budget", [32, 100, 517, 2048])
@pytest.mark.parametrize("num_layers", [2, 7, 30, 32])
@pytest.mark.parametrize("tiers", [1, 2, 3, 4, 8])
def test_staircase_keeps_steps_order_and_mean(budget, num_layers, tiers):
    if tiers > num_layers:
        pytest.skip("more tiers than layers is refused by check_model")
    schedule = pyramid_budgets(budget, num_layers, 32, 20.0, LONG)
    steps = staircase(schedule, tiers)
    runs = [[b for layer, b in enumerate(steps) if layer * tiers // num_layers == t] for t in range(tiers)]
    assert all(len(set(run)) == 1 for run in runs)
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    if num_layers % tiers == 0:  # equal runs: the staircase keeps the budget exactly
        assert sum(steps) == sum(schedule) == budget * num_layers
    else:  # unequal runs: the top run's carried remainder may be lost, under one token per layer on average
        assert 0 <= sum(schedule) - sum(steps) < max(len(run) for run in runs)
    assert min(steps) >= 32
    assert staircase(schedule, num_layers) == schedule


def test_layer_budgets_of_each_policy():
    n = 1000
    assert [make_policy(KVPolicyConfig(policy="full"), 4).layout.layer_budget(i, n) for i in range(4)] == [n] * 4
    snap = make_policy(KVPolicyConfig(policy="snapkv", budget=0.1), 4)
    assert [snap.layout.layer_budget(i, n) for i in range(4)] == [100] * 4
    pyr = make_policy(KVPolicyConfig(policy="pyramid", budget=0.1), 4)
    budgets = [pyr.layout.layer_budget(i, n) for i in range(4)]
    assert sum(budgets) == 400 and budgets == sorted(budgets, reverse=True)


def test_prompt_within_budget_is_kept_whole_in_every_layer():
    pyr = make_policy(KVPolicyConfig(policy="pyramid", budget=512), 4)
    assert [pyr.layout.layer_budget(i, 300) for i in range(4)] == [300] * 4
    # A prompt shorter than 2 * (budget - window) = 960: SnapKV's budget in every layer.
    assert [pyr.layout.layer_budget(i, 600) for i in range(4)] == [512] * 4
    assert [pyr.layout.layer_budget(i, 959) for i in range(4)] == [512] * 4
    assert sum(pyr.layout.layer_budget(i, 960) for i in range(4)) == 4 * 512  # from 960 on, the pyramid
    assert pyr.layout.layer_budget(0, 960) == 960 and pyr.layout.layer_budget(3, 960) < 512


@pytest.mark.parametrize(
    "params",
    [dict(policy="snapkv", budget=0.1), dict(policy="pyramid", budget=0.1, beta=3),
     dict(policy="pyramid", budget=0.1, tiers=3), dict(policy="windowkv", budget=0.2),
     dict(policy="windowkv", budget=0.2, group_size=2), dict(policy="windowkv-per-head", budget=0.2),
     dict(policy="streaming", budget=50), dict(policy="pod", recent=40, group_size=2)],
    ids=lambda p: p["policy"],
)
def test_layers_of_one_budget_tier_always_keep_the_same_count(params):
    policy = make_policy(KVPolicyConfig(**params), 8)
    for n in (10, 100, 333, 4096):
        by_tier = {}
        for layer in range(8):
            by_tier.setdefault(policy.layout.budget_tier(layer), set()).add(policy.layout.layer_budget(layer, n))
        assert all(len(counts) == 1 for counts in by_tier.values())


def test_pod_slots_pack_distant_values_two_per_slot():
    pod = make_policy(KVPolicyConfig(policy="pod", sink=4, recent=60, group_size=4), 8)
    assert [pod.layout.layer_slots(layer, 1000) for layer in range(5)] == [1000, 64 + 468, 64 + 468, 64 + 468, 1000]
    assert pod.layout.layer_slots(1, 1001) == 64 + 469  # an odd distant count rounds up
    assert pod.layout.layer_slots(1, 50) == 50  # all proximal: nothing shared
    snap = make_policy(KVPolicyConfig(policy="snapkv", budget=100), 8)
    assert snap.layout.layer_slots(3, 1000) == snap.layout.layer_budget(3, 1000) == 100


def test_windowkv_group_budgets_follow_the_official_arithmetic_decay():
    # Official (budget excluding the window, C = 68, 8 layers a group, beta 14): the last group keeps
    # 68 * 8 // 14 = 38, the first 2 * 68 - 38 = 98, in steps of 20: 98, 78, 58, 38. Ours, from the exact
    # line (38.86 up to 97.14) rounded to the exact total 4 * 68: 97, 78, 58, 39, plus the window.
    assert group_budgets(100, 32, 4, 8, LONG) == (129, 110, 90, 71)
    policy = make_policy(KVPolicyConfig(policy="windowkv", budget=100), 32)
    assert [policy.layout.layer_budget(layer, LONG) for layer in range(32)] == [b for b in (129, 110, 90, 71) for _ in range(8)]
    assert list(policy.layout.tier_layers().values()) == [list(range(g * 8, g * 8 + 8)) for g in range(4)]
    assert make_policy(KVPolicyConfig(policy="windowkv-per-head", budget=100), 32).layout.tier_layers() == {0: list(range(32))}


def test_windowkv_default_group_is_the_largest_divisor_up_to_eight():
    config = KVPolicyConfig(policy="windowkv", budget=100)
    assert [config.layer_group(n) for n in (32, 30, 28, 16, 4, 7, 1)] == [8, 6, 7, 8, 4, 7, 1]
    assert KVPolicyConfig(policy="windowkv-per-head", budget=100).layer_group(32) == 2


@pytest.mark.parametrize("budget", [32, 33, 100, 517, 2048])
@pytest.mark.parametrize("num_layers,group", [(1, 1), (4, 2), (8, 1), (28, 7), (32, 8), (32, 16)])
def test_windowkv_groups_keep_the_budget_on_average_for_every_prompt_longer_than_it(budget, num_layers, group):
    policy = make_policy(KVPolicyConfig(policy="windowkv", budget=budget, group_size=group), num_layers)
    s = budget - 32
    for n in sorted({budget + 1, budget + 2, budget + s // 2, 2 * budget, budget + 2 * s, 3 * budget + 7, LONG}):
        schedule = [policy.layout.layer_budget(layer, n) for layer in range(num_layers)]
        assert sum(schedule) == budget * num_layers, n
        assert schedule == sorted(schedule, reverse=True) and 32 <= schedule[-1] and schedule[0] <= n
        assert all(len({schedule[i] for i in range(g, g + group)}) == 1 for g in range(0, num_layers, group))
    assert [policy.layout.layer_budget(layer, budget) for layer in range(num_layers)] == [budget] * num_layers
