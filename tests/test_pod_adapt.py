"""PoD adaptation on the tiny model: the training attention is the oracle's PoD attention, a few steps
lower the loss, runs resume exactly, and the written checkpoint records its geometry."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm import KVPolicyConfig
from kvcomp_vllm.cli import main
from kvcomp_vllm.pod.adapt import LOG_FILE, AdaptSettings, adapt, continuation_logits, pod_loss
from kvcomp_vllm.pod.attention import PoDGeometry, pod_forward
from kvcomp_vllm.pod.geometry import GEOMETRY_FILE, mismatch
from kvcomp_vllm.pod.samples import corpus_tokens, window
from kvcomp_vllm.testing.oracle import generate

GROUPS = KVPolicyConfig(policy="pod", sink=3, recent=24, groups=[[0, 2, 3], [1]])  # not consecutive
SETTINGS = AdaptSettings(steps=4, seq_len=256, continuation=64, lr=2e-3, lora_rank=8, save_every=2)


def continuation_logprobs(model, ids: list[int], prompt_len: int) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    return logits[prompt_len - 1 : -1].log_softmax(-1).gather(-1, torch.tensor(ids[prompt_len:])[:, None])[:, 0]


@pytest.mark.parametrize("config", [GROUPS, KVPolicyConfig(policy="pod", sink=0, recent=40, group_size=2)],
                         ids=["groups", "group_size"])
def test_training_attention_is_the_oracles_pod_decode(tiny_model_dir, config):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(10, 1000, (170,), generator=torch.Generator().manual_seed(1)).tolist()
    n = 120
    want = torch.tensor(generate(model, ids[:n], config, 0, forced=ids[n:]).logprobs)
    with torch.no_grad(), pod_forward(model, PoDGeometry.from_config(config, 4), n):
        got = continuation_logprobs(model, ids, n)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    model.set_attn_implementation("sdpa")  # the oracle left its own attention set
    with torch.no_grad():
        full = continuation_logprobs(model, ids, n)
    assert (full - want).abs().max() > 1e-2  # shared keys change the continuation


def sample(model_dir, index=0):
    _, ids = corpus_tokens(AutoTokenizer.from_pretrained(model_dir), None, 0, SETTINGS.seq_len)
    return torch.tensor([window(ids, SETTINGS.seq_len, index, 0)])


def loss_of(model_dir, batch, original_dir=None) -> float:
    """The continuation's cross-entropy under PoD, or its KL divergence from `original_dir`'s full attention."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    teacher = None
    if original_dir is not None:
        original = AutoModelForCausalLM.from_pretrained(original_dir, dtype=torch.float32)
        teacher = lambda ids: continuation_logits(original, ids, SETTINGS.prompt_len)  # noqa: E731
    with torch.no_grad():
        return float(pod_loss(model, model, PoDGeometry.from_config(GROUPS, 4), batch, SETTINGS.prompt_len, teacher))


def test_a_few_steps_lower_the_loss_and_the_checkpoint_records_its_geometry(tmp_path, tiny_llama_dir):
    batch = sample(tiny_llama_dir)
    before = loss_of(tiny_llama_dir, batch, tiny_llama_dir)  # what shared keys change of full attention
    result = adapt(str(tiny_llama_dir), tmp_path, GROUPS, SETTINGS)
    assert result == {"steps": 4, "out": str(tmp_path), "finished": True}
    after = loss_of(tmp_path, batch, tiny_llama_dir)  # the merged checkpoint, loaded as an ordinary model
    assert before > 0.01 and after < 0.8 * before, (before, after)
    losses = [json.loads(line)["loss"] for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(losses) == 4 and losses[0] == pytest.approx(before, rel=1e-3)  # step 1: LoRA starts at the base
    record = json.loads((tmp_path / GEOMETRY_FILE).read_text())
    assert record["geometry"] == {"sink": 3, "recent": 24, "groups": [[0, 2, 3], [1]]}
    assert record["steps"] == 4 and record["adapted_from"] == str(tiny_llama_dir)
    assert not any(k.startswith("base_model") or "lora" in k for k in load_file(tmp_path / "model.safetensors"))
    assert mismatch(tmp_path, GROUPS, 4) is None
    other = mismatch(tmp_path, KVPolicyConfig(policy="pod", sink=3, recent=24, group_size=2), 4)
    assert "groups [[0, 1], [2, 3]] (adapted for [[0, 2, 3], [1]])" in other
    assert "recent 32 (adapted for 24)" in mismatch(tmp_path, GROUPS.model_copy(update={"recent": 32}), 4)
    assert mismatch(tiny_llama_dir, GROUPS, 4) is None  # a model never adapted records nothing


def test_runs_resume_where_the_last_stopped(tmp_path, tiny_llama_dir):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    adapt(str(tiny_llama_dir), whole, GROUPS, SETTINGS)
    first = AdaptSettings(**{**SETTINGS.__dict__, "steps": 2})
    assert adapt(str(tiny_llama_dir), parts, GROUPS, first)["steps"] == 2
    logged = []
    assert adapt(str(tiny_llama_dir), parts, GROUPS, SETTINGS, log=logged.append)["steps"] == 4
    assert "pod-adapt: resuming at step 2" in logged
    a, b = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert len((parts / LOG_FILE).read_text().splitlines()) == 4
    with pytest.raises(ValueError, match="saved for geometry"):
        adapt(str(tiny_llama_dir), parts, GROUPS.model_copy(update={"recent": 30}), SETTINGS)


def test_the_lm_objective_lowers_the_texts_cross_entropy(tmp_path, tiny_llama_dir):
    batch = sample(tiny_llama_dir)
    before = loss_of(tiny_llama_dir, batch)
    adapt(str(tiny_llama_dir), tmp_path, GROUPS, AdaptSettings(**{**SETTINGS.__dict__, "objective": "lm"}))
    assert loss_of(tmp_path, batch) < before - 0.05


def test_full_fine_tuning_distills_from_a_frozen_copy(tmp_path, tiny_llama_dir):
    batch = sample(tiny_llama_dir)
    before = loss_of(tiny_llama_dir, batch, tiny_llama_dir)
    adapt(str(tiny_llama_dir), tmp_path, GROUPS, AdaptSettings(**{**SETTINGS.__dict__, "lora_rank": 0, "lr": 2e-5}))
    assert loss_of(tmp_path, batch, tiny_llama_dir) < 0.8 * before


def test_cli_full_fine_tuning_with_a_minute_limit_from_a_grouping_file(tmp_path, tiny_llama_dir):
    preset = tmp_path / "groups.json"
    preset.write_text(json.dumps({"policy": "pod", "sink": 3, "recent": 24, "groups": [[0, 2, 3], [1]],
                                  "calibration": {"note": "ignored by the config"}}))
    out = tmp_path / "full"
    args = ["pod-adapt", str(tiny_llama_dir), "--out", str(out), "--kv-config", str(preset), "--lora-rank", "0",
            "--steps", "2", "--seq-len", "256", "--continuation", "64", "--lr", "1e-4", "--objective", "lm"]
    assert main(args) == 0
    base, tuned = load_file(tiny_llama_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == tuned.keys() and any(not torch.equal(base[k], tuned[k]) for k in base)
    assert json.loads((out / GEOMETRY_FILE).read_text())["geometry"]["groups"] == [[0, 2, 3], [1]]
    assert main([*args, "--steps", "50", "--minutes", "0"]) == 0  # no time: no step, the state stays resumable
    assert len((out / LOG_FILE).read_text().splitlines()) == 2
