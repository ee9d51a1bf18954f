"""Multi-document QA: numbered documents about invented societies; the question asks one founding year."""

from __future__ import annotations

import random

from .base import Gap, PromptBuilder, Sample
from .words import ADJECTIVES, CITIES, NAMES, NOUNS


def make(builder: PromptBuilder, length: int, rng: random.Random, depth: float | None = None, **kw) -> Sample:
    count = min(10, max(2, length // 256))
    societies = rng.sample([f"{a.capitalize()} {n.capitalize()} Society" for a in ADJECTIVES for n in NOUNS], count)
    years = rng.sample(range(1700, 2000), count)
    pieces: list = ["Answer the question using the documents below."]
    for i, (society, year) in enumerate(zip(societies, years), 1):
        founder, city = rng.choice(NAMES), rng.choice(CITIES)
        fact = f"The {society} was founded in {year} by {founder} of {city}."
        where = rng.random()
        pieces += [f"Document {i}: the {society}", Gap(where), fact, Gap(1.0 - where)]
    target = rng.randrange(count)
    pieces.append(f"Question: in which year was the {societies[target]} founded?")
    prefix = f"The {societies[target]} was founded in"
    return builder.compose("multidoc", length, pieces, prefix, str(years[target]), rng, **kw)
