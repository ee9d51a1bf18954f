"""Tiny Llama-, Qwen2- and Gemma-3-style models built locally: random weights, a BPE tokenizer trained here.

The Gemma 3 shape is hybrid: `layer_types` interleaves sliding-window layers (window `sliding_window`)
with full-attention layers, as Gemma 3 and gpt-oss do.

The result is an ordinary Hugging Face model folder that transformers and vLLM load offline, so
tests and the demo never touch a hub. Same arguments, same seed: byte-identical weights.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Two sliding-window layers among four full-attention ones: the tiny hybrid model's default pattern.
GEMMA3_LAYER_TYPES = ("sliding_attention", "full_attention", "full_attention", "sliding_attention",
                      "full_attention", "full_attention")
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny model; GQA by default (4 query heads over 2 KV heads, head_dim 64). `sliding_window` and
    `layer_types` (one "sliding_attention" or "full_attention" per layer) are read for gemma3 only."""

    arch: Literal["llama", "qwen2", "gemma3"] = "llama"
    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 512
    vocab_size: int = 1024
    max_position_embeddings: int = 8192
    init_std: float = 0.08  # large enough that attention is peaked, so token scores rarely tie
    seed: int = 0
    sliding_window: int = 64
    layer_types: tuple[str, ...] | None = None


def tiny_gemma3_spec(**fields) -> TinyModelSpec:
    """The tiny hybrid model: Gemma 3's architecture, six layers of `GEMMA3_LAYER_TYPES`, window 64."""
    return TinyModelSpec(**{"arch": "gemma3", "num_layers": len(GEMMA3_LAYER_TYPES), **fields})


def synthetic_text(num_sentences: int, seed: int) -> list[str]:
    """Varied pseudo-English sentences from a seeded syllable lexicon (tokenizer corpus, prompts)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "or", "din", "pa", "qui", "est", "an", "mor", "ib"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(600)})
    common = ["the", "a", "of", "and", "in", "to", "is", "was", "on", "for", "with", "by", "at"]
    sentences = []
    for _ in range(num_sentences):
        n = rng.randint(5, 14)
        body = [rng.choice(common) if rng.random() < 0.3 else rng.choice(words) for _ in range(n)]
        sentences.append(" ".join(body).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
    return sentences


def _train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_text(4000, seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def _config(spec: TinyModelSpec, bos: int, eos: int):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.init_std,
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=False,
        dtype="float32",
    )
    if spec.arch == "llama":
        return LlamaConfig(**common)
    if spec.arch == "gemma3":
        types = list(spec.layer_types or GEMMA3_LAYER_TYPES[: spec.num_layers])
        return Gemma3TextConfig(**common, sliding_window=spec.sliding_window, layer_types=types,
                                query_pre_attn_scalar=spec.head_dim, pad_token_id=0)
    return Qwen2Config(**common, use_sliding_window=False)


def build_tiny_model(path: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Write a tiny model for `spec` to `path` (reused if already built from the same spec)."""
    from transformers import AutoModelForCausalLM

    spec = spec or TinyModelSpec()
    path = Path(path)
    stamp = path / "kvcomp_spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(asdict(spec))):
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(spec.vocab_size, spec.seed)
    config = _config(spec, tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    stamp.write_text(json.dumps(asdict(spec)))
    return path


def main() -> None:
    """`python -m kvcomp_vllm.testing.tiny_model DIR [llama|qwen2|gemma3]`: build a tiny model folder."""
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else ".cache/tiny-llama"
    arch = sys.argv[2] if len(sys.argv) > 2 else "llama"
    print(build_tiny_model(out, tiny_gemma3_spec() if arch == "gemma3" else TinyModelSpec(arch=arch)))


if __name__ == "__main__":
    main()
