"""A KV budget as text: parsed from `--budgets` and variants' `budget=`, labelled in reports and plots.

`--budgets` also takes named sets: `ratios` (shares of the prompt) and `pyramidkv`, the fixed token
budgets of PyramidKV's LongBench table (64 to 2048 tokens per layer on average).
"""

from __future__ import annotations

BUDGET_SETS: dict[str, tuple[int | float, ...]] = {
    "ratios": (0.025, 0.05, 0.1, 0.2, 0.5),
    "pyramidkv": (64, 128, 256, 512, 2048),
}


def budget_label(budget: int | float) -> str:
    """0.1 -> '10%' (ratio); 512 -> '512tok' (tokens)."""
    return f"{budget * 100:g}%" if isinstance(budget, float) else f"{budget}tok"


def parse_budget(text: str) -> int | float:
    """'0.1' or '10%' -> 0.1 (ratio); '512' -> 512 (tokens)."""
    text = text.strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_budgets(text: str) -> list[int | float]:
    """A comma list of budgets and set names ('ratios,pyramidkv,1024'), in order, each budget once."""
    budgets: list[int | float] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item in BUDGET_SETS:
            budgets += BUDGET_SETS[item]
            continue
        try:
            budgets.append(parse_budget(item))
        except ValueError:
            raise ValueError(f"budget {item!r}: not a ratio, a token count or one of the sets "
                             f"{', '.join(BUDGET_SETS)}") from None
    return list(dict.fromkeys(budgets))
