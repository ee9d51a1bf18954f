"""How many prompts a grid needs for 95% intervals of a given half-width: `--target-ci` and `--samples auto`.

A cell is one setting on one task, pooled over lengths (as the tables report it); `--samples` prompts
per task and length give it `samples x lengths` prompts (needle: x depths as well). The worst case is
a share of 0.5; a policy's cells can sit anywhere between 0 and full KV's share, so the worst case is
the size that holds for every cell, and full KV's observed shares (from an earlier results.json)
show how much smaller the cells of tasks the model mostly gets right or wrong could be.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .stats import prompts_for


def observed_full(path: str | Path) -> dict[str, float]:
    """Full KV's share answered per task in a results.json."""
    records = json.loads(Path(path).read_text())["records"]
    full: dict[str, list[bool]] = {}
    for row in records:
        if row["setting"] == "full":
            full.setdefault(row["task"], []).append(bool(row["correct"]))
    if not full:
        raise ValueError(f"{path}: no full-KV records to size from")
    return {task: sum(v) / len(v) for task, v in sorted(full.items())}


def samples_needed(target: float, per_sample: dict[str, int], shares: dict[str, float] | None = None) -> int:
    """The smallest --samples whose every task cell reaches +-`target` at its share (default: the worst case)."""
    return max(math.ceil(prompts_for(target, (shares or {}).get(task, 0.5)) / k) for task, k in per_sample.items())


def sizing_lines(target: float, per_sample: dict[str, int], samples: int,
                 shares: dict[str, float] | None = None, source: str | None = None) -> list[str]:
    """The plan's sizing section: prompts per cell now, and the --samples that reach `target`."""
    worst = prompts_for(target)
    now = ", ".join(f"{task} {samples * k}" for task, k in per_sample.items())
    lines = [f"sizing: a 95% Wilson half-width <= {target:g} needs {worst} prompts per cell at p = 0.5 (the worst "
             f"case): --samples {samples_needed(target, per_sample)}; cells now: {now} (--samples {samples})"]
    if shares:
        seen = {t: p for t, p in shares.items() if t in per_sample}
        each = ", ".join(f"{t} p={p:.2f}: {prompts_for(target, p)}" for t, p in seen.items())
        lines.append(f"  at full KV's shares in {source}: {each} -> --samples "
                     f"{samples_needed(target, per_sample, seen)} (full KV's cells only; a policy's share can be "
                     "nearer 0.5)")
    return lines
