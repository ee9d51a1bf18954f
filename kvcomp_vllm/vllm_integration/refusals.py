"""The vLLM features a compressing policy refuses, because kvcomp has not been tested with them.

Engine-wide features are refused at start-up (`check_features`, from `engine_args`); beam search is
per request, so it is refused where a request asks for it: the OpenAI request's
`to_beam_search_params` (answered 400) and `LLM.beam_search`. Policy `full` refuses nothing.
"""

from __future__ import annotations

from typing import NamedTuple

from .compat import beam_search_owner, openai_request_classes, patch, untested_features
from .settings import engine_policy, served_config


class Refusal(NamedTuple):
    """One refused feature: the engine setting and flag that turn it on, and why it is refused."""

    feature: str
    setting: str
    flag: str
    reason: str


REFUSED: dict[str, Refusal] = {
    "kv_cache_dtype": Refusal(
        "a quantized KV cache", "cache_config.cache_dtype", "--kv-cache-dtype",
        "scoring and PoD decode read the cache without its k/v scales; leave it auto",
    ),
    "kv_offloading": Refusal(
        "KV cache offloading", "cache_config.kv_offloading_size", "--kv-offloading-size",
        "offloaded compacted blocks would be reloaded as the raw prefix they no longer hold",
    ),
    "kv_transfer": Refusal(
        "a KV transfer connector (disaggregated prefill)", "kv_transfer_config.kv_connector", "--kv-transfer-config",
        "compacted blocks would travel as raw prefix",
    ),
    "kv_events": Refusal(
        "KV cache events", "kv_events_config.enable_kv_cache_events", "--kv-events-config",
        "events describe prefix blocks, which compressed requests neither cache nor keep",
    ),
    "pipeline_parallel": Refusal(
        "pipeline parallelism", "parallel_config.pipeline_parallel_size", "--pipeline-parallel-size",
        "compaction across pipeline stages is untested; use tensor parallelism",
    ),
    "lora": Refusal("LoRA adapters", "lora_config", "--enable-lora", "scoring with adapters is untested"),
    "hybrid_kv_cache_manager_off": Refusal(
        "vLLM's hybrid KV cache manager turned off on a hybrid model", "scheduler_config.disable_hybrid_kv_cache_manager",
        "--disable-hybrid-kv-cache-manager",
        "vLLM would then hold the sliding-window layers as full attention, in the compressed layers' KV cache groups",
    ),
    "speculative": Refusal(
        "speculative decoding", "speculative_config", "--speculative-config",
        "verifying draft tokens over a compacted cache is untested",
    ),
    "scheduler_cls": Refusal(
        "a scheduler class of one's own", "scheduler_config.scheduler_cls", "--scheduler-cls",
        "a compressing engine runs kvcomp's subclass of vLLM's scheduler, which stops prefill chunks at compression points",
    ),
}

# What a compressing policy does with each kind of decoder layer (`attention_layers`, the worker's KV spec hook).
LAYER_KINDS = (
    "full-attention layers compressed; a hybrid model's sliding-window layers (Gemma 3, gpt-oss: layer_types in "
    "its config) kept by vLLM's own manager; refused: chunked local attention, state-space and linear-attention "
    "layers, and models without a full-attention layer"
)

BEAM_SEARCH = Refusal(
    "beam search", "use_beam_search", "use_beam_search / LLM.beam_search",
    "vLLM runs every beam step as a new request whose prompt holds the generated tokens, which would "
    "then be compressed as prompt",
)


def refusal_message(policy: str, refusal: Refusal, value: object) -> str:
    """`kv policy 'snapkv' cannot be combined with <feature>: <setting>=<value> (<flag>); <reason>`."""
    shown = "" if value is True else f"={value!r}"
    return f"kv policy '{policy}' cannot be combined with {refusal.feature}: {refusal.setting}{shown} ({refusal.flag}); {refusal.reason}"


def check_features(policy: str, vllm_config, own_schedulers: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming every refused feature the engine config turns on (policy `full` skips this);
    a scheduler class among `own_schedulers` (kvcomp's) is no user's."""
    found = untested_features(vllm_config)
    if found.get("scheduler_cls") in own_schedulers:
        del found["scheduler_cls"]
    if found:
        raise ValueError("; ".join(refusal_message(policy, REFUSED[key], value) for key, value in found.items()))


def check_beam_search(vllm_config) -> None:
    """Raise ValueError where a compressing engine is asked for beam search."""
    config = engine_policy(vllm_config) if vllm_config is not None else None
    if config is not None:
        message = refusal_message(config.policy, BEAM_SEARCH, True)
        raise ValueError(f"{message}; serve beam search with --kv-policy full")


def _to_beam_search_params(original):
    def to_beam_search_params(self, *args, **kwargs):
        check_beam_search(served_config())  # raised here, the server answers 400
        return original(self, *args, **kwargs)

    return to_beam_search_params


def _llm_beam_search(original):
    def beam_search(self, *args, **kwargs):
        check_beam_search(self.llm_engine.vllm_config)
        return original(self, *args, **kwargs)

    return beam_search


def install_beam_search_hooks() -> None:
    """Refuse beam search on compressing engines, in the OpenAI server and in `LLM` (idempotent)."""
    for request_class in openai_request_classes():
        patch(request_class, "to_beam_search_params", _to_beam_search_params)
    patch(beam_search_owner(), "beam_search", _llm_beam_search)
