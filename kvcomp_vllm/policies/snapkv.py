"""`snapkv` (SnapKV): keep the prefix tokens the observation window attends to most, per KV head."""

from __future__ import annotations

from .layout import BudgetLayout
from .selector import Selector, snapkv_selector


def snapkv(config, num_layers: int) -> tuple[BudgetLayout, Selector]:
    """One budget for all layers; top-(budget - window) pooled observation scores per KV head, plus the window."""
    layout = BudgetLayout(config, num_layers)
    return layout, snapkv_selector(layout)
