"""Test and demo support: locally built tiny models and prompts, no hub access."""

from .tiny_model import TinyModelSpec, build_tiny_model, synthetic_text

__all__ = ["TinyModelSpec", "build_tiny_model", "synthetic_text"]
