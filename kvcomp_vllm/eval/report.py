"""Scores from completions, and the files they are written to: JSON (everything), CSV and a Markdown table.

A setting's score on a task is the fraction of its samples answered exactly; `all` is the mean over
tasks (each task weighs the same). `relative` divides by full KV's score on the same task, so 1.0
means the policy lost nothing.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from .budgets import budget_label
from .runner import Setting
from .scoring import check_answer
from .tasks import Sample


def records(samples: list[Sample], settings: list[Setting], texts: dict[str, list[str]]) -> list[dict]:
    """One row per (setting, sample): where the sample came from, the completion and whether it is right."""
    rows = []
    for setting in settings:
        for sample, text in zip(samples, texts[setting.label]):
            rows.append(
                dict(policy=setting.policy, variant=setting.variant, budget=setting.budget, setting=setting.label,
                     task=sample.task,
                     length=sample.length, depth=sample.depth, index=sample.index, answer=sample.answer,
                     output=text, correct=check_answer(text, sample.answer))
            )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Score per (setting, task) and over all tasks, with the score relative to full KV."""
    by_key: dict[tuple, list[bool]] = defaultdict(list)
    meta: dict[str, tuple] = {}
    for row in rows:
        by_key[(row["setting"], row["task"])].append(row["correct"])
        meta[row["setting"]] = (row["policy"], row.get("variant", row["policy"]), row["budget"])
    scores = {key: sum(v) / len(v) for key, v in by_key.items()}
    tasks = sorted({task for _, task in scores})
    for setting in meta:
        per_task = [scores[(setting, t)] for t in tasks if (setting, t) in scores]
        scores[(setting, "all")] = sum(per_task) / len(per_task)
    summary = []
    for (setting, task), score in scores.items():
        full = scores.get(("full", task))
        policy, variant, budget = meta[setting]
        summary.append(dict(policy=policy, variant=variant, budget=budget, setting=setting, task=task, score=score,
                            relative=score / full if full else None, n=len(by_key.get((setting, task), ())) or None))
    return sorted(summary, key=lambda r: (r["task"] != "all", r["task"], r["setting"] != "full", r["setting"]))


def markdown_table(summary: list[dict]) -> str:
    """Variants (policies) as rows, budgets as columns: score over all tasks and, in brackets, relative to full."""
    overall = [r for r in summary if r["task"] == "all"]
    budgets = sorted({r["budget"] for r in overall if r["budget"] is not None},
                     key=lambda b: (isinstance(b, int), b))
    policies = list(dict.fromkeys(r["variant"] for r in overall))
    cell = {(r["variant"], r["budget"]): r for r in overall}
    lines = ["| policy | " + " | ".join(budget_label(b) for b in budgets) + " |",
             "| --- |" + " --- |" * len(budgets)]
    for policy in policies:
        if policy == "full":
            lines.append(f"| full | {cell[('full', None)]['score']:.3f} (reference, every budget) |"
                         + " |" * (len(budgets) - 1))
            continue
        row = []
        for b in budgets:
            r = cell.get((policy, b))
            rel = "" if r is None or r["relative"] is None else f" ({r['relative'] * 100:.0f}%)"
            row.append("n/a" if r is None else f"{r['score']:.3f}{rel}")
        lines.append(f"| {policy} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write(out: Path, run_info: dict, samples: list[Sample], rows: list[dict], summary: list[dict]) -> dict[str, Path]:
    """results.json (run info, summary, every completion), summary.csv and summary.md under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "summary.csv", "md": out / "summary.md"}
    suite = [{k: v for k, v in asdict(s).items() if k != "prompt_ids"} for s in samples]
    paths["json"].write_text(json.dumps(dict(run=run_info, summary=summary, suite=suite, records=rows), indent=1))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["policy", "variant", "budget", "setting", "task", "score", "relative", "n"])
        writer.writeheader()
        writer.writerows(summary)
    paths["md"].write_text(markdown_table(summary) + "\n")
    return paths
