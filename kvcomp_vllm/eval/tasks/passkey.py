"""Passkey retrieval: a five-digit key stated once somewhere in the filler."""

from __future__ import annotations

import random

from .base import Gap, PromptBuilder, Sample


def make(builder: PromptBuilder, length: int, rng: random.Random, depth: float | None = None, **kw) -> Sample:
    depth = rng.random() if depth is None else depth
    key = str(rng.randint(10000, 99999))
    pieces = [
        "There is a pass key hidden in the text below. Find it and remember it.",
        Gap(depth),
        f"The pass key is {key}. Remember it. {key} is the pass key.",
        Gap(1.0 - depth),
        "Question: what is the pass key?",
    ]
    return builder.compose("passkey", length, pieces, "The pass key is", key, rng, depth=depth, **kw)
