"""The policy package run inside the oracle's plain transformers generator, for diagnostics.

`testing.oracle.generate` is the expected output of every engine test; this runs the same greedy loop
and compression rounds with `kvcomp_vllm.policies` selecting instead, so a benchmark can watch (or
wrap) the policy objects at work on a real model (`benchmarks/windowkv_selection.py`).
"""

from __future__ import annotations

from collections.abc import Callable

from .config import KVPolicyConfig
from .policies import LayerPlan, PromptView, RequestCompressor, make_policy
from .testing.oracle import GenerateOutput, full_attention_layers
from .testing.oracle import generate as oracle_generate

ReferenceOutput = GenerateOutput


def policy_selector(config: KVPolicyConfig, num_layers: int) -> Callable[..., LayerPlan]:
    """The oracle generator's `select` hook, answered by the policy package (one request)."""
    compressor = RequestCompressor(make_policy(config, num_layers))

    def select(layer: int, keys, queries, scale: float, prompt_len: int) -> LayerPlan:
        return compressor.plan(layer, PromptView.dense(keys, queries, scale, context_len=prompt_len))

    return select


def generate(model, prompt: list[int], config: KVPolicyConfig, max_new_tokens: int, eos_token_id: int | None = None,
             forced: list[int] | None = None) -> GenerateOutput:
    """`testing.oracle.generate` with the policy package's selection."""
    select = policy_selector(config, len(full_attention_layers(model.config)))
    return oracle_generate(model, prompt, config, max_new_tokens, eos_token_id, forced, select=select)
