"""Test and demo support: locally built tiny models and prompts, no hub access."""

from .tiny_model import TinyModelSpec, build_tiny_model, synthetic_text, tiny_gemma3_spec

__all__ = ["TinyModelSpec", "build_tiny_model", "synthetic_text", "tiny_gemma3_spec"]
