"""95% intervals for eval scores: Wilson for a share of 0/1 answers, a seeded percentile bootstrap otherwise.

Wilson's score interval stays inside [0, 1] and keeps its coverage at 0 of n and n of n, where the
normal (Wald) interval collapses to a point; a cell of 4 prompts all right is [0.51, 1.00], not 1.00.
Means over tasks and ratios to full KV are not binomial, so they get a bootstrap over prompts
(`resample_indices`: the same seeded draws for every setting, which pairs each setting with full KV).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

LEVEL = 0.95
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)  # 1.959963984540054
RESAMPLES = 2000


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of `k` successes in `n` trials."""
    if n <= 0:
        raise ValueError(f"wilson: n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k must lie in [0, n={n}], got {k}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = wilson_half_width(p, n, z)
    # At 0 of n and n of n the bounds are exactly 0 and 1; the floating-point difference need not be.
    return 0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half)


def wilson_half_width(p: float, n: int, z: float = Z) -> float:
    """Half the width of the Wilson interval at observed share `p` of `n` trials."""
    return z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def prompts_for(half_width: float, p: float = 0.5, z: float = Z) -> int:
    """The fewest prompts whose Wilson interval at share `p` is at most +-`half_width` (p=0.5: the worst case)."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"half width must lie in (0, 0.5), got {half_width}")
    n = 1
    while wilson_half_width(p, n, z) > half_width:  # decreasing in n; at most ~z^2/(4 h^2) steps
        n += 1
    return n


def resample_indices(n: int, seed: object, resamples: int = RESAMPLES) -> np.ndarray:
    """`resamples` x `n` draws with replacement from range(n), the same for the same (n, seed)."""
    rng = np.random.default_rng(np.frombuffer(str(seed).encode(), dtype=np.uint8).astype(np.uint32))
    return rng.integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """The central 95% of bootstrap replicates (NaN replicates, where a ratio is undefined, left out)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    lo, hi = np.percentile(values, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(lo), float(hi)
