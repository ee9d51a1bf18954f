"""`full`: no compression; the baseline every other policy is measured against."""

from __future__ import annotations

from .layout import FullLayout
from .selector import KeepAll, PerLayerBudget


def full(config, num_layers: int) -> tuple[FullLayout, PerLayerBudget]:
    """Every prompt token kept in every layer."""
    layout = FullLayout(config, num_layers)
    return layout, PerLayerBudget(layout, KeepAll())
