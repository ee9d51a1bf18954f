"""PoD combined with SnapKV selection (`select: snapkv`): the plans by hand, and the member layout on
paged caches (owner compacted, member values packed) against dense attention with the owner's keys."""

from __future__ import annotations

import pytest
import torch

from kvcomp_kernels import move_tokens_reference_, paged_decode_reference
from kvcomp_kernels.attention import causal_attention, observation_scores
from kvcomp_kernels.paged_torch import read_tokens
from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.cache_layout import MemberLayout, move_sources
from kvcomp_vllm.policies import LayerPlan, PromptView, RequestCompressor, apply_plan, make_policy
from test_cache_layout import HKV, PACKINGS, paged

D, H = 4, 4


def layer(n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(HKV, n, D, generator=g, dtype=torch.float64),
            torch.randn(H, n, D, generator=g, dtype=torch.float64))


def test_owner_keeps_the_top_distant_tokens_and_members_their_values():
    config = KVPolicyConfig(policy="pod", select="snapkv", budget=14, sink=2, recent=6, window=4, pool_size=1)
    policy = make_policy(config, 4)
    n = 30
    assert [policy.layout.layer_budget(i, n) for i in range(4)] == [14, 8, 14, 8]
    assert [policy.layout.layer_slots(i, n) for i in range(4)] == [14, 11, 14, 11]  # members: 8 + ceil(6 / 2)
    assert policy.layout.distant_span(n) == (2, 6) and policy.selector.observation_window == 4
    assert make_policy(KVPolicyConfig(policy="pod"), 4).selector.observation_window == 0
    keys, queries = layer(n, 0)
    compressor = RequestCompressor(policy)
    owner = compressor.plan(0, PromptView.dense(keys, queries[:, -4:], 0.5))
    scores = observation_scores(keys, queries[:, -4:], 0.5)[:, 2 : n - 6]  # distant tokens 2..23
    for head in range(HKV):
        chosen = (scores[head].topk(6).indices + 2).sort().values.tolist()
        assert owner.keep[head].tolist() == [0, 1, *chosen, *range(24, 30)]
    other_keys, other_queries = layer(n, 1)  # a member plans from its owner, whatever its own scores
    member = compressor.plan(1, PromptView.dense(other_keys, other_queries[:, -4:], 0.5))
    assert member.key_owner == 0 and member.keep.tolist() == [[0, 1, *range(24, 30)]] * HKV
    assert torch.equal(member.shared, owner.keep[:, 2:8])
    # A prompt within the owner's budget: the owner keeps all, the member shares every distant key.
    short = RequestCompressor(policy)
    keys, queries = layer(14, 2)
    assert short.plan(0, PromptView.dense(keys, queries[:, -4:], 0.5)).keep is None
    shared = short.plan(1, PromptView.dense(keys, queries[:, -4:], 0.5)).shared
    assert shared.tolist() == list(range(2, 8))


def test_a_member_whose_owner_was_not_planned_shares_every_distant_key():
    policy = make_policy(KVPolicyConfig(policy="pod", select="snapkv", budget=1.0, sink=2, recent=6, window=4), 2)
    keys, queries = layer(30, 3)
    # The owner keeps all, so its caller never plans it.
    plan = RequestCompressor(policy).plan(1, PromptView.dense(keys, queries[:, -4:], 0.5))
    assert plan.shared.tolist() == list(range(2, 24)) and plan.keep.shape == (HKV, 8)


@pytest.mark.parametrize("key_layout,value_layout", PACKINGS)
@pytest.mark.parametrize("chosen_count", [5, 6])
def test_member_decode_reads_the_chosen_keys_from_the_compacted_owner(chosen_count, key_layout, value_layout):
    g = torch.Generator().manual_seed(chosen_count)
    sink, recent, later, n = 2, 5, 3, 30
    k, v, owner_k, owner_v = (torch.randn(HKV, n + later, D, generator=g, dtype=torch.float64) for _ in range(4))
    proximal = torch.tensor([0, 1, *range(n - recent, n)])
    chosen = torch.stack([torch.randperm(n - sink - recent, generator=g)[:chosen_count].sort().values + sink
                          for _ in range(HKV)])
    owner_plan_keep = torch.cat([proximal[:sink].expand(HKV, -1), chosen, proximal[sink:].expand(HKV, -1)], 1)
    blocks, owner_blocks = torch.tensor([7, 2, 9, 0, 4]), torch.tensor([3, 6, 8, 10, 1])
    key_cache, value_cache = paged(k, blocks, key_layout), paged(v, blocks, value_layout)
    owner_keys, owner_values = paged(owner_k, owner_blocks, key_layout), paged(owner_v, owner_blocks, value_layout)
    policy = make_policy(KVPolicyConfig(policy="pod", select="snapkv", budget=sink + recent + chosen_count,
                                        sink=sink, recent=recent, window=4), 2)
    owner_plan = LayerPlan(keep=owner_plan_keep)
    plan = policy.selector.derive(1, PromptView(n, HKV, torch.device("cpu"), None), owner_plan)
    for pair, table, p in [((owner_keys, owner_values), owner_blocks, owner_plan), ((key_cache, value_cache), blocks, plan)]:
        sources = move_sources(p, torch.arange(n, n + later))
        move_tokens_reference_(*pair, table[None], sources[None], torch.tensor([sources.shape[-1]], dtype=torch.int32))
    start, count = policy.layout.distant_span(n)
    assert (start, count) == (sink, chosen_count)
    owner_chosen = owner_k.gather(1, chosen[..., None].expand(-1, -1, D))
    assert torch.equal(read_tokens(owner_keys, owner_blocks, sink + count)[:, sink:], owner_chosen)
    layout = MemberLayout(owner=0, proximal=proximal.numel(), distant_start=start, distant=count)
    query = torch.randn(2, H, D, generator=g, dtype=torch.float64)
    rows = torch.tensor([layout.decode_row(later - 1 + t) for t in range(2)], dtype=torch.int32)
    got = paged_decode_reference(query, key_cache, value_cache, blocks.expand(2, -1), rows, int(rows[:, 0].max()),
                                 0.5, owner_key_cache=owner_keys, owner_block_tables=owner_blocks.expand(2, -1))
    dense_k, dense_v = apply_plan(plan, k[:, :n], v[:, :n], owner_keys=owner_k[:, :n])
    dense_k, dense_v = torch.cat([dense_k, k[:, n:]], 1), torch.cat([dense_v, v[:, n:]], 1)
    want = causal_attention(query.transpose(0, 1)[None], dense_k[None], dense_v[None], 0.5)[0]
    assert torch.allclose(got, want, atol=1e-12)
