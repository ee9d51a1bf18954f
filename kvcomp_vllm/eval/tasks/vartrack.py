"""Variable tracking: a chain of assignments spread over the filler; the question asks the chain's end.

`VAR A = 52741.` early on, then `VAR B = VAR A.`, `VAR C = VAR B.` later, mixed with a second chain
that starts from another number: answering needs every link, not one retrieved line.
"""

from __future__ import annotations

import random
import string

from .base import PromptBuilder, Sample, spread

HOPS = 3


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choices(string.ascii_uppercase, k=4))
        if name not in taken:
            taken.add(name)
            return name


def make(builder: PromptBuilder, length: int, rng: random.Random, depth: float | None = None, **kw) -> Sample:
    taken: set[str] = set()
    chains = []
    for _ in range(2):
        names = [_name(rng, taken) for _ in range(HOPS + 1)]
        value = str(rng.randint(10000, 99999))
        chains.append((names, value, [f"VAR {names[0]} = {value}."]
                       + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]))
    # Interleave the two chains, each in order, so every link comes after the one it reads.
    order = [0] * (HOPS + 1) + [1] * (HOPS + 1)
    rng.shuffle(order)
    positions = [0, 0]
    lines = []
    for c in order:
        lines.append(chains[c][2][positions[c]])
        positions[c] += 1
    gaps = spread(len(lines), rng)
    pieces: list = ["Variables are assigned in the text below; keep track of their values."]
    for gap, line in zip(gaps, lines):
        pieces += [gap, line]
    pieces.append(gaps[-1])
    names, value, _ = chains[0]
    pieces.append(f"Question: what is the value of VAR {names[-1]}?")
    prefix = f"The value of VAR {names[-1]} is"
    return builder.compose("vartrack", length, pieces, prefix, value, rng, **kw)
