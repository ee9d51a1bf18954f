"""A GGUF file as an ordinary Hugging Face checkpoint: bf16 safetensors with the tokenizer, which vLLM loads offline.

transformers reads and dequantizes the GGUF (it needs the `gguf` and `accelerate` packages) into the
architecture the file names; `convert_gguf` rebuilds that model from the file's config (edited by the
caller where it wants, e.g. RoPE scaling) and writes it at bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

DROPPED = ("quantization_config", "_name_or_path")  # the GGUF loader's own fields, not the model's


def convert_gguf(gguf: Path, out: Path, edit_config: Callable[[dict], dict] | None = None,
                 add_bos_token: bool | None = None) -> Path:
    """Dequantize `gguf` into a bf16 safetensors model folder `out` with its tokenizer; `edit_config` changes
    the config's fields first, `add_bos_token` sets whether the tokenizer starts every text with its BOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if add_bos_token is not None:
        tokenizer.add_bos_token = add_bos_token
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fields = {k: v for k, v in loaded.config.to_dict().items() if k not in DROPPED}
    config = type(loaded.config).from_dict(edit_config(fields) if edit_config else fields)
    model = type(loaded)(config).to(torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
