"""Budget layouts alone: slots, tiers, compression points, evictions and peaks from integers, no tensors."""

from __future__ import annotations

import ast
from pathlib import Path

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies.layout import BudgetLayout, FullLayout
from kvcomp_vllm.policies.pod import PoDLayout
from kvcomp_vllm.policies.protected import ProtectedPrefix
from kvcomp_vllm.policies.pyramid import PyramidLayout
from kvcomp_vllm.policies.windowkv import GroupLayout


def test_layout_module_needs_no_tensors():
    tree = ast.parse(Path(BudgetLayout.__module__.replace(".", "/") + ".py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("torch" in name for name in imported)


def test_uniform_budget_is_at_least_the_window_and_at_most_the_prompt():
    layout = BudgetLayout(KVPolicyConfig(policy="snapkv", budget=0.01, window=16), 4)
    assert [layout.layer_budget(layer, 1000) for layer in range(4)] == [16] * 4  # 1% is 10 < window
    assert layout.layer_budget(0, 10) == 10
    assert BudgetLayout(KVPolicyConfig(policy="streaming", budget=0.01), 4).layer_budget(0, 50) == 1  # no window
    assert FullLayout(KVPolicyConfig(policy="full"), 4).layer_budget(3, 777) == 777
    assert layout.tier_layers() == {0: [0, 1, 2, 3]}


def test_compression_points_evictions_and_peak_with_prefill_chunks():
    layout = BudgetLayout(KVPolicyConfig(policy="snapkv", budget=64, window=8, prefill_chunk=128), 2)
    assert [layout.next_compression_point(300, p) for p in (0, 127, 128, 299)] == [128, 128, 256, 300]
    assert [layout.evicted_after(0, 300, p) for p in (100, 128, 256, 300)] == [0, 64, 192, 236]
    # Slots 64; the interior chunk holds 64 + 128, the last 64 + 44, decoding 64 + 4: the interior is the peak.
    assert layout.peak_slots(0, 300, 5) == 192
    assert BudgetLayout(KVPolicyConfig(policy="snapkv", budget=64, window=8), 2).peak_slots(0, 300, 5) == 300


def test_tiered_layouts_group_layers_by_budget():
    pyramid = PyramidLayout(KVPolicyConfig(policy="pyramid", budget=64, window=8, tiers=2), 4)
    assert pyramid.tier_layers() == {0: [0, 1], 1: [2, 3]}
    budgets = [pyramid.layer_budget(layer, 1000) for layer in range(4)]
    assert budgets[0] == budgets[1] > budgets[2] == budgets[3] and sum(budgets) == 4 * 64
    groups = GroupLayout(KVPolicyConfig(policy="windowkv", budget=64, window=8, group_size=2), 4)
    assert groups.tier_layers() == {0: [0, 1], 1: [2, 3]}
    assert groups.layer_budget(0, 1000) > groups.layer_budget(2, 1000)


def test_pod_layout_owners_keep_keys_members_pack_distant_values():
    pod = PoDLayout(KVPolicyConfig(policy="pod", sink=4, recent=60, group_size=2), 4)
    assert [pod.owner_layer(layer) for layer in range(4)] == [0, 0, 2, 2]
    assert pod.tier_layers() == {0: [0, 2], 1: [1, 3]}
    assert pod.distant_span(1000) == (4, 936)
    assert [pod.layer_slots(layer, 1000) for layer in range(2)] == [1000, 64 + 468]
    chosen = PoDLayout(KVPolicyConfig(policy="pod", select="snapkv", budget=100, sink=4, recent=60), 2)
    assert chosen.distant_span(1000) == (4, 36) and chosen.layer_budget(0, 1000) == 100


def test_protected_prefix_shifts_a_layout_past_the_raw_tokens():
    inner = BudgetLayout(KVPolicyConfig(policy="snapkv", budget=64, window=8, prefill_chunk=128), 2)
    layout = ProtectedPrefix(inner, 100)
    assert layout.layer_slots(0, 400) == 100 + 64
    assert layout.next_compression_point(400, 0) == 228
    assert layout.evicted_after(0, 400, 100) == 0 and layout.evicted_after(0, 400, 400) == 300 - 64
    assert layout.peak_slots(0, 400, 1) == 100 + inner.peak_slots(0, 300, 1)
    assert layout.tier_layers() == inner.tier_layers()
