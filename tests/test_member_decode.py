"""PoD member-decode buffers: each step's fill selects exactly its rows, and selected rows' `seq_lens` are cut."""

from __future__ import annotations

import torch

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.vllm_integration.member_decode import IDLE_ROW, MemberDecode, short_seq_lens


def test_buffers_exist_for_pod_only_with_its_member_layers():
    pod = MemberDecode.for_policy(make_policy(KVPolicyConfig(policy="pod", groups=[[0, 3], [1, 2]]), 4), 8, 100, "cpu")
    assert pod.owners == {3: 0, 2: 1} and pod.tier == 1 and pod.capacity == 8
    assert MemberDecode.for_policy(make_policy(KVPolicyConfig(policy="snapkv", budget=64), 4), 8, 100, "cpu") is None


def test_a_fill_selects_its_rows_and_clears_the_last_steps():
    decode = MemberDecode({1: 0}, 1, 6, 100, "cpu")
    decode.fill({0: [90, 10, 4, 76], 3: [50, 10, 4, 36]})
    assert decode.selected.tolist() == [True, False, False, True, False, False]
    assert decode.layout[3].tolist() == [50, 10, 4, 36] and decode.layout[1].tolist() == list(IDLE_ROW)
    decode.fill({1: [91, 10, 4, 76]})  # rows reordered, one request finished
    assert decode.selected.tolist() == [False, True, False, False, False, False]
    assert decode.layout.tolist() == [list(IDLE_ROW), [91, 10, 4, 76], *[list(IDLE_ROW)] * 4]
    decode.fill({})
    assert not decode.selected.any() and decode.layout.tolist() == [list(IDLE_ROW)] * 6


def test_selected_rows_see_one_key_past_the_common_prefix():
    seq_lens = torch.tensor([700, 300, 650, 1], dtype=torch.int32)
    selected = torch.tensor([True, False, True, True, False])  # the buffer is longer than the batch
    assert short_seq_lens(seq_lens.clone(), selected, 0).tolist() == [1, 300, 1, 1]
    assert short_seq_lens(seq_lens, selected, 64).tolist() == [65, 300, 65, 1]
    assert seq_lens.tolist() == [65, 300, 65, 1]  # in place: the builder's buffer, which a graph captures


def test_pod_refuses_full_graphs_of_mixed_batches_only():
    """In cudagraph_mode FULL a prefill batch would replay a graph: no compaction, no member decode."""
    from types import SimpleNamespace

    from vllm.config.compilation import CUDAGraphMode

    from kvcomp_vllm.vllm_integration.compat import mixed_full_cudagraphs

    modes = {m: mixed_full_cudagraphs(SimpleNamespace(compilation_config=SimpleNamespace(cudagraph_mode=m)))
             for m in (CUDAGraphMode.FULL, CUDAGraphMode.FULL_AND_PIECEWISE, CUDAGraphMode.FULL_DECODE_ONLY,
                       CUDAGraphMode.PIECEWISE, CUDAGraphMode.NONE, None)}
    assert [m for m, refused in modes.items() if refused] == [CUDAGraphMode.FULL]
