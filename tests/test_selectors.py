"""Selectors alone: choosers, the window force-kept, per-layer budgets, layer groups and PoD key sharing."""

from __future__ import annotations

import torch

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import LayerPlan, PromptView, RequestCompressor
from kvcomp_vllm.policies.base import KVPolicy
from kvcomp_vllm.policies.pod import PoDLayout, SharedKeys
from kvcomp_vllm.policies.selector import KeepAll, KeepWindow, LayerGroups, PerLayerBudget, TopK, ViewSelector
from kvcomp_vllm.policies.streaming import SinkAndRecent
from kvcomp_vllm.policies.windowkv_per_head import PerHeadWindows

CPU = torch.device("cpu")


def scored(base, n):
    """A view of `n` tokens whose scores, for any window w, are the first n - w columns of `base`."""
    base = torch.as_tensor(base, dtype=torch.float64)
    return PromptView(n, base.shape[0], CPU, lambda w: base[:, : n - w])


def kept(plan):
    return plan.keep.tolist()


class Budgets:
    """A layout stub: a fixed budget per layer, whatever the prompt."""

    def __init__(self, *budgets):
        self.budgets = budgets

    def layer_budget(self, layer, prompt_len):
        return self.budgets[layer]


class Recorder(ViewSelector):
    """A view selector that keeps the first `budget` tokens and records the budgets it was given."""

    def __init__(self):
        self.seen = []

    def select(self, prompt, budget, heads=None):
        self.seen.append(budget)
        if budget >= prompt.prompt_len:
            return LayerPlan(keep=None)
        return LayerPlan(keep=torch.arange(budget).expand(prompt.num_kv_heads, -1))


def test_top_k_ranks_pooled_scores_ties_to_the_earlier_position():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [0.9, 0.0, 0.0, 0.9]])
    assert TopK(1, "max").choose(scores, 2).tolist() == [[1, 2], [0, 3]]
    assert TopK(3, "max").pooled(scores)[0].tolist() == [0.5, 0.5, 0.5, 0.5]


def test_keep_window_force_keeps_the_window_around_its_chooser():
    base = [[0.0, 0.9, 0.1, 0.8, 0.2, 0, 0, 0]]
    select = KeepWindow(TopK(1, "max"), window=3)
    assert select.observation_window == 3 and not select.spans_heads
    assert kept(select.select(scored(base, 8), 5)) == [[1, 3, 5, 6, 7]]
    assert select.select(scored(base, 8), 8).keep is None
    assert select.head_statistics(scored(base, 8), 5) is None  # top-k is head-local


def test_sink_and_recent_needs_no_scores():
    plan = SinkAndRecent(2).select(PromptView(10, 2, CPU, None), 5)
    assert kept(plan) == [[0, 1, 7, 8, 9]] * 2


def test_per_layer_budget_reads_the_layout_for_the_whole_prompt():
    inner = Recorder()
    select = PerLayerBudget(Budgets(6, 3, 50), inner)
    view = PromptView(10, 1, CPU, None, context_len=100)  # a compression round inside a longer prompt
    assert [select.select(layer, view).kept_tokens(10) for layer in range(3)] == [6, 3, 10]
    assert inner.seen == [6, 3, 10]  # at most the view's tokens


def test_layer_groups_reuse_the_first_layers_plan():
    inner = Recorder()
    selector = LayerGroups(PerLayerBudget(Budgets(4, 9, 5, 9), inner), group_size=2)
    assert [selector.source_layer(layer) for layer in range(4)] == [0, 0, 2, 2]
    compressor = RequestCompressor(KVPolicy(KVPolicyConfig(policy="full"), 4, None, selector))
    plans = [compressor.plan(layer, PromptView(10, 1, CPU, None)) for layer in range(4)]
    assert plans[1] is plans[0] and plans[3] is plans[2] and inner.seen == [4, 5]


def test_pod_key_sharing_derives_a_members_plan_from_its_owners():
    config = KVPolicyConfig(policy="pod", select="snapkv", budget=8, sink=2, recent=3, window=2)
    layout = PoDLayout(config, 2)
    owner = PerLayerBudget(layout, KeepAll())  # any owner selector: its plan is what a member follows
    shared = SharedKeys(layout, owner, follow=True)
    assert shared.source_layer(1) == 0
    owner_plan = LayerPlan(keep=torch.tensor([[0, 1, 4, 6, 7, 9, 10, 11], [0, 1, 3, 5, 8, 9, 10, 11]]))
    member = shared.derive(1, PromptView(12, 2, CPU, None), owner_plan)
    assert member.key_owner == 0 and kept(member) == [[0, 1, 9, 10, 11]] * 2
    assert member.shared.tolist() == [[4, 6, 7], [3, 5, 8]]  # the distant tokens the owner kept, per head
    plain = SharedKeys(PoDLayout(KVPolicyConfig(policy="pod", sink=2, recent=3), 2), owner, follow=False)
    assert plain.source_layer(1) == 1
    assert plain.select(1, PromptView(12, 2, CPU, None)).shared.tolist() == list(range(2, 9))


def test_keep_window_gathers_its_choosers_head_statistics_where_the_chooser_spans_heads():
    select = KeepWindow(PerHeadWindows(KVPolicyConfig(policy="windowkv-per-head", budget=64)), window=2)
    base = torch.rand(3, 40)
    assert select.spans_heads and select.head_statistics(scored(base, 40), 10).shape == (3, 1)
    assert select.head_statistics(scored(base, 40), 40) is None  # kept whole: nothing to gather
