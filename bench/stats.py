"""Small statistics for benchmark figures: percentiles and a summary of a sample."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) of `values`, nearest-rank; NaN for an empty sample.

    Nearest-rank never invents a value that was not measured: the p99 of 200 turns is
    the second slowest one.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def known(value: float | None) -> float:
    """`value`, or NaN when the sample it came from was empty."""
    return math.nan if value is None else value


class Distribution(BaseModel):
    """A sample summarised: size, smallest, median, p99, largest and mean."""

    n: int = Field(description="Sample size.")
    min: float | None = Field(description="Smallest value (None for an empty sample).")
    p50: float | None = Field(description="Median.")
    p99: float | None = Field(description="99th percentile (nearest rank).")
    max: float | None = Field(description="Largest value.")
    mean: float | None = Field(description="Arithmetic mean.")

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        """Summarise `values` (None everywhere for an empty sample)."""
        if not values:
            return cls(n=0, min=None, p50=None, p99=None, max=None, mean=None)
        return cls(
            n=len(values),
            min=min(values),
            p50=percentile(values, 0.5),
            p99=percentile(values, 0.99),
            max=max(values),
            mean=sum(values) / len(values),
        )
