"""Records from completions, and the files they are written to: JSON (everything), CSV and Markdown tables.

Scores and their intervals come from `scores.summarize` (per task, Wilson; over tasks and as a share
of full KV, bootstrap over prompts); every table cell carries its 95% interval and states its n.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from .budgets import budget_label
from .runner import Setting
from .scoring import check_answer
from .stats import RESAMPLES
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


def _interval(lo: float | None, hi: float | None, percent: bool = False) -> str:
    if lo is None or hi is None:
        return ""
    return f" [{lo * 100:.0f}, {hi * 100:.0f}]" if percent else f" [{lo:.2f}, {hi:.2f}]"


def cell_text(row: dict | None) -> str:
    """'0.236 [0.17, 0.31] · 57% [41, 74]': score and share of full KV, each with its 95% interval."""
    if row is None:
        return "n/a"
    text = f"{row['score']:.3f}{_interval(row['lo'], row['hi'])}"
    if row["relative"] is not None and row["policy"] != "full":
        text += f" · {row['relative'] * 100:.0f}%{_interval(row['rel_lo'], row['rel_hi'], True)}"
    return text


def cell_sizes(summary: list[dict]) -> str:
    """'n per cell: fewshot 12, needle 60 (72 prompts per setting)', from full KV's rows."""
    rows = [r for r in summary if r["setting"] == "full"] or summary
    per_task = {r["task"]: r["n"] for r in rows if r["task"] != "all"}
    total = next((r["n"] for r in rows if r["task"] == "all"), sum(per_task.values()))
    return f"n per cell: {', '.join(f'{t} {n}' for t, n in per_task.items())} ({total} prompts per setting)"


def method_note(summary: list[dict]) -> str:
    """What the table's numbers and intervals are, and where the bootstrap's intervals understate."""
    full = next((r for r in summary if r["setting"] == "full" and r["task"] == "all"), None)
    tasks = full["relative_tasks"].replace(",", ", ") if full and full.get("relative_tasks") else "none"
    return (f"Score: mean over tasks of the share answered; share of full KV (after ·): per-task ratio to full KV "
            f"on the same prompts, averaged over the tasks full KV answers ({tasks}). 95% intervals: bootstrap "
            f"over prompts within tasks ({RESAMPLES} resamples, paired with full KV for the share); per task, "
            "Wilson. A task answered on no prompt, or exactly as full KV on every prompt, does not vary under "
            "resampling, so a bootstrap interval can be a point: its per-task Wilson interval shows what n allows.")


def markdown_table(summary: list[dict]) -> str:
    """Variants (policies) as rows, budgets as columns: mean score over tasks and share of full, with intervals."""
    overall = [r for r in summary if r["task"] == "all"]
    budgets = sorted({r["budget"] for r in overall if r["budget"] is not None},
                     key=lambda b: (isinstance(b, int), b))
    policies = list(dict.fromkeys(r["variant"] for r in overall))
    cell = {(r["variant"], r["budget"]): r for r in overall}
    lines = ["| policy | " + " | ".join(budget_label(b) for b in budgets) + " |",
             "| --- |" + " --- |" * len(budgets)]
    for policy in policies:
        if policy == "full":
            lines.append(f"| full | {cell_text(cell[('full', None)])} (reference, every budget) |"
                         + " |" * (len(budgets) - 1))
            continue
        lines.append(f"| {policy} | " + " | ".join(cell_text(cell.get((policy, b))) for b in budgets) + " |")
    return "\n".join(lines)


def task_table(summary: list[dict]) -> str:
    """Settings as rows, tasks as columns: right answers of n with the Wilson interval, and the share of full
    KV with its paired bootstrap interval."""
    rows = [r for r in summary if r["task"] != "all"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cell = {(r["setting"], r["task"]): r for r in rows}
    lines = ["| setting | " + " | ".join(tasks) + " |", "| --- |" + " --- |" * len(tasks)]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        texts = []
        for task in tasks:
            r = cell.get((setting, task))
            if r is None:
                texts.append("n/a")
                continue
            rel = "" if r["relative"] is None or setting == "full" else (
                f" · {r['relative'] * 100:.0f}%{_interval(r['rel_lo'], r['rel_hi'], True)}")
            texts.append(f"{round(r['score'] * r['n'])}/{r['n']}{_interval(r['lo'], r['hi'])}{rel}")
        lines.append(f"| {setting} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def summary_markdown(summary: list[dict]) -> str:
    """summary.md: the budget table, how to read it, its n, and the per-task table."""
    return "\n\n".join([markdown_table(summary), method_note(summary), cell_sizes(summary),
                         "Per task (right of n [Wilson 95%] · share of full KV [paired bootstrap 95%]):", task_table(summary)]) + "\n"


CSV_FIELDS = ["policy", "variant", "budget", "setting", "task", "score", "lo", "hi", "n", "interval",
              "relative", "rel_lo", "rel_hi", "relative_tasks"]


def write(out: Path, run_info: dict, samples: list[Sample], rows: list[dict], summary: list[dict]) -> dict[str, Path]:
    """results.json (run info, summary, every completion), summary.csv and summary.md under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "summary.csv", "md": out / "summary.md"}
    suite = [{k: v for k, v in asdict(s).items() if k != "prompt_ids"} for s in samples]
    paths["json"].write_text(json.dumps(dict(run=run_info, summary=summary, suite=suite, records=rows), indent=1))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(summary)
    paths["md"].write_text(summary_markdown(summary))
    return paths
