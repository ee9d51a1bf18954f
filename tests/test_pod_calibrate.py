"""PoD layer groups: the `groups` field, the divergence math, and `kvcomp-vllm pod-calibrate` on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.cli import main
from kvcomp_vllm.config import load_preset
from kvcomp_vllm.policies import incompatibility, make_policy
from kvcomp_vllm.pod.divergence import distant_distribution, group_layers, js_divergence, members, threshold_for


def test_groups_field_gives_owners_tiers_and_is_validated():
    config = KVPolicyConfig(policy="pod", recent=8, groups=[[3, 0], [1], [2, 4, 5]])
    config.check_model(6)
    policy = make_policy(config, 6)
    assert [policy.layout.owner_layer(layer) for layer in range(6)] == [0, 1, 2, 0, 2, 2]
    assert [policy.layout.budget_tier(layer) for layer in range(6)] == [0, 0, 0, 1, 1, 1]
    assert config.pod_groups(6) == ((0, 3), (1,), (2, 4, 5))
    assert KVPolicyConfig(policy="pod", group_size=2).pod_groups(4) == ((0, 1), (2, 3))
    for groups, fault in [([[0, 1], [1, 2, 3]], "exactly once"), ([[0, 1], [2]], "exactly once"),
                          ([[0, 1, 2, 3], []], "exactly once")]:
        with pytest.raises(ValueError, match=fault):
            KVPolicyConfig(policy="pod", groups=groups).check_model(4)
    with pytest.raises(ValueError, match="give one of them"):
        KVPolicyConfig(policy="pod", groups=[[0, 1]], group_size=2).check_model(2)
    with pytest.raises(ValidationError):
        KVPolicyConfig(policy="pod", groups=[["0", 1]])  # strict items
    with pytest.raises(ValidationError, match="at most 1024 layers"):
        KVPolicyConfig(policy="pod", groups=[[5000]])
    with pytest.raises(ValidationError, match="not a parameter of policy 'snapkv'"):
        KVPolicyConfig(policy="snapkv", budget=64, groups=[[0]])


def test_a_request_cannot_change_the_servers_pod_groups():
    server = make_policy(KVPolicyConfig(policy="pod", groups=[[0, 2], [1, 3]]), 4)
    same_tiers = make_policy(KVPolicyConfig(policy="pod", groups=[[0, 3], [1, 2]]), 4)
    assert "layer groups (groups, group_size) are engine-wide" in incompatibility(server, same_tiers)
    assert incompatibility(server, make_policy(KVPolicyConfig(policy="pod", groups=[[2, 0], [1, 3]]), 4)) is None


def test_js_divergence_known_values():
    p = torch.tensor([1.0, 0.0])
    assert float(js_divergence(p, torch.tensor([0.0, 1.0]))) == pytest.approx(math.log(2))
    assert float(js_divergence(p, p)) == 0.0
    q = torch.tensor([0.5, 0.5])
    want = 0.5 * (math.log(1 / 0.75)) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert float(js_divergence(p, q)) == pytest.approx(want)


def test_distant_distribution_is_the_window_queries_attention_over_distant_keys():
    torch.manual_seed(0)
    q, k = torch.randn(4, 20, 8), torch.randn(2, 20, 8)
    got = distant_distribution(q, k, 0.3, sink=2, recent=5, window=3)
    assert got.shape == (2, 13) and torch.allclose(got.sum(-1), torch.ones(2))
    # KV head 1 serves query heads 2 and 3; each query's softmax over keys 2..14 only.
    rows = [torch.softmax(q[h, t] @ k[1, 2:15].T * 0.3, -1) for h in (2, 3) for t in (17, 18, 19)]
    assert torch.allclose(got[1], torch.stack(rows).mean(0), atol=1e-6)
    assert distant_distribution(q, k, 0.3, sink=10, recent=10, window=3) is None


DIV = torch.tensor([[0.0, 0.1, 0.5, 0.2],
                    [0.1, 0.0, 0.3, 0.4],
                    [0.5, 0.3, 0.0, 0.1],
                    [0.2, 0.4, 0.1, 0.0]], dtype=torch.float64)


def test_grouping_by_threshold_consecutive_or_any_order():
    assert group_layers(DIV, 0.15, 4) == ((0, 1), (2, 3))
    assert group_layers(DIV, 0.25, 4, consecutive=False) == ((0, 1), (2, 3))  # 3 joins the closer owner, 2
    far = DIV.clone()
    far[2, 3] = far[3, 2] = 0.3  # now 3 is closer to 0 than to 2
    assert group_layers(far, 0.25, 4, consecutive=False) == ((0, 1, 3), (2,))
    assert group_layers(far, 0.25, 4) == ((0, 1), (2,), (3,))
    assert group_layers(far, 0.35, 2, consecutive=False) == ((0, 1), (2, 3))  # (0, 1) is full
    assert group_layers(DIV, 0.0, 4) == ((0,), (1,), (2,), (3,))
    assert members(group_layers(DIV, 1.0, 4)) == 3
    assert threshold_for(DIV, 3, 4) == 0.5 and threshold_for(DIV, 2, 4) == 0.1
    assert threshold_for(DIV, 2, 4, consecutive=False) == 0.1


def calibrate(tmp_path, model_dir, name, *extra):
    out = tmp_path / name
    args = ["pod-calibrate", str(model_dir), "--out", str(out), "--prompts", "2", "--length", "500",
            "--recent", "80", "--window", "16", *extra]
    assert main(args) == 0
    return json.loads(out.read_text()), out


def test_calibration_is_deterministic_well_formed_and_a_preset(tmp_path, tiny_llama_dir):
    first, path = calibrate(tmp_path, tiny_llama_dir, "a.json")
    again, _ = calibrate(tmp_path, tiny_llama_dir, "b.json")
    assert first == again
    notes = first["calibration"]
    assert first["policy"] == "pod" and first["sink"] == 4 and first["recent"] == 80
    assert sorted(layer for g in first["groups"] for layer in g) == [0, 1, 2, 3]
    assert all(g == sorted(g) and g == list(range(g[0], g[0] + len(g))) for g in first["groups"])  # consecutive
    assert notes["members"] == sum(len(g) - 1 for g in first["groups"]) == 3  # 70% of 4 layers, rounded
    div = torch.tensor(notes["divergence"])
    assert div.shape == (4, 4) and torch.allclose(div, div.T) and bool((div.diagonal() == 0).all())
    assert bool((div[~torch.eye(4, dtype=torch.bool)] > 0).all()) and float(div.max()) <= math.log(2)
    assert notes["per"] == "layer" and notes["prompts"] == 2
    config = load_preset(path)
    assert config.groups == tuple(map(tuple, first["groups"])) and config.recent == 80
    # Another seed reads other prompts: other measurements.
    other, _ = calibrate(tmp_path, tiny_llama_dir, "c.json", "--seed", "1")
    assert other["calibration"]["divergence"] != notes["divergence"]


def test_calibration_threshold_and_any_order(tmp_path, tiny_llama_dir):
    strict, _ = calibrate(tmp_path, tiny_llama_dir, "t.json", "--threshold", "0")
    assert strict["groups"] == [[0], [1], [2], [3]]
    loose, _ = calibrate(tmp_path, tiny_llama_dir, "l.json", "--any-order", "--members", "2", "--max-group", "2")
    div = torch.tensor(loose["calibration"]["divergence"], dtype=torch.float64)
    assert [len(g) for g in loose["groups"]] == [2, 2]
    assert loose["groups"] == [list(g) for g in group_layers(div, loose["calibration"]["threshold"], 2, False)]
