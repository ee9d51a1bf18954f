"""Per-layer budget schedules: pyramid shape, exact means, minimums, short prompts."""

import pytest

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy, pyramid_budgets, staircase


def test_pyramid_hand_case():
    # s = 68 selectable tokens: shares run from 2*68 - 68/20 = 132.6 down to 3.4, rounded to sum 544.
    assert pyramid_budgets(100, 8, 32, 20.0) == (165, 146, 128, 109, 91, 72, 54, 35)


@pytest.mark.parametrize("budget", [32, 33, 100, 517, 2048])
@pytest.mark.parametrize("num_layers", [1, 2, 7, 32])
@pytest.mark.parametrize("beta", [1.0, 2.5, 20.0])
def test_pyramid_mean_monotone_and_floor(budget, num_layers, beta):
    schedule = pyramid_budgets(budget, num_layers, 32, beta)
    assert sum(schedule) == budget * num_layers
    assert all(a >= b for a, b in zip(schedule, schedule[1:]))
    assert min(schedule) >= 32


def test_pyramid_beta_one_is_uniform_and_steepness_grows_with_beta():
    assert pyramid_budgets(100, 4, 32, 1.0) == (100, 100, 100, 100)
    gentle = pyramid_budgets(1000, 8, 32, 2.0)
    steep = pyramid_budgets(1000, 8, 32, 20.0)
    assert steep[0] > gentle[0] and steep[-1] < gentle[-1]


def test_staircase_hand_case():
    # Runs {0,1} {2,3} {4,5} of (165, 146, 128, 109, 91, 72): means 155.5, 118.5, 81.5. The first
    # run's floored half token lifts the second to 119; the top run's half is lost.
    assert staircase((165, 146, 128, 109, 91, 72), 3) == (155, 155, 119, 119, 81, 81)


@pytest.mark.parametrize("budget", [32, 100, 517, 2048])
@pytest.mark.parametrize("num_layers", [2, 7, 30, 32])
@pytest.mark.parametrize("tiers", [1, 2, 3, 4, 8])
def test_staircase_keeps_steps_order_and_mean(budget, num_layers, tiers):
    if tiers > num_layers:
        pytest.skip("more steps than layers is refused by check_model")
    schedule = pyramid_budgets(budget, num_layers, 32, 20.0)
    steps = staircase(schedule, tiers)
    runs = [[b for layer, b in enumerate(steps) if layer * tiers // num_layers == t] for t in range(tiers)]
    assert all(len(set(run)) == 1 for run in runs)
    assert all(a >= b for a, b in zip(steps, steps[1:]))
    assert 0 <= sum(schedule) - sum(steps) < max(len(run) for run in runs)  # mean short by under a token
    assert min(steps) >= 32
    assert staircase(schedule, num_layers) == schedule


def test_layer_budgets_of_each_policy():
    n = 1000
    assert [make_policy(KVPolicyConfig(policy="full"), 4).layer_budget(i, n) for i in range(4)] == [n] * 4
    snap = make_policy(KVPolicyConfig(policy="snapkv", budget=0.1), 4)
    assert [snap.layer_budget(i, n) for i in range(4)] == [100] * 4
    pyr = make_policy(KVPolicyConfig(policy="pyramid", budget=0.1), 4)
    budgets = [pyr.layer_budget(i, n) for i in range(4)]
    assert sum(budgets) == 400 and budgets == sorted(budgets, reverse=True)


def test_prompt_within_budget_is_kept_whole_in_every_layer():
    pyr = make_policy(KVPolicyConfig(policy="pyramid", budget=512), 4)
    assert [pyr.layer_budget(i, 300) for i in range(4)] == [300] * 4
    # A budget just under the prompt still shapes the pyramid, capped at the prompt length.
    capped = [pyr.layer_budget(i, 600) for i in range(4)]
    assert max(capped) == 600 and capped[-1] < 512


@pytest.mark.parametrize(
    "params",
    [dict(policy="snapkv", budget=0.1), dict(policy="pyramid", budget=0.1, beta=3),
     dict(policy="pyramid", budget=0.1, tiers=3), dict(policy="windowkv", budget=0.2),
     dict(policy="streaming", budget=50), dict(policy="pod", recent=40, group_size=2)],
    ids=lambda p: p["policy"],
)
def test_layers_of_one_budget_tier_always_keep_the_same_count(params):
    policy = make_policy(KVPolicyConfig(**params), 8)
    for n in (10, 100, 333, 4096):
        by_tier = {}
        for layer in range(8):
            by_tier.setdefault(policy.budget_tier(layer), set()).add(policy.layer_budget(layer, n))
        assert all(len(counts) == 1 for counts in by_tier.values())


def test_pod_slots_pack_distant_values_two_per_slot():
    pod = make_policy(KVPolicyConfig(policy="pod", sink=4, recent=60, group_size=4), 8)
    assert [pod.layer_slots(layer, 1000) for layer in range(5)] == [1000, 64 + 468, 64 + 468, 64 + 468, 1000]
    assert pod.layer_slots(1, 1001) == 64 + 469  # an odd distant count rounds up
    assert pod.layer_slots(1, 50) == 50  # all proximal: nothing shared
    snap = make_policy(KVPolicyConfig(policy="snapkv", budget=100), 8)
    assert snap.layer_slots(3, 1000) == snap.layer_budget(3, 1000) == 100
