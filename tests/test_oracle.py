"""The policy package against the independent oracle (`kvcomp_vllm.testing.oracle`), by property tests.

Each example walks one prompt's compression rounds (every `prefill_chunk` tokens and at its end) with
random keys and queries per layer and round: both sides must keep the same positions per KV head,
each layer distinct positions, ascending, exactly min(held, its budget) of them.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import PromptView, RequestCompressor, make_policy
from kvcomp_vllm.policies.protected import protected_policy
from kvcomp_vllm.reference import generate as policy_generate
from kvcomp_vllm.testing import oracle
from kvcomp_vllm.testing.oracle import generate

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
D = 8


@st.composite
def scenarios(draw):
    """A policy config, a model shape and a prompt length near one of the config's boundaries."""
    policy = draw(st.sampled_from(["full", "streaming", "snapkv", "pyramid", "windowkv", "windowkv-per-head", "pod"]))
    group_size = draw(st.sampled_from([1, 2]))
    grouped = policy in ("windowkv", "windowkv-per-head", "pod")
    num_layers = group_size * draw(st.integers(1, 3)) if grouped else draw(st.integers(1, 4))
    kv_heads, ratio = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 4]))
    window = draw(st.sampled_from([1, 2, 5, 8, 16]))
    params: dict = {"policy": policy}
    if policy in ("streaming", "pod"):
        params["sink"] = draw(st.integers(0, 6))
    if policy != "full" and policy != "pod":
        floor = window if policy != "streaming" else params["sink"] + 1
        params["budget"] = draw(st.one_of(st.integers(floor, floor + 60), st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0])))
        if draw(st.integers(0, 2)):  # two in three examples compress while the prompt is read
            params["prefill_chunk"] = draw(st.integers(max(window, 1), 64))
    if policy in ("snapkv", "pyramid", "windowkv", "windowkv-per-head"):
        params["window"] = window
    if policy in ("snapkv", "pyramid"):
        params["pool_size"] = draw(st.sampled_from([1, 3, 5, 7, 15]))
        params["pooling"] = draw(st.sampled_from(["avg", "max"]))
    if policy == "pyramid":
        params["beta"] = draw(st.sampled_from([1.0, 2.5, 20.0]))
        params["tiers"] = draw(st.one_of(st.none(), st.integers(1, num_layers)))
    if policy == "windowkv":
        params["window_size"] = draw(st.one_of(st.none(), st.integers(1, 9)))
        params["window_scoring"] = draw(st.sampled_from(["auto", "max", "average"]))
        params["concentration_threshold"] = draw(st.sampled_from([0.05, 0.3, 0.5, 0.9]))
    if policy == "windowkv-per-head":
        params["window_size"] = draw(st.one_of(st.just("auto"), st.integers(1, 9)))
        params["window_sizes"] = draw(st.sampled_from([(8, 32), (2, 5), (1, 3)]))
    if grouped and (policy != "windowkv" or draw(st.booleans())):  # windowkv's default: all layers up to 8
        params["group_size"] = group_size
    if policy == "pod":
        params["recent"] = draw(st.integers(1, 40))
    if policy == "pod" and draw(st.booleans()):  # PoD combined with SnapKV's choice of distant tokens
        params.update(select="snapkv", window=min(window, params["recent"]), pool_size=draw(st.sampled_from([1, 3, 7])),
                      pooling=draw(st.sampled_from(["avg", "max"])))
        params["budget"] = draw(st.one_of(st.integers(params["window"], params["window"] + 60),
                                          st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0])))
    if policy == "pod" and draw(st.booleans()):  # layer groups of any layers
        order = draw(st.permutations(range(num_layers)))
        cuts = sorted(draw(st.sets(st.integers(1, num_layers - 1), max_size=num_layers - 1))) if num_layers > 1 else []
        params.pop("group_size", None)
        params["groups"] = [order[a:b] for a, b in zip([0, *cuts], [*cuts, num_layers])]
    config = KVPolicyConfig(**{k: v for k, v in params.items() if v is not None})
    b = config.budget if isinstance(config.budget, int) else 40
    chunk = config.prefill_chunk or 50
    # Shorter than the window, at the budget and the pyramid's 2s, and chunked prompts whose last chunk
    # is shorter than the window.
    marks = [1, window, b, 2 * (b - window), 4 * chunk, 150]
    if draw(st.booleans()):
        n = draw(st.integers(1, 5)) * chunk + draw(st.integers(1, window))
    else:
        n = draw(st.sampled_from(marks)) + draw(st.sampled_from([-1, 0, 1]))
    return config, num_layers, kv_heads, ratio, max(1, min(n, 300)), draw(st.integers(0, 2**16))


def rounds(config: KVPolicyConfig, prompt_len: int) -> list[int]:
    """New tokens per compression round."""
    points = oracle.compression_points(config, prompt_len)
    return [b - a for a, b in zip([0, *points], points)]


@SETTINGS
@given(scenarios())
def test_policies_keep_what_the_oracle_keeps_in_every_round(scenario):
    config, num_layers, kv_heads, ratio, prompt_len, seed = scenario
    g = torch.Generator().manual_seed(seed)
    policy = make_policy(config, num_layers)
    held = [0] * num_layers
    for new in rounds(config, prompt_len):
        compressor, select = RequestCompressor(policy), oracle.oracle_selector(config, num_layers)
        for layer in range(num_layers):
            n = held[layer] + new
            keys = 2 * torch.randn(kv_heads, n, D, generator=g, dtype=torch.float64)
            queries = 2 * torch.randn(kv_heads * ratio, new, D, generator=g, dtype=torch.float64)
            got = compressor.plan(layer, PromptView.dense(keys, queries, D**-0.5, context_len=prompt_len))
            want = select(layer, keys, queries, D**-0.5, prompt_len)
            assert (got.keep is None) == (want.keep is None), (layer, n)
            budget = min(n, oracle.layer_budget(config, num_layers, layer, prompt_len))
            if got.keep is None:
                assert budget == n or config.policy == "pod"
                held[layer] = n
                continue
            assert torch.equal(got.keep, want.keep), (layer, n, got.keep, want.keep)
            assert got.keep.shape == (kv_heads, budget)
            for row in got.keep.tolist():
                assert row == sorted(set(row)) and 0 <= row[0] and row[-1] < n  # distinct, ascending, in range
            if config.policy == "windowkv":  # the paper's form keeps one window set for every head
                assert all(torch.equal(row, got.keep[0]) for row in got.keep)
            assert got.key_owner == want.key_owner
            assert (got.shared is None and want.shared is None) or torch.equal(got.shared, want.shared)
            held[layer] = n if config.policy == "pod" else budget


@SETTINGS
@given(scenarios(), st.integers(1, 40))
def test_policies_after_a_protected_prefix_keep_what_the_oracle_keeps(scenario, protected):
    # The prefix stays whole; the rest is selected as a prompt of its own, scored with the prefix's keys too.
    config, num_layers, kv_heads, ratio, own_len, seed = scenario
    prompt_len = protected + own_len
    g = torch.Generator().manual_seed(seed)
    policy = protected_policy(make_policy(config, num_layers), protected)
    points = oracle.compression_points(config, prompt_len, protected)
    assert points == [p for p in range(1, prompt_len + 1) if p == policy.layout.next_compression_point(prompt_len, p - 1)]
    held = [0] * num_layers
    for new in [b - a for a, b in zip([0, *points], points)]:
        compressor, select = RequestCompressor(policy), oracle.oracle_selector(config, num_layers, protected)
        for layer in range(num_layers):
            n = held[layer] + new
            keys = 2 * torch.randn(kv_heads, n, D, generator=g, dtype=torch.float64)
            queries = 2 * torch.randn(kv_heads * ratio, new, D, generator=g, dtype=torch.float64)
            dense = PromptView.dense(keys, queries, D**-0.5)
            view = PromptView(n - protected, kv_heads, keys.device, lambda w, d=dense: d.scores(w)[:, protected:],
                              context_len=own_len)
            got = compressor.plan(layer, view)
            want = select(layer, keys, queries, D**-0.5, prompt_len)
            assert (got.keep is None) == (want.keep is None), (layer, n)
            if got.keep is None:
                held[layer] = n
                continue
            prefix = torch.arange(protected).expand(kv_heads, -1)
            assert torch.equal(torch.cat([prefix, got.keep + protected], dim=1), want.keep), (layer, n)
            assert (got.shared is None and want.shared is None) or torch.equal(got.shared + protected, want.shared)
            held[layer] = n if config.policy == "pod" else protected + got.keep.shape[1]
    # Every layer holds the prefix and its budget of the own tokens, as the wrapped policy says (PoD
    # members pack distant values, so their slots are fewer than their positions).
    if config.policy != "pod":
        assert held == [policy.layout.layer_slots(layer, prompt_len) for layer in range(num_layers)]


@SETTINGS
@given(scenarios())
def test_layer_budgets_equal_the_oracles(scenario):
    config, num_layers, _, _, prompt_len, _ = scenario
    policy = make_policy(config, num_layers)
    for n in {prompt_len, prompt_len + 1, 2 * prompt_len, 10 * prompt_len}:
        want = [oracle.layer_budget(config, num_layers, layer, n) for layer in range(num_layers)]
        assert [policy.layout.layer_budget(layer, n) for layer in range(num_layers)] == want, n


def test_oracle_budgets_by_hand():
    # 2s = 136: SnapKV's 100 below it; at 150 the pyramid with its bottom layer capped at the prompt.
    config = KVPolicyConfig(policy="pyramid", budget=100, window=32)
    assert oracle.pyramid_layer_budgets(config, 8, 135) == [100] * 8
    assert oracle.pyramid_layer_budgets(config, 8, 150) == [150, 136, 121, 107, 93, 79, 64, 50]
    tiers = KVPolicyConfig(policy="pyramid", budget=100, window=32, tiers=4)
    assert oracle.pyramid_layer_budgets(tiers, 8, 150) == [143, 143, 114, 114, 86, 86, 57, 57]
    assert oracle.compression_points(KVPolicyConfig(policy="snapkv", budget=40, prefill_chunk=64), 200) == [64, 128, 192, 200]


def test_oracle_ties_go_to_the_earlier_position():
    keys = torch.zeros(1, 12, D, dtype=torch.float64)  # every key alike: all prefix scores equal
    queries = torch.ones(2, 4, D, dtype=torch.float64)
    snap = oracle.select_snapkv(KVPolicyConfig(policy="snapkv", budget=7, window=4, pool_size=1), keys, queries, 1.0, 7)
    assert snap.keep.tolist() == [[0, 1, 2, 8, 9, 10, 11]]
    per_head = KVPolicyConfig(policy="windowkv-per-head", budget=9, window=4, window_size=2)
    assert oracle.select_windowkv_per_head(per_head, keys, queries, 1.0, 9).keep.tolist() == [[0, 1, 2, 3, 4, 8, 9, 10, 11]]
    for scoring in ("max", "average"):  # equal windows: the earliest, the last one taken cut to its leading token
        win = KVPolicyConfig(policy="windowkv", budget=9, window=4, window_size=2, window_scoring=scoring)
        w = 4 if scoring == "max" else 2
        assert oracle.select_windowkv(win, keys, queries, 1.0, 9).keep.tolist() == [[*range(9 - w), *range(12 - w, 12)]]


@pytest.fixture(scope="module")
def hf_llama(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)


def test_oracle_generator_with_full_equals_transformers_generate(hf_llama):
    prompt = list(range(10, 210))
    want = hf_llama.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    out = generate(hf_llama, prompt, KVPolicyConfig(policy="full"), 12)
    assert out.tokens == want[0, len(prompt):].tolist() and out.kept_per_layer == [200] * 4


@pytest.mark.parametrize(
    "params",
    [dict(policy="snapkv", budget=48, prefill_chunk=64), dict(policy="windowkv", budget=50, prefill_chunk=96),
     dict(policy="windowkv", budget=50, group_size=2, prefill_chunk=96),
     dict(policy="windowkv-per-head", budget=50, prefill_chunk=96),
     dict(policy="pyramid", budget=0.2, prefill_chunk=40), dict(policy="streaming", budget=30, prefill_chunk=50),
     dict(policy="pod", recent=32, group_size=2)],
    ids=lambda p: p["policy"] + ("-groups" if "group_size" in p else ""),
)
def test_oracle_generator_equals_the_policy_package_run_in_it(hf_llama, params):
    prompt = list(range(3, 3 + 7 * 64 + 5))  # the last chunk is shorter than every window
    config = KVPolicyConfig(**{k: v for k, v in params.items() if v is not None})
    want = generate(hf_llama, prompt, config, 8)
    got = policy_generate(hf_llama, prompt, config, 8)
    assert got == want
    policy = make_policy(config, 4)
    assert want.kept_per_layer == [policy.layout.layer_budget(layer, len(prompt)) for layer in range(4)]
