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


def task_depths(task: str, depths: tuple[float, ...]) -> tuple[float | None, ...]:
    """The depths a task's prompts are built at: needle's `depths`, one random placement otherwise."""
    return tuple(depths) if task == "needle" else (None,)


def prompts_per_sample(tasks: list[str], lengths: list[int], depths: tuple[float, ...]) -> dict[str, int]:
    """Prompts per task that each unit of `samples` adds to `build_suite`'s suite."""
    return {task: len(lengths) * len(task_depths(task, depths)) for task in tasks}


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
            for depth in task_depths(task, depths):
                for index in range(samples):
                    rng = random.Random(f"{seed}:{task}:{length}:{depth}:{index}")
                    suite.append(TASKS[task](builder, length, rng, depth=depth, index=index))
    return suite


__all__ = ["TASKS", "DEFAULT_DEPTHS", "PromptBuilder", "Sample", "TooShort", "build_suite", "prompts_per_sample",
           "task_depths"]
