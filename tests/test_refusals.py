"""vLLM features a compressing policy refuses: at start-up (engine config) and, for beam search, per request."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

SNAPKV = {"policy": "snapkv", "budget": 64}


def engine_config(model_dir, settings=SNAPKV, **kwargs):
    """The VllmConfig vLLM builds at start-up (no weights load), with kvcomp's check applied."""
    from vllm.engine.arg_utils import EngineArgs

    args = dict(model=str(model_dir), dtype="float32", max_model_len=4096, block_size=32, enforce_eager=True)
    return EngineArgs(**args, **kwargs, additional_config={"kvcomp": settings}).create_engine_config()


def refused(model_dir, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        engine_config(model_dir, **kwargs)
    return str(err.value)


def test_fp8_kv_cache_is_refused(tiny_llama_dir):
    assert refused(tiny_llama_dir, kv_cache_dtype="fp8") == (
        "kv policy 'snapkv' cannot be combined with a quantized KV cache: cache_config.cache_dtype='fp8' "
        "(--kv-cache-dtype); scoring and PoD decode read the cache without its k/v scales; leave it auto"
    )


def test_a_kv_cache_dtype_other_than_the_models_is_refused(tiny_llama_dir):
    assert "cache_config.cache_dtype='bfloat16' (--kv-cache-dtype)" in refused(tiny_llama_dir, kv_cache_dtype="bfloat16")


def test_kv_transfer_connector_is_refused(tiny_llama_dir):
    from vllm.config import KVTransferConfig

    connector = KVTransferConfig(kv_connector="ExampleConnector", kv_role="kv_both")
    assert refused(tiny_llama_dir, kv_transfer_config=connector) == (
        "kv policy 'snapkv' cannot be combined with a KV transfer connector (disaggregated prefill): "
        "kv_transfer_config.kv_connector='ExampleConnector' (--kv-transfer-config); compacted blocks would travel as raw prefix"
    )


def test_kv_offloading_is_refused_by_its_own_flag(tiny_llama_dir):
    assert refused(tiny_llama_dir, kv_offloading_size=1.0) == (
        "kv policy 'snapkv' cannot be combined with KV cache offloading: cache_config.kv_offloading_size=1.0 "
        "(--kv-offloading-size); offloaded compacted blocks would be reloaded as the raw prefix they no longer hold"
    )


def test_kv_events_are_refused(tiny_llama_dir):
    from vllm.config import KVEventsConfig

    assert refused(tiny_llama_dir, kv_events_config=KVEventsConfig(enable_kv_cache_events=True)) == (
        "kv policy 'snapkv' cannot be combined with KV cache events: kv_events_config.enable_kv_cache_events "
        "(--kv-events-config); events describe prefix blocks, which compressed requests neither cache nor keep"
    )


def test_pipeline_parallelism_is_refused(tiny_llama_dir):
    assert refused(tiny_llama_dir, pipeline_parallel_size=2) == (
        "kv policy 'snapkv' cannot be combined with pipeline parallelism: parallel_config.pipeline_parallel_size=2 "
        "(--pipeline-parallel-size); compaction across pipeline stages is untested; use tensor parallelism"
    )


def test_lora_is_refused(tiny_llama_dir):
    assert refused(tiny_llama_dir, enable_lora=True) == (
        "kv policy 'snapkv' cannot be combined with LoRA adapters: lora_config (--enable-lora); "
        "scoring with adapters is untested"
    )


def test_every_refused_feature_is_named_in_one_message(tiny_llama_dir):
    message = refused(tiny_llama_dir, settings={"policy": "pyramid", "budget": 0.1}, kv_cache_dtype="fp8", enable_lora=True)
    assert re.findall(r"kv policy '(\w+)' cannot be combined with ([\w ]+):", message) == [
        ("pyramid", "a quantized KV cache"), ("pyramid", "LoRA adapters")
    ]


def test_policy_full_refuses_nothing(tiny_llama_dir):
    config = engine_config(tiny_llama_dir, settings={"policy": "full"}, kv_cache_dtype="fp8", enable_lora=True,
                           pipeline_parallel_size=2)
    assert config.cache_config.cache_dtype == "fp8" and config.lora_config is not None


def test_the_models_own_kv_cache_dtype_is_served(tiny_llama_dir):
    assert engine_config(tiny_llama_dir).cache_config.cache_dtype == "auto"


BEAM_SEARCH = (
    "kv policy 'snapkv' cannot be combined with beam search: use_beam_search (use_beam_search / LLM.beam_search); "
    "vLLM runs every beam step as a new request whose prompt holds the generated tokens, which would then be "
    "compressed as prompt; serve beam search with --kv-policy full"
)


@pytest.mark.parametrize("endpoint", ["completion", "chat"])
def test_beam_search_requests_to_a_compressing_server_are_refused(tiny_llama_dir, endpoint):
    from kvcomp_vllm.vllm_integration.compat import openai_request_classes

    completion, chat = openai_request_classes()
    body = {"model": "m", "use_beam_search": True, "n": 2, "max_tokens": 4}
    request = completion(prompt="hi", **body) if endpoint == "completion" else chat(
        messages=[{"role": "user", "content": "hi"}], **body)
    engine_config(tiny_llama_dir)  # the served config: what the API server built at start-up
    with pytest.raises(ValueError) as err:
        request.to_beam_search_params(4, {})
    assert str(err.value) == BEAM_SEARCH
    engine_config(tiny_llama_dir, settings={"policy": "full"})
    assert request.to_beam_search_params(4, {}).beam_width == 2


def test_llm_beam_search_on_a_compressing_engine_is_refused(tiny_llama_dir):
    from vllm import LLM
    from vllm.sampling_params import BeamSearchParams

    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=engine_config(tiny_llama_dir)))
    with pytest.raises(ValueError) as err:
        LLM.beam_search(llm, [{"prompt_token_ids": [1, 2, 3]}], BeamSearchParams(beam_width=2, max_tokens=4))
    assert str(err.value) == BEAM_SEARCH


def test_speculative_decoding_is_refused(tiny_llama_dir):
    speculative = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    assert refused(tiny_llama_dir, speculative_config=speculative) == (
        "kv policy 'snapkv' cannot be combined with speculative decoding: speculative_config='ngram' "
        "(--speculative-config); verifying draft tokens over a compacted cache is untested"
    )


def test_a_scheduler_class_of_ones_own_is_refused(tiny_llama_dir):
    assert refused(tiny_llama_dir, scheduler_cls="my_package.MyScheduler") == (
        "kv policy 'snapkv' cannot be combined with a scheduler class of one's own: "
        "scheduler_config.scheduler_cls='my_package.MyScheduler' (--scheduler-cls); a compressing engine runs "
        "kvcomp's subclass of vLLM's scheduler, which stops prefill chunks at compression points"
    )
