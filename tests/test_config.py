"""KVPolicyConfig validation: accepted values, and error messages that name the field."""

import re

import pytest
from pydantic import ValidationError

from kvcomp_vllm import KVPolicyConfig, load_preset
from kvcomp_vllm.config import POLICY_NAMES
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def error_text(**kwargs) -> str:
    with pytest.raises(ValidationError) as err:
        KVPolicyConfig(**kwargs)
    return str(err.value)


def test_unknown_policy_lists_allowed_values():
    text = error_text(policy="h2o", budget=64)
    assert "policy" in text
    for name in POLICY_NAMES:
        assert f"'{name}'" in text


def test_budget_below_window_is_rejected():
    text = error_text(policy="snapkv", budget=16, window=32)
    assert "budget: 16 tokens is less than window (32) for policy 'snapkv'" in text


@pytest.mark.parametrize("ratio", [1.5, 2048.0])
def test_ratio_above_one_is_rejected(ratio):
    assert f"budget: a ratio must lie in (0, 1], got {ratio}" in error_text(policy="pyramid", budget=ratio)


@pytest.mark.parametrize("budget", [0, -5, 0.0, -0.5])
def test_zero_or_negative_budget_must_be_positive(budget):
    text = error_text(policy="pyramid", budget=budget)
    assert f"budget: must be positive (a token count, or a ratio in (0, 1]), got {budget}" in text


@pytest.mark.parametrize("field, value", [("budget", "64"), ("budget", True), ("window", "32"), ("pool_size", 7.0),
                                          ("beta", "20"), ("window_sizes", ["8", 32]), ("pooling", 1)])
def test_types_are_strict_not_coerced(field, value):
    policy = {"beta": "pyramid", "window_sizes": "windowkv-per-head"}.get(field, "snapkv")
    settings = {"policy": policy, "budget": 64, field: value}
    with pytest.raises(ValidationError) as err:
        KVPolicyConfig(**settings)
    assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("field, value, message", [
    ("pool_size", 2147483649, "less than or equal to 255"),
    ("window", 1 << 40, "less than or equal to 16777216"),
    ("beta", 1e308, "less than or equal to 1000"),
    ("budget", 1 << 40, "budget: 1099511627776 tokens is more than any context (16777216 tokens)"),
    ("window_size", 1 << 40, "window_size: window sizes must lie in [1, 16777216], got 1099511627776"),
    ("window_sizes", (8, 1 << 40), "window_sizes: window sizes must lie in [1, 16777216], got 1099511627776"),
    ("prefill_chunk", 1 << 40, "less than or equal to 16777216"),
    ("tiers", 1 << 40, "less than or equal to 1024"),
])
def test_every_number_is_bounded_before_the_model_is_known(field, value, message):
    policy = {"beta": "pyramid", "tiers": "pyramid", "window_size": "windowkv", "window_sizes": "windowkv-per-head"}.get(field, "snapkv")
    settings = {"policy": policy, "budget": 64, field: value}
    assert message in error_text(**settings)


@pytest.mark.parametrize("settings, message", [
    (dict(policy="snapkv", budget=5000, window=5000), "window: 5000 tokens is larger than the model's context (4096 tokens)"),
    (dict(policy="snapkv", budget=64, prefill_chunk=5000), "prefill_chunk: 5000 tokens is larger"),
    (dict(policy="pod", recent=5000), "recent: 5000 tokens is larger"),
    (dict(policy="streaming", budget=5001, sink=5000), "sink: 5000 tokens is larger"),
    (dict(policy="windowkv", budget=64, window_size=5000), "window_size: 5000 tokens is larger"),
    (dict(policy="snapkv", budget=0.001), "budget: ratio 0.001 keeps 5 of 4096 prompt tokens, fewer than window (32)"),
])
def test_token_counts_are_bounded_by_the_context(settings, message):
    with pytest.raises(ValueError) as err:
        KVPolicyConfig(**settings).check_model(num_layers=4, max_model_len=4096)
    assert message in str(err.value)


def test_a_ratio_keeping_fewer_than_the_window_of_a_prompt_is_refused():
    config = KVPolicyConfig(policy="snapkv", budget=0.01)
    config.check_prompt(3200)  # keeps 32
    with pytest.raises(ValueError, match=r"kv_budget: ratio 0.01 keeps 31 of 3100 prompt tokens, fewer than kv_window \(32\)"):
        config.check_prompt(3100, prefix="kv_")
    config.check_prompt(20)  # shorter than the window: kept whole


def test_request_errors_name_fields_as_sent():
    from kvcomp_vllm.config import request_config

    server = KVPolicyConfig(policy="snapkv", budget=64)
    with pytest.raises(ValueError, match="kv_budget: 8 tokens is less than kv_window"):
        request_config(server, {"budget": 8}, prefix="kv_")
    with pytest.raises(ValueError, match=r"kv_beta: not a parameter of policy 'snapkv' \(its parameters: kv_budget"):
        request_config(server, {"beta": 2.0}, prefix="kv_")


def test_streaming_budget_must_exceed_sink():
    assert "less than sink + 1 (5)" in error_text(policy="streaming", budget=4, sink=4)


def test_budget_required_for_selection_policies():
    for policy in ("streaming", "snapkv", "pyramid", "windowkv"):
        assert f"budget: policy '{policy}' needs a budget" in error_text(policy=policy)


def test_parameter_of_another_policy_is_rejected():
    text = error_text(policy="snapkv", budget=64, beta=10)
    assert "beta: not a parameter of policy 'snapkv'" in text
    assert "budget, cache_prefix, pool_size, pooling, prefill_chunk, window" in text
    assert "budget: not a parameter of policy 'full'" in error_text(policy="full", budget=0.1)


def test_even_pool_size_and_unknown_field():
    assert "pool_size: must be odd" in error_text(policy="snapkv", budget=64, pool_size=4)
    assert "budgett" in error_text(policy="snapkv", budgett=64)


def test_group_size_must_divide_layers():
    config = KVPolicyConfig(policy="pod", group_size=3)
    with pytest.raises(ValueError, match=r"group_size: 3 does not divide the model's 4 layers; choose one of \[1, 2, 4\]"):
        config.check_model(num_layers=4)
    config.check_model(num_layers=6)


def test_pyramid_tiers_cannot_outnumber_layers():
    config = KVPolicyConfig(policy="pyramid", budget=0.1, tiers=6)
    with pytest.raises(ValueError, match=r"tiers: 6 for a model of 4 layers \(a tier holds one layer or more\); use at most 4"):
        config.check_model(num_layers=4)
    config.check_model(num_layers=6)
    assert "tiers: not a parameter of policy 'snapkv'" in error_text(policy="snapkv", budget=64, tiers=2)


def test_budget_larger_than_context_is_rejected():
    config = KVPolicyConfig(policy="snapkv", budget=8192)
    with pytest.raises(ValueError, match=r"budget: 8192 tokens is larger than the model's context \(4096 tokens\)"):
        config.check_model(num_layers=4, max_model_len=4096)


def test_resolve_budget_counts_and_ratios():
    assert KVPolicyConfig(policy="snapkv", budget=64).resolve_budget(1000) == 64
    assert KVPolicyConfig(policy="snapkv", budget=0.1).resolve_budget(1000) == 100
    assert KVPolicyConfig(policy="snapkv", budget=0.1).resolve_budget(1001) == 101  # ratios round up
    assert KVPolicyConfig(policy="snapkv", budget=1.0).resolve_budget(77) == 77


def test_presets_load_and_validate():
    presets = sorted(CONFIGS.glob("*.yaml"))
    assert {p.name for p in presets} >= {"pyramid-10pct.yaml", "snapkv-2k.yaml", "windowkv-12pct.yaml", "pod-35pct.yaml"}
    for path in presets:
        config = load_preset(path)
        assert config.policy == path.name.split("-")[0]
    assert load_preset(CONFIGS / "snapkv-2k.yaml").budget == 2048


def test_preset_must_be_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- policy\n")
    with pytest.raises(ValueError, match="a preset must be a YAML mapping"):
        load_preset(bad)


def test_request_config_overrides_the_server_settings():
    from kvcomp_vllm.config import request_config

    server = KVPolicyConfig(policy="pyramid", budget=0.1, beta=10)
    assert request_config(server, None) is server
    assert request_config(server, {"budget": 512}) == KVPolicyConfig(policy="pyramid", budget=512, beta=10)
    assert request_config(server, {"policy": "snapkv", "budget": 0.2}) == KVPolicyConfig(policy="snapkv", budget=0.2)
    with pytest.raises(ValidationError, match="budget: a ratio must lie in"):
        request_config(server, {"budget": 3.5})
    with pytest.raises(ValueError, match="per-request settings must be an object"):
        request_config(server, "snapkv")


def test_which_request_policies_a_server_can_hold():
    from kvcomp_vllm.policies import incompatibility, make_policy

    def policy(**kw):
        return make_policy(KVPolicyConfig(**kw), 4)

    pyramid, snapkv = policy(policy="pyramid", budget=0.1), policy(policy="snapkv", budget=64)
    assert incompatibility(pyramid, snapkv) is None  # per-layer groups hold any per-layer budgets
    assert incompatibility(pyramid, policy(policy="full")) is None
    assert "needs per-layer budgets that this server's KV groups (policy 'snapkv') cannot hold" in incompatibility(
        snapkv, pyramid
    )
    stepped = policy(policy="pyramid", budget=0.1, tiers=2)
    assert incompatibility(pyramid, stepped) is None  # per-layer groups hold two steps too
    assert "policy 'pyramid' needs per-layer budgets that this server's KV groups (policy 'pyramid')" in (
        incompatibility(stepped, pyramid)
    )
    assert "engine-wide only; this server runs 'snapkv'" in incompatibility(snapkv, policy(policy="pod"))
    assert "engine-wide only; this server runs 'pod'" in incompatibility(policy(policy="pod"), snapkv)


def test_windowkv_forms_take_their_own_parameters():
    assert "window_size: windowkv tiles windows of one size" in error_text(policy="windowkv", budget=64, window_size="auto")
    assert "window_sizes: not a parameter of policy 'windowkv'" in error_text(policy="windowkv", budget=64, window_sizes=(4, 8))
    assert "window_scoring: not a parameter of policy 'windowkv-per-head'" in error_text(
        policy="windowkv-per-head", budget=64, window_scoring="max"
    )
    assert "window_scoring" in error_text(policy="windowkv", budget=64, window_scoring="mean")
    KVPolicyConfig(policy="windowkv-per-head", budget=64, window_size="auto")
    assert KVPolicyConfig(policy="windowkv", budget=64, window_scoring="average").describe() == (
        "windowkv budget=64 concentration_threshold=0.5 window=32 window_scoring=average"
    )
    with pytest.raises(ValueError, match=r"group_size: 8 does not divide the model's 12 layers"):
        KVPolicyConfig(policy="windowkv", budget=64, group_size=8).check_model(12)
    KVPolicyConfig(policy="windowkv", budget=64).check_model(30)  # the default group: 6 layers


@pytest.fixture
def deprecations(monkeypatch):
    """The deprecation warnings KVPolicyConfig logs, each process-wide `once` reset for the test."""
    import logging

    from kvcomp_vllm import config

    monkeypatch.setattr(config, "_WARNED", set())
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    config.logger.addHandler(handler)
    yield records
    config.logger.removeHandler(handler)


def test_kernel_is_a_deprecated_name_of_pool_size(deprecations):
    old = KVPolicyConfig(policy="snapkv", budget=64, kernel=5)
    assert old == KVPolicyConfig(policy="snapkv", budget=64, pool_size=5)
    assert old.model_dump(exclude_unset=True) == {"policy": "snapkv", "budget": 64, "pool_size": 5}
    assert old.describe() == "snapkv budget=64 pool_size=5 pooling=avg window=32"
    KVPolicyConfig(policy="pyramid", budget=0.1, kernel=3)
    assert deprecations == [
        "kvcomp: kernel (--kv-kernel, kv_kernel) is deprecated and will be removed in the next release: "
        "use pool_size (--kv-pool-size, kv_pool_size), the same setting"
    ]  # once per process
    KVPolicyConfig(policy="snapkv", budget=64, pool_size=5)
    assert len(deprecations) == 1


def test_errors_name_pool_size_as_it_was_given(deprecations):
    from kvcomp_vllm.config import request_config

    assert "kernel: must be odd so pooling keeps positions centred, got 4" in error_text(policy="snapkv", budget=64, kernel=4)
    assert "kernel: not a parameter of policy 'streaming'" in error_text(policy="streaming", budget=64, kernel=5)
    with pytest.raises(ValidationError) as err:
        KVPolicyConfig(policy="snapkv", budget=64, kernel=2147483649)
    assert err.value.errors()[0]["loc"] == ("kernel",)
    server = KVPolicyConfig(policy="snapkv", budget=64, pool_size=15)
    with pytest.raises(ValueError, match="kv_kernel: must be odd"):
        request_config(server, {"kernel": 4}, prefix="kv_")
    with pytest.raises(ValueError, match="kv_pool_size: must be odd"):
        request_config(server, {"pool_size": 4}, prefix="kv_")
    with pytest.raises(ValueError, match=r"kv_kernel: not a parameter of policy 'streaming' \(its parameters: kv_budget"):
        request_config(server, {"policy": "streaming", "budget": 64, "kernel": 5}, prefix="kv_")
    with pytest.raises(ValueError, match=r"kv_beta: not a parameter of policy 'snapkv' \(its parameters: kv_budget, "
                       r"kv_cache_prefix, kv_pool_size, kv_pooling"):
        request_config(server, {"kernel": 5, "beta": 2.0}, prefix="kv_")


def test_kernel_and_pool_size_together_must_agree(deprecations):
    from kvcomp_vllm.config import new_names, request_config

    both = "kernel, pool_size: both given, with different values (3 and 5); kernel is the deprecated name of pool_size"
    assert both in error_text(policy="snapkv", budget=64, kernel=3, pool_size=5)
    assert KVPolicyConfig(policy="snapkv", budget=64, kernel=5, pool_size=5).pool_size == 5
    assert "pool_size: must be odd" in error_text(policy="snapkv", budget=64, kernel=4, pool_size=4)
    server = KVPolicyConfig(policy="snapkv", budget=64, pool_size=15)
    assert request_config(server, {"kernel": 5}, prefix="kv_").pool_size == 5  # replaces the server's pool_size
    with pytest.raises(ValueError, match="kv_kernel, kv_pool_size: both given, with different values"):
        request_config(server, {"kernel": 3, "pool_size": 5}, prefix="kv_")
    assert new_names({"kernel": 5, "pooling": "max"}) == {"pool_size": 5, "pooling": "max"}
    with pytest.raises(ValueError, match="kernel, pool_size: both given"):
        new_names({"kernel": 5, "pool_size": 7})


def test_presets_may_still_say_kernel(tmp_path, deprecations):
    preset = tmp_path / "old.yaml"
    preset.write_text("policy: snapkv\nbudget: 2048\nkernel: 15\n")
    assert load_preset(preset) == load_preset(CONFIGS / "snapkv-2k.yaml")
    assert len(deprecations) == 1
    preset.write_text("policy: snapkv\nbudget: 2048\nkernel: 15\npool_size: 7\n")
    with pytest.raises(ValueError, match="kernel, pool_size: both given"):
        load_preset(preset)


def test_flags_take_kv_pool_size_and_the_deprecated_kv_kernel(deprecations):
    import argparse

    from kvcomp_vllm.vllm_integration import engine_args

    parser = argparse.ArgumentParser()
    engine_args.add_kv_arguments(parser)

    def settings(*argv):
        return engine_args.settings_from_args(parser.parse_args(["--kv-policy", "snapkv", "--kv-budget", "64", *argv]))

    assert settings("--kv-pool-size", "5") == settings("--kv-kernel", "5") == {"policy": "snapkv", "budget": 64, "pool_size": 5}
    assert len(deprecations) == 1
    preset = ["--kv-config", str(CONFIGS / "snapkv-2k.yaml")]
    assert settings(*preset, "--kv-kernel", "5")["pool_size"] == 5  # over the preset's pool_size: 15
    with pytest.raises(ValueError, match="invalid kvcomp settings: kernel, pool_size: both given"):
        settings("--kv-kernel", "5", "--kv-pool-size", "7")
    with pytest.raises(ValueError, match="invalid kvcomp settings: kernel: must be odd"):
        settings("--kv-kernel", "4")


def test_cache_prefix_is_auto_or_a_bounded_token_count():
    assert KVPolicyConfig(policy="snapkv", budget=64).cache_prefix == "auto"
    assert KVPolicyConfig(policy="pod", cache_prefix=512).cache_prefix == 512
    for bad, text in [(True, "cache_prefix.int"), ("64", "cache_prefix.int"), (1.5, "cache_prefix.int"),
                      ("all", "cache_prefix.literal"), (-1, "cache_prefix: must be 'auto' or a token count in [0, 16777216], got -1")]:
        with pytest.raises(ValueError, match=re.escape(text)):
            KVPolicyConfig(policy="snapkv", budget=64, cache_prefix=bad)
    with pytest.raises(ValueError, match=r"cache_prefix: not a parameter of policy 'full' \(its parameters: none\)"):
        KVPolicyConfig(policy="full", cache_prefix=64)
    with pytest.raises(ValueError, match=r"kv_cache_prefix: 5000 tokens is larger than the model's context \(4096 tokens\)"):
        KVPolicyConfig(policy="snapkv", budget=64, cache_prefix=5000).check_model(4, 4096, prefix="kv_")


def test_kv_cache_prefix_flag_takes_auto_or_a_count():
    import argparse

    from kvcomp_vllm.vllm_integration.engine_args import add_kv_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_kv_arguments(parser)
    for value, want in [("auto", "auto"), ("1024", 1024)]:
        args = parser.parse_args(["--kv-policy", "snapkv", "--kv-budget", "64", "--kv-cache-prefix", value])
        assert settings_from_args(args)["cache_prefix"] == want
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache-prefix", "half"])
