"""Long token sequences from a local text corpus (`eval.corpus`), the same for the same seed."""

from __future__ import annotations

import random

from ..eval.corpus import load_corpus


def corpus_tokens(tokenizer, source: str | None, seed: int, min_tokens: int) -> tuple[str, list[int]]:
    """(corpus name, token ids) of the corpus's paragraphs in a seeded order, repeated to `min_tokens`."""
    name, paragraphs = load_corpus(source, seed)
    order = list(paragraphs)
    random.Random(seed).shuffle(order)
    ids = tokenizer(" ".join(order), add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"corpus {name}: no text")
    return name, (ids * -(-min_tokens // len(ids)))


def window(ids: list[int], length: int, index: int, seed: int) -> list[int]:
    """Sample `index`'s `length` tokens: a seeded offset into `ids` (one per index, so runs can resume)."""
    rng = random.Random(f"{seed}:{index}")
    start = rng.randrange(max(len(ids) - length, 0) + 1)
    return ids[start : start + length]
