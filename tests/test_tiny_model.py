"""The tiny-model builder: deterministic folders that transformers and vLLM (CPU) both load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvcomp_vllm.testing import TinyModelSpec, build_tiny_model, synthetic_text, tiny_gemma3_spec


def test_same_spec_gives_identical_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a", TinyModelSpec(num_layers=2))
    b = build_tiny_model(tmp_path / "b", TinyModelSpec(num_layers=2))
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    c = build_tiny_model(tmp_path / "c", TinyModelSpec(num_layers=2, seed=1))
    assert not torch.equal(load_file(c / "model.safetensors")["lm_head.weight"], wa["lm_head.weight"])


def test_folder_shape_and_tokenizer(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2 and config["head_dim"] == 64
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = " ".join(synthetic_text(3, seed=0))
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # BPE merges learned, not byte-level fallback
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>hi</s><|assistant|>"


@pytest.mark.vllm
def test_vllm_cpu_generates_the_same_greedy_tokens_as_transformers(tiny_model_dir):
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer(" ".join(synthetic_text(30, seed=2))).input_ids
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    want = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    llm = LLM(model=str(tiny_model_dir), dtype="float32", enforce_eager=True, max_model_len=2048, seed=0)
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert list(out[0].outputs[0].token_ids) == want


def test_tiny_gemma3_interleaves_sliding_and_full_layers_and_is_reused(tiny_gemma3_dir):
    config = json.loads((tiny_gemma3_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["sliding_window"] == 64
    assert [i for i, kind in enumerate(config["layer_types"]) if kind == "full_attention"] == [1, 2, 4, 5]
    weights = tiny_gemma3_dir / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert build_tiny_model(tiny_gemma3_dir, tiny_gemma3_spec()) == tiny_gemma3_dir
    assert weights.stat().st_mtime_ns == written  # the stamp (its layer_types a JSON list) matches the spec


@pytest.mark.vllm
def test_vllm_cpu_attends_the_tiny_gemma3_as_transformers_does(tiny_gemma3_dir):
    """A prompt far past the 64-token window: vLLM's sliding-window layers see what transformers' do."""
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma3_dir)
    prompt = tokenizer(" ".join(synthetic_text(30, seed=2))).input_ids
    assert len(prompt) > 4 * 64
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma3_dir, dtype=torch.float32)
    want = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    llm = LLM(model=str(tiny_gemma3_dir), dtype="float32", enforce_eager=True, max_model_len=2048, seed=0, block_size=32)
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert list(out[0].outputs[0].token_ids) == want
