"""A model folder of a given shape for `--load-format dummy`: config.json and a word-level tokenizer.

vLLM serves random weights of any architecture from its config alone; `vllm serve` and `vllm bench serve`
still need a tokenizer. This one is built here (no hub): one word per id over the config's whole
vocabulary, so every id round-trips through text and a prompt of N ids re-encodes to N ids. The words are
the ids' base-36 numerals (at most 4 characters below 36**4): vLLM 0.26 refuses, before tokenizing, a prompt
longer than 7 characters per token of the context, which `w<id>` words (8 with their space) passed.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2


def word(i: int) -> str:
    """Id `i`'s word: its base-36 numeral."""
    digits = ""
    while True:
        i, d = divmod(i, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
        if not i:
            return digits


def word_tokenizer(vocab_size: int):
    """A fast tokenizer with `vocab_size` entries: the special tokens, then one word per id from 3 up."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({word(i): i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # decoding joins words with spaces: exact round trip
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=1 << 24
    )


def build_shape_model(path: str | Path, config: dict) -> Path:
    """Write `config` (a Hugging Face config.json as a dict) and a word tokenizer of its vocabulary to
    `path`; reused where both are already there from the same config."""
    path = Path(path)
    config = {**config, "bos_token_id": 1, "eos_token_id": 2}
    text = json.dumps(config, indent=2, sort_keys=True)
    stamp = path / "config.json"
    if stamp.exists() and stamp.read_text() == text and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    word_tokenizer(config["vocab_size"]).save_pretrained(path)
    stamp.write_text(text)  # last: a folder with this config has its tokenizer
    return path
