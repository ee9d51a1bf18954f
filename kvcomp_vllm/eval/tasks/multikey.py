"""Multi-key retrieval: several key/value facts spread over the filler; the question names one key."""

from __future__ import annotations

import random

from .base import PromptBuilder, Sample, spread
from .words import ADJECTIVES, NOUNS


def make(builder: PromptBuilder, length: int, rng: random.Random, depth: float | None = None, **kw) -> Sample:
    count = min(8, max(2, length // 512))
    keys = rng.sample([f"{a}-{n}" for a in ADJECTIVES for n in NOUNS], count)
    values = [str(rng.randint(100000, 999999)) for _ in keys]
    gaps = spread(count, rng)
    pieces: list = ["Several keys and their values are mentioned in the text below."]
    for gap, key, value in zip(gaps, keys, values):
        pieces += [gap, f"The value of key {key} is {value}."]
    pieces.append(gaps[-1])
    target = rng.randrange(count)
    pieces.append(f"Question: what is the value of key {keys[target]}?")
    prefix = f"The value of key {keys[target]} is"
    return builder.compose("multikey", length, pieces, prefix, values[target], rng, **kw)
