"""Needle in a haystack: one fact at a chosen depth of the filler; the answer is a name from it."""

from __future__ import annotations

import random

from .base import Gap, PromptBuilder, Sample
from .words import NAMES, PET_NAMES, PETS


def make(builder: PromptBuilder, length: int, rng: random.Random, depth: float | None = None, **kw) -> Sample:
    """The fact sits after `depth` (0..1, random if None) of the filler tokens."""
    depth = rng.random() if depth is None else depth
    owner, pet, name = rng.choice(NAMES), rng.choice(PETS), rng.choice(PET_NAMES)
    pieces = [
        "Read the text below and answer the question after it.",
        Gap(depth),
        f"By the way, the name of {owner}'s {pet} is {name}.",
        Gap(1.0 - depth),
        f"Question: what is the name of {owner}'s {pet}? Answer with the name only.",
    ]
    prefix = f"The name of {owner}'s {pet} is"
    return builder.compose("needle", length, pieces, prefix, name, rng, depth=depth, **kw)
