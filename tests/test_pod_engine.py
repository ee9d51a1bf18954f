"""PoD in a vLLM CPU engine beyond fixed groups: non-consecutive layer groups equal the oracle, an
adapted checkpoint serves, and serving it with another geometry warns at start-up."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.pod.adapt import AdaptSettings, adapt
from kvcomp_vllm.testing.engine import drive
from kvcomp_vllm.testing.oracle import generate
from kvcomp_vllm.vllm_integration import engine_args
from test_vllm_engine import greedy, make_llm, policy_counts, prompt_ids, served_as_oracle

pytestmark = pytest.mark.vllm

SETTINGS = dict(policy="pod", sink=4, recent=48, groups=[[0, 3], [1, 2]])  # owners 0 and 1; members 3 and 2


@pytest.fixture(scope="module")
def adapted_dir(tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("pod-adapted")
    recipe = AdaptSettings(steps=3, seq_len=256, continuation=64, lr=2e-3, lora_rank=8)
    adapt(str(tiny_llama_dir), out, KVPolicyConfig(**SETTINGS), recipe)
    return out


def start_up_warnings(monkeypatch, model_dir, settings) -> list[str]:
    """kvcomp's warnings while vLLM builds an engine config for `model_dir` (no weights load)."""
    from vllm.engine.arg_utils import EngineArgs

    logged: list[str] = []
    monkeypatch.setattr(engine_args.logger, "warning", lambda msg, *args: logged.append(msg % args))
    EngineArgs(model=str(model_dir), dtype="float32", max_model_len=512, block_size=32, enforce_eager=True,
               additional_config={"kvcomp": settings}).create_engine_config()
    return [line for line in logged if "adapted for" in line]


def test_adapted_checkpoint_with_non_consecutive_groups_serves_as_the_oracle(adapted_dir, release):
    model = AutoModelForCausalLM.from_pretrained(adapted_dir, dtype=torch.float32)
    prompts = [prompt_ids(adapted_dir, 40, 1), prompt_ids(adapted_dir, 3, 2), prompt_ids(adapted_dir, 60, 3)]
    run, (_, evicted) = served_as_oracle(make_llm(adapted_dir, SETTINGS), model, prompts, SETTINGS)
    assert evicted > 0  # members 2 and 3 packed their distant values
    # Served with consecutive groups the members read other owners' keys: other tokens.
    other = generate(model, prompts[2], KVPolicyConfig(policy="pod", sink=4, recent=48, group_size=2), 12).tokens
    assert other != run.tokens["req-2"]


def test_serving_another_geometry_than_adapted_for_warns(monkeypatch, adapted_dir, tiny_llama_dir):
    assert start_up_warnings(monkeypatch, adapted_dir, SETTINGS) == []
    [line] = start_up_warnings(monkeypatch, adapted_dir, {**SETTINGS, "recent": 64})
    assert line.startswith(f"kvcomp: {adapted_dir} was adapted for pod with sink=4 recent=48 groups=[[0, 3], [1, 2]]")
    assert "served with recent 64 (adapted for 48)" in line
    [line] = start_up_warnings(monkeypatch, adapted_dir, {"policy": "pod", "sink": 4, "recent": 48})
    assert "groups [[0, 1], [2, 3]] (adapted for [[0, 3], [1, 2]])" in line
    assert start_up_warnings(monkeypatch, tiny_llama_dir, {**SETTINGS, "recent": 64}) == []  # never adapted


@pytest.mark.parametrize("settings", [
    dict(policy="pod", select="snapkv", budget=0.25, sink=4, recent=48, window=16, group_size=2),
    dict(policy="pod", select="snapkv", budget=120, sink=4, recent=32, groups=[[0, 3], [1, 2]], pool_size=1),
], ids=["ratio", "groups"])
def test_pod_with_snapkv_selection_matches_the_oracle(tiny_model_dir, settings, release):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = [prompt_ids(tiny_model_dir, 40, 1), prompt_ids(tiny_model_dir, 3, 2), prompt_ids(tiny_model_dir, 60, 3)]
    run, counted = served_as_oracle(make_llm(tiny_model_dir, settings), model, prompts, settings)
    assert counted == policy_counts(settings, prompts)
    # The selection matters: without it (all distant tokens kept) the long prompt decodes otherwise.
    plain = {k: v for k, v in settings.items() if k not in ("select", "budget", "window", "pool_size")}
    assert generate(model, prompts[2], KVPolicyConfig(**plain), 12).tokens != run.tokens["req-2"]


def test_requests_choose_selection_on_a_pod_server(tiny_llama_dir, release):
    server = dict(policy="pod", sink=4, recent=48, group_size=2)
    chosen = {"select": "snapkv", "budget": 0.3, "window": 16}
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    prompts = [prompt_ids(tiny_llama_dir, 60, 3), prompt_ids(tiny_llama_dir, 60, 3), prompt_ids(tiny_llama_dir, 50, 4)]
    llm = make_llm(tiny_llama_dir, server)
    run = drive(llm, prompts, [greedy(12), greedy(12, kvcomp=chosen), greedy(12, kvcomp=chosen)])
    configs = [KVPolicyConfig(**server), KVPolicyConfig(**server, **chosen), KVPolicyConfig(**server, **chosen)]
    for (req_id, tokens), prompt, config in zip(run.tokens.items(), prompts, configs):
        assert tokens == generate(model, prompt, config, 12).tokens, req_id
    assert run.tokens["req-0"] != run.tokens["req-1"]  # one prompt, with and without selection
    assert run.free_blocks_after == run.free_blocks_before
