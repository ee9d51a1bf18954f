"""Filler text for long prompts: paragraphs of natural English, never one sentence repeated.

The default, `generated`, is varied English from a seeded grammar (`generated_paragraphs`): the same
prompts on every machine, as in the committed H100 grids. `devils-dictionary` is Ambrose Bierce's
*The Devil's Dictionary* (1911, public domain), which the Debian package `dict-devil` ships as
`/usr/share/dictd/devil.dict.dz` (dictzip is gzip-readable), as in the committed CPU results.
Any other text file can be given by path.
"""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

DEVIL_PATHS = (Path("/usr/share/dictd/devil.dict.dz"),)
_MIN_PARAGRAPH = 40  # characters; shorter pieces are headers and stray lines


def read_paragraphs(path: str | Path) -> list[str]:
    """Paragraphs (blank-line separated, whitespace collapsed) of a .txt, .gz or dictzip file."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace").replace("{", "").replace("}", "")
    paragraphs = (re.sub(r"\s+", " ", block).strip() for block in re.split(r"\n\s*\n", text))
    return [p for p in paragraphs if len(p) >= _MIN_PARAGRAPH and not p.startswith(("00-database", "Project"))]


_SUBJECTS = [
    "the old miller", "a travelling merchant", "the village teacher", "my grandmother", "the harbour master",
    "a young painter", "the river pilot", "our neighbour", "the night watchman", "a quiet scholar",
    "the baker's daughter", "the mayor", "a stranger from the coast", "the shepherd", "the lighthouse keeper",
]
_VERBS = [
    "walked along", "wrote about", "remembered", "painted", "crossed", "described", "repaired", "visited",
    "argued about", "dreamed of", "measured", "sold", "mapped", "sang about", "photographed",
]
_OBJECTS = [
    "the narrow bridge", "a field of barley", "the stone chapel", "the winter market", "an abandoned mill",
    "the northern road", "a flock of geese", "the copper kettle", "the forest path", "the clock tower",
    "a broken fence", "the orchard", "the fishing boats", "a letter from abroad", "the garden wall",
]
_WHEN = [
    "early in the morning", "after the first snow", "during the long summer", "before the harvest",
    "on a grey afternoon", "late one evening", "in the spring", "when the tide was low", "after the storm",
]
_ASIDES = [
    "Nobody could say why.", "It had rained for days.", "The wind smelled of salt and smoke.",
    "Some people laughed at the idea.", "Everyone agreed it was a fine day.", "The dogs barked in the distance.",
    "Later this became a favourite story.", "It was not the first time.", "The bells rang twice.",
]


def generated_paragraphs(count: int, seed: int) -> list[str]:
    """`count` paragraphs of varied English sentences from a seeded grammar (no corpus needed)."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(3, 6)):
            if rng.random() < 0.2:
                sentences.append(rng.choice(_ASIDES))
                continue
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_WHEN)}"
            sentences.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!"]))
        paragraphs.append(" ".join(sentences))
    return paragraphs


CORPORA = ("generated", "devils-dictionary")


def load_corpus(source: str | Path | None = "generated", seed: int = 0) -> tuple[str, list[str]]:
    """(source name, paragraphs) of `generated` (also None), `devils-dictionary` or a text file's path."""
    if source is None or str(source) == "generated":
        return "generated", generated_paragraphs(2000, seed)
    if str(source) == "devils-dictionary":
        for candidate in DEVIL_PATHS:
            if candidate.exists():
                return "devils-dictionary (Debian dict-devil)", read_paragraphs(candidate)
        raise ValueError(f"--corpus devils-dictionary: {DEVIL_PATHS[0]} is not there; apt-get install dict-devil")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--corpus {source}: not {' or '.join(CORPORA)}, and no such file")
    return path.name, read_paragraphs(path)
