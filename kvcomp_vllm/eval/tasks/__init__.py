"""The task families and `build_suite`, which makes a seeded list of samples over lengths and depths.

Every family is a module with `make(builder, length, rng, depth=None, **sample_fields) -> Sample`.
Samples are seeded per (seed, task, length, depth, index), so adding a length or a task leaves the
other samples unchanged.
"""

from __future__ import annotations

import random

from . import fewshot, multidoc, multikey, needle, passkey, vartrack
from .base import PromptBuilder, Sample, TooShort

TASKS = {m.__name__.rsplit(".", 1)[1]: m.make for m in (needle, passkey, multikey, vartrack, fewshot, multidoc)}
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def build_suite(
    builder: PromptBuilder,
    lengths: list[int],
    samples: int,
    tasks: list[str] | None = None,
    depths: tuple[float, ...] = DEFAULT_DEPTHS,
    seed: int = 0,
) -> list[Sample]:
    """`samples` prompts per task and length (needle: per length and depth), in a fixed order."""
    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    suite = []
    for task in tasks or list(TASKS):
        for length in lengths:
            for depth in depths if task == "needle" else (None,):
                for index in range(samples):
                    rng = random.Random(f"{seed}:{task}:{length}:{depth}:{index}")
                    suite.append(TASKS[task](builder, length, rng, depth=depth, index=index))
    return suite


__all__ = ["TASKS", "DEFAULT_DEPTHS", "PromptBuilder", "Sample", "TooShort", "build_suite"]
