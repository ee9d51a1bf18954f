"""Reference generator: a plain transformers greedy loop with a policy applied after prefill.

It is the oracle the vLLM integration must match token for token, so it favours obviousness over
speed: batch size one, eager attention written out below, and compaction through
`policies.apply_plan`. Prefill runs up to each compression point (the prompt's end, and every
`prefill_chunk` tokens when set); there every layer plans from its cached keys and the segment's
last-window queries, and its cache is replaced by what it keeps. Decode steps then attend over the
compacted cache, with new tokens at their true positions.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel

from .attention import causal_attention
from .config import KVPolicyConfig
from .policies import PromptView, RequestCompressor, apply_plan, make_policy

ATTN_IMPLEMENTATION = "kvcomp_reference"


@dataclass
class _Run:
    """State of one generation, read by the attention function."""

    compressor: RequestCompressor
    cache: object
    prompt_len: int
    compress: bool = True
    kept: dict[int, int] = field(default_factory=dict)


_ACTIVE: contextvars.ContextVar[_Run] = contextvars.ContextVar("kvcomp_reference_run")


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for the reference model; compacts the layer's cache at the end of prefill."""
    run = _ACTIVE.get()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = causal_attention(query, key, value, scale)
    if run.compress:
        layer = module.layer_idx
        plan = run.compressor.plan(layer, PromptView.dense(key[0], query[0], scale, context_len=run.prompt_len))
        owner = None if plan.key_owner is None else run.cache.layers[plan.key_owner].keys[0]
        k, v = apply_plan(plan, key[0], value[0], owner_keys=owner)
        run.cache.layers[layer].keys, run.cache.layers[layer].values = k[None], v[None]
        run.kept[layer] = plan.kept_tokens(key.shape[2])
    return out, None


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)


@dataclass(frozen=True)
class ReferenceOutput:
    """Tokens, their logprobs, each step's best logprob, and the tokens each layer kept after prefill."""

    tokens: list[int]
    logprobs: list[float]
    best_logprobs: list[float]
    kept_per_layer: list[int]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompt: list[int],
    config: KVPolicyConfig,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    forced: list[int] | None = None,
) -> ReferenceOutput:
    """Greedy-decode `max_new_tokens` after `prompt` with `config`'s policy applied during prefill.

    With `forced`, those tokens are fed instead of the argmax (teacher forcing), so another
    engine's output can be scored step by step against this reference's distribution.
    """
    from transformers import DynamicCache

    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    num_layers = model.config.num_hidden_layers
    cache = DynamicCache(config=model.config)
    policy = make_policy(config, num_layers)
    run = _Run(RequestCompressor(policy), cache, len(prompt))
    token = _ACTIVE.set(run)

    def forward(ids: list[int], start: int) -> torch.Tensor:
        positions = torch.arange(start, start + len(ids), device=model.device)[None]
        ids = torch.tensor([ids], device=model.device)
        return model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True).logits

    try:
        start = 0
        while start < len(prompt):
            end = policy.next_compression_point(len(prompt), start)
            logits = forward(prompt[start:end], start)
            start = end
        run.compress = False
        tokens, logprobs, best = [], [], []
        for step in range(len(forced) if forced is not None else max_new_tokens):
            if step:
                logits = forward([tokens[-1]], len(prompt) + step - 1)
            logp = logits[0, -1].float().log_softmax(-1)
            nxt = int(logp.argmax()) if forced is None else forced[step]
            tokens.append(nxt)
            logprobs.append(float(logp[nxt]))
            best.append(float(logp.max()))
            if nxt == eos_token_id:
                break
    finally:
        _ACTIVE.reset(token)
    return ReferenceOutput(tokens, logprobs, best, [run.kept[layer] for layer in range(num_layers)])
