"""Percentiles as microturn reports them everywhere: nearest rank on the sorted sample."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]
