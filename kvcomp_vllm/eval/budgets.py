"""A KV budget as text: parsed from `--budgets` and variants' `budget=`, labelled in reports and plots."""

from __future__ import annotations


def budget_label(budget: int | float) -> str:
    """0.1 -> '10%' (ratio); 512 -> '512tok' (tokens)."""
    return f"{budget * 100:g}%" if isinstance(budget, float) else f"{budget}tok"


def parse_budget(text: str) -> int | float:
    """'0.1' or '10%' -> 0.1 (ratio); '512' -> 512 (tokens)."""
    text = text.strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100
    return float(text) if any(c in text for c in ".eE") else int(text)
