"""The reference generator: full equals plain generate; compressed runs are exact and deterministic."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.policies import make_policy
from kvcomp_vllm.reference import generate
from kvcomp_vllm.testing import synthetic_text

COMPRESSED = [
    dict(policy="streaming", budget=64),
    dict(policy="snapkv", budget=96),
    dict(policy="pyramid", budget=0.15),
    dict(policy="windowkv", budget=100, group_size=2),
    dict(policy="pod", recent=48, group_size=2),
]


@pytest.fixture(scope="module")
def model_and_prompt(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt = tokenizer(" ".join(synthetic_text(40, seed=3))).input_ids
    return model, prompt


def test_full_equals_plain_generate(model_and_prompt):
    model, prompt = model_and_prompt
    want = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    out = generate(model, prompt, KVPolicyConfig(policy="full"), 20)
    assert out.tokens == want[0, len(prompt):].tolist()
    assert out.kept_per_layer == [len(prompt)] * 4


@pytest.mark.parametrize("params", COMPRESSED, ids=lambda p: p["policy"])
def test_compressed_run_keeps_budget_and_is_deterministic(model_and_prompt, params):
    model, prompt = model_and_prompt
    config = KVPolicyConfig(**params)
    first = generate(model, prompt, config, 12)
    assert generate(model, prompt, config, 12) == first
    policy = make_policy(config, 4)
    assert first.kept_per_layer == [policy.layout.layer_budget(layer, len(prompt)) for layer in range(4)]
    assert max(first.kept_per_layer) < len(prompt) or config.policy == "pod"


def test_compression_changes_the_cache_the_model_decodes_over(model_and_prompt):
    model, prompt = model_and_prompt
    full = generate(model, prompt, KVPolicyConfig(policy="full"), 12)
    tight = generate(model, prompt, KVPolicyConfig(policy="streaming", budget=8, sink=4), 12)
    assert tight.tokens != full.tokens


@pytest.mark.parametrize(
    "params",
    [dict(policy="snapkv", budget=4096), dict(policy="pyramid", budget=1.0), dict(policy="pod", group_size=1)],
    ids=["snapkv-over-budget", "pyramid-ratio-1", "pod-groups-of-one"],
)
def test_policies_that_keep_everything_equal_full(model_and_prompt, params):
    model, prompt = model_and_prompt
    full = generate(model, prompt, KVPolicyConfig(policy="full"), 12)
    out = generate(model, prompt, KVPolicyConfig(**params), 12)
    assert out.tokens == full.tokens
    assert out.logprobs == pytest.approx(full.logprobs, abs=1e-5)
