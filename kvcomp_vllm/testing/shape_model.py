"""A model folder of a given shape for `--load-format dummy`: config.json and a word-level tokenizer.

vLLM serves random weights of any architecture from its config alone; `vllm serve` and `vllm bench serve`
still need a tokenizer. This one is built here (no hub): one word per id, `w<id>`, then the special tokens
at the top three ids, so every id round-trips through text and a prompt of N ids re-encodes to N ids.
The special tokens are added tokens, above `tokenizer.vocab_size`: random datasets draw ids below it
(vLLM 0.26's random dataset does not leave special ids out, 0.32's does), so no prompt holds one.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids vocab_size - 3, - 2, - 1


def word_tokenizer(vocab_size: int):
    """A fast tokenizer with `vocab_size` ids: words `w0` ... `w<vocab_size - 4>`, then the special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = vocab_size - len(SPECIAL_TOKENS)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # decoding joins words with spaces: exact round trip
    tok.add_special_tokens(SPECIAL_TOKENS)  # ids words, words + 1, words + 2
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=1 << 24
    )


def special_ids(vocab_size: int) -> dict:
    """The config's BOS and EOS ids for a word tokenizer of `vocab_size`."""
    return {"bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1}


def build_shape_model(path: str | Path, config: dict) -> Path:
    """Write `config` (a Hugging Face config.json as a dict) and a word tokenizer of its vocabulary to
    `path`; reused where both are already there from the same config."""
    path = Path(path)
    config = {**config, **special_ids(config["vocab_size"])}
    text = json.dumps(config, indent=2, sort_keys=True)
    stamp = path / "config.json"
    if stamp.exists() and stamp.read_text() == text and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    word_tokenizer(config["vocab_size"]).save_pretrained(path)
    stamp.write_text(text)  # last: a folder with this config has its tokenizer
    return path
