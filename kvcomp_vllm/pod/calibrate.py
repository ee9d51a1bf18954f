"""`kvcomp-vllm pod-calibrate`: PoD layer groups from how alike the model's layers attend to distant tokens.

A few long prompts of a local corpus run through the model (transformers, eager forward); an attention
function records each layer's distant-token attention (`divergence.distant_distribution`) beside the
model's own SDPA. The output is a kvcomp preset (`--kv-config groups.json`) whose `groups` the pod
policy serves, plus the measurements under `calibration`. Groups are per layer, not per KV head: a
layer's KV heads share one block table and one slot count, so a layer cannot be an owner for some heads
and a member for others, and the member decode reads one owner layer per layer.
"""

from __future__ import annotations

import contextvars
import json
from pathlib import Path

import torch

from .divergence import distant_distribution, group_layers, layer_divergence, members, threshold_for
from .samples import corpus_tokens, window

CALIBRATION_ATTENTION = "kvcomp_pod_calibrate"
_RECORD: contextvars.ContextVar[dict] = contextvars.ContextVar("kvcomp_pod_calibrate")


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The model's SDPA attention, recording the layer's distant-token attention (batch of one)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    record = _RECORD.get()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    dist = distant_distribution(query[0], key[0], scale, record["sink"], record["recent"], record["window"])
    record["layers"][module.layer_idx] = dist
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


@torch.no_grad()
def distant_attention(model, prompts: list[list[int]], sink: int, recent: int,
                      window_: int) -> list[list[torch.Tensor]]:
    """Per prompt, each layer's `[kv_heads, distant]` distant-token attention."""
    from transformers import AttentionInterface

    AttentionInterface.register(CALIBRATION_ATTENTION, _recording_attention)
    model.set_attn_implementation(CALIBRATION_ATTENTION)
    out = []
    for prompt in prompts:
        record = {"sink": sink, "recent": recent, "window": window_, "layers": {}}
        token = _RECORD.set(record)
        try:
            model(input_ids=torch.tensor([prompt], device=model.device), use_cache=False)
        finally:
            _RECORD.reset(token)
        layers = [record["layers"][i] for i in range(model.config.num_hidden_layers)]
        if any(d is None for d in layers):
            raise ValueError(f"prompts of {len(prompt)} tokens have no distant tokens with sink {sink}, "
                             f"recent {recent}")
        out.append([d.cpu() for d in layers])
    return out


def calibrate(model_dir: str, *, prompts: int = 4, length: int = 4096, sink: int = 4, recent: int = 1024,
              window_: int = 64, threshold: float | None = None, members_wanted: int | None = None,
              max_group: int = 4, consecutive: bool = True, corpus: str | None = None, seed: int = 0,
              device: str = "cpu") -> dict:
    """The grouping preset for `model_dir`: groups by `threshold`, or the smallest threshold giving at
    least `members_wanted` member layers (default: the paper's -35% KV, 70% of the layers members)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    name, ids = corpus_tokens(tokenizer, corpus, seed, length)
    batch = [window(ids, length, i, seed) for i in range(prompts)]
    div = layer_divergence(distant_attention(model, batch, sink, recent, window_))
    layers = div.shape[0]
    if threshold is None:
        wanted = members_wanted if members_wanted is not None else round(0.7 * layers)
        threshold = threshold_for(div, wanted, max_group, consecutive)
    groups = group_layers(div, threshold, max_group, consecutive)
    return {
        "policy": "pod",
        "sink": sink,
        "recent": recent,
        "groups": [list(g) for g in groups],
        "calibration": {
            "model": str(model_dir), "corpus": name, "seed": seed, "prompts": prompts, "prompt_tokens": length,
            "window": window_, "threshold": threshold, "max_group": max_group,
            "consecutive": consecutive, "members": members(groups), "per": "layer",
            "divergence": div.tolist(),
        },
    }


def write(result: dict, out: str | Path) -> Path:
    """Write the preset as JSON (a YAML subset, so `--kv-config` reads it)."""
    path = Path(out)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
