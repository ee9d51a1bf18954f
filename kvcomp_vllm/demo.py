"""`make demo`: build a tiny local model and generate with the pyramid policy next to full KV.

Runs on the reference generator until the vLLM integration lands; prints the tokens each layer
kept and the generated text for both, so the compression is visible at a glance.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .config import KVPolicyConfig
from .reference import generate
from .testing import build_tiny_model, synthetic_text

MODEL_DIR = Path(".cache/tiny-llama")


def main() -> None:
    path = build_tiny_model(MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompt = tokenizer(" ".join(synthetic_text(60, seed=7))).input_ids
    print(f"model: {path} ({model.config.num_hidden_layers} layers), prompt: {len(prompt)} tokens")
    for config in (KVPolicyConfig(policy="full"), KVPolicyConfig(policy="pyramid", budget=0.1)):
        out = generate(model, prompt, config, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id)
        print(f"\n[{config.describe()}]")
        print(f"  KV tokens kept per layer: {out.kept_per_layer} (of {len(prompt)})")
        print(f"  output: {tokenizer.decode(out.tokens)!r}")


if __name__ == "__main__":
    main()
