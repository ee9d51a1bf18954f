"""Scores with 95% intervals from per-prompt records: per task, over all tasks, and as a share of full KV.

Per (setting, task) the score is the share of prompts answered exactly, with a Wilson interval. `all`
is the mean of the task scores (each task weighs the same), with a bootstrap over prompts within each
task. `relative` is the share of full KV, computed per task (setting's right answers / full KV's on
the same prompts) and then averaged over the tasks where full KV answers anything; its interval is a
paired bootstrap: every replicate draws the same prompts for the setting and for full KV. A replicate
in which full KV answers none of some task's drawn prompts has no share and is left out (the interval
is conditional on full KV answering something in every averaged task, as it does in the data).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .stats import RESAMPLES, percentile_interval, resample_indices, wilson

_PROMPT = ("length", "depth", "index", "answer")  # what names a prompt in a record, where recorded


def _columns(rows: list[dict]) -> tuple[dict, dict]:
    """{(setting, task): 0/1 array in prompt order} and {setting: (policy, variant, budget)}; every setting
    must hold the same prompts of a task in the same order (as `report.records` writes them)."""
    correct: dict[tuple, list[bool]] = defaultdict(list)
    prompts: dict[tuple, list[tuple]] = defaultdict(list)
    meta: dict[str, tuple] = {}
    for row in rows:
        key = (row["setting"], row["task"])
        correct[key].append(bool(row["correct"]))
        prompts[key].append(tuple(row.get(k) for k in _PROMPT))
        meta[row["setting"]] = (row["policy"], row.get("variant", row["policy"]), row["budget"])
    first: dict[str, list[tuple]] = {}
    for (setting, task), names in prompts.items():
        if first.setdefault(task, names) != names:
            raise ValueError(f"{setting}: its {task} prompts are not those of the other settings")
    return {k: np.array(v, dtype=float) for k, v in correct.items()}, meta


def _ratio(setting: np.ndarray, full: np.ndarray) -> np.ndarray | float:
    """Right answers over full KV's, NaN where full KV has none (sums over the last axis)."""
    num, den = setting.sum(-1), full.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def summarize(rows: list[dict], seed: int = 0, resamples: int = RESAMPLES) -> list[dict]:
    """One row per (setting, task) and per (setting, 'all'): score [lo, hi], n, relative [rel_lo, rel_hi]."""
    correct, meta = _columns(rows)
    sizes = {task: len(values) for (_, task), values in correct.items()}  # equal across settings (_columns)
    tasks = sorted(sizes)
    draws = {t: resample_indices(sizes[t], f"{seed}:{t}", resamples) for t in tasks}
    summary = []
    for setting, (policy, variant, budget) in meta.items():
        here = [t for t in tasks if (setting, t) in correct]
        base = dict(policy=policy, variant=variant, budget=budget, setting=setting)
        shares: dict[str, tuple[float, np.ndarray]] = {}  # task: (share of full KV, its replicates)
        for t in here:
            values, full = correct[(setting, t)], correct.get(("full", t))
            lo, hi = wilson(int(values.sum()), len(values))
            if full is not None and full.sum() > 0:
                shares[t] = float(_ratio(values, full)), _ratio(values[draws[t]], full[draws[t]])
            rel, rel_i = (shares[t][0], percentile_interval(shares[t][1])) if t in shares else (None, None)
            summary.append(dict(base, task=t, score=float(values.mean()), lo=lo, hi=hi, n=len(values),
                                interval="wilson", relative=rel, rel_lo=rel_i and rel_i[0],
                                rel_hi=rel_i and rel_i[1]))
        score = float(np.mean([correct[(setting, t)].mean() for t in here]))
        lo, hi = percentile_interval(np.mean([correct[(setting, t)][draws[t]].mean(1) for t in here], axis=0))
        rel = rel_i = None
        if shares:
            rel = float(np.mean([share for share, _ in shares.values()]))
            # NaN where some task's share is undefined in a replicate: that replicate is dropped.
            rel_i = percentile_interval(np.mean([reps for _, reps in shares.values()], axis=0))
        summary.append(dict(base, task="all", score=score, lo=lo, hi=hi,
                            n=sum(len(correct[(setting, t)]) for t in here), interval="bootstrap",
                            relative=rel, rel_lo=rel_i and rel_i[0], rel_hi=rel_i and rel_i[1],
                            relative_tasks=",".join(shares)))
    return sorted(summary, key=lambda r: (r["task"] != "all", r["task"], r["setting"] != "full", r["setting"]))

